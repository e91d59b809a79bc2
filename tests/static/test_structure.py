"""The package's layers: stages never import one another, and the models never import a stage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ami_factory"
STAGES = {"preflight", "generalize", "workflow", "distribution", "triggers", "retention"}
MODELS = {"request", "contracts", "errors", "pricing", "settings"}


def package_imports(module: str) -> set[str]:
    """The ami_factory modules ``module`` imports (relative or absolute)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        ours = (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.level == 1 or node.module.startswith("ami_factory"))
        )
        if ours and isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.removeprefix("ami_factory").lstrip(".").split(".")[0])
    return found - {""}


def test_no_stage_imports_another() -> None:
    for stage in sorted(STAGES):
        others = package_imports(stage) & (STAGES - {stage})
        assert not others, f"{stage} imports the stage(s) {sorted(others)}: move what they share to ami_factory.steps"


def test_the_models_import_no_stage_and_no_adapter() -> None:
    for module in sorted(MODELS):
        assert not package_imports(module) & (STAGES | {"aws", "clients", "steps"}), module


def test_the_request_model_stands_alone() -> None:
    # What users send is described by itself (it generates the JSON Schema); step contracts build on it.
    assert package_imports("request") == set()
    assert "request" in package_imports("contracts")


def test_nothing_is_looked_up_by_tag_but_the_instances_a_schedule_selects() -> None:
    """Tags are labels: the only tag filter in the package selects instances for a scheduled run (which
    then passes every check a request does); nothing to terminate, deregister or command is found by tag."""
    uses = {
        (path.name, line.strip())
        for path in PACKAGE.glob("*.py")
        for line in path.read_text().splitlines()
        if '"tag:' in line or 'f"tag:' in line or '"tag-key"' in line
    }
    assert uses == {
        ("aws.py", 'return self._instances([{"Name": "tag-key", "Values": [key]}], ["running", "stopped"])')
    }


def test_no_test_or_tool_turns_iam_enforcement_off() -> None:
    """IAM is evaluated in every emulator run; the flag that only records refusals is for a person
    exploring, never for a test, the demo, the bench or the server."""
    root = PACKAGE.parents[1]
    flag = "enforce_iam" + "="
    users = [
        str(path.relative_to(root))
        for folder in ("tests", "tools")
        for path in (root / folder).rglob("*.py")
        if flag in path.read_text()
    ]
    assert users == ["tools/ami_factory_local/emulator.py"]
