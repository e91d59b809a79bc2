"""The lock: the Lambda layer deploys exactly what the tests ran with."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;]+)(\s*;\s*(?P<marker>.+))?$")


def requirements(path: Path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in requirements(path):
        match = PIN.match(line)
        assert match, f"{path.name}: {line!r} is not pinned with == (run `make lock`)"
        found.setdefault(canonical(match["name"]), set()).add(match["version"])
    return found


def test_every_package_of_the_layer_is_pinned_to_the_version_the_tests_ran_with() -> None:
    layer, dev = pins(ROOT / "src" / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert {"aws-lambda-powertools", "pydantic", "pydantic-core", "boto3", "botocore"} <= set(layer)
    for name, versions in layer.items():
        assert versions <= dev.get(name, set()), f"the layer pins {name} {versions}, the tests ran with {dev.get(name)}"


def test_development_tools_stay_out_of_the_layer() -> None:
    layer = pins(ROOT / "src" / "requirements.txt")
    assert not {"aws-sam-cli", "awscli", "moto", "pytest"} & set(layer)


def test_moto_is_pinned_exactly_in_the_project() -> None:
    # The emulator patches moto's internals: a new moto is a deliberate change, not a lock refresh.
    assert '"moto[server]==5.2.5"' in (ROOT / "pyproject.toml").read_text()
    assert pins(ROOT / "requirements-dev.txt")["moto"] == {"5.2.5"}
