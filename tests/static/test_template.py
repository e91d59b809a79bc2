"""The SAM template and the ASL it deploys: validated, built, and linted as a graph."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ami_factory import models
from ami_factory.errors import RETRYABLE_ERRORS, all_error_names
from ami_factory_local.emulator import render_definition
from ami_factory_local.template import Resolver, functions, load_template, resources_of_type

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.TooManyRequestsException",
}
SAM = shutil.which("sam") or str(Path(sys.executable).parent / "sam")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def machine(template: dict[str, Any]) -> dict[str, Any]:
    (resource,) = resources_of_type(template, "AWS::Serverless::StateMachine").values()
    return resource


@pytest.fixture(scope="module")
def asl(machine: dict[str, Any]) -> dict[str, Any]:
    """The ASL as deployed: every ${...} substituted from DefinitionSubstitutions."""
    attributes = {(name, "Arn"): f"arn:aws:lambda:us-east-1:123456789012:function:{name}" for name in ALL_FUNCTIONS}
    resolver = Resolver(parameters={}, pseudo={}, attributes=attributes)
    text = render_definition(ROOT, machine["Properties"], resolver)
    leftover = re.findall(r"\$\{[^}]+\}", text)
    assert not leftover, f"unsubstituted placeholders in the ASL: {leftover}"
    return json.loads(text)


ALL_FUNCTIONS = [
    "ResolveRequestFunction", "PrepareInstanceFunction", "CheckInstanceFunction", "CreateImageFunction",
    "CheckImageFunction", "RestoreInstanceFunction", "CopyImageFunction", "ShareImageFunction",
    "PublishParameterFunction", "FinalizeFunction", "HandleFailureFunction", "RunCleanupFunction",
    "CheckCommandFunction", "CreateSeedImageFunction", "LaunchCloneFunction", "CheckCloneFunction",
    "GeneralizeFunction", "CheckGeneralizeFunction", "ProtectImageFunction", "StartLaunchCheckFunction",
    "CheckLaunchFunction", "EndLaunchCheckFunction",
]


def sam_env() -> dict[str, str]:
    return {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0", "PYENV_VERSION": "3.13.0"}


def test_sam_validate_lint_is_clean() -> None:
    result = subprocess.run([SAM, "validate", "--lint", "-t", "template.yaml"], cwd=ROOT, env=sam_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_build_succeeds(tmp_path: Path) -> None:
    result = subprocess.run([SAM, "build", "--build-dir", str(tmp_path / "build"), "-t", "template.yaml"],
                            cwd=ROOT, env=sam_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    layer = tmp_path / "build" / "SharedLayer" / "python"
    assert (layer / "ami_factory" / "workflow.py").exists(), "the layer must carry the domain package"
    assert (layer / "pydantic").is_dir(), "the layer must carry its dependencies"


def test_every_function_is_substituted_into_the_asl(template: dict[str, Any], machine: dict[str, Any]) -> None:
    # The start function starts the state machine; every other function is one of its steps.
    assert sorted(functions(template)) == sorted([*ALL_FUNCTIONS, "StartRunFunction", "ApplyRetentionFunction"])
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert sorted(substitutions) == sorted(f"{name}Arn" for name in ALL_FUNCTIONS)


def _states(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state, nested Map/Parallel states included, by name (names are unique here)."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in asl["States"].items():
        assert name not in found, f"duplicate state name {name}"
        found[name] = state
        for nested in [state.get("ItemProcessor") or state.get("Iterator")] + state.get("Branches", []):
            if nested:
                found.update(_states(nested))
    return found


def _targets(state: dict[str, Any]) -> list[str]:
    targets = [state[key] for key in ("Next", "Default") if key in state]
    targets += [choice["Next"] for choice in state.get("Choices", [])]
    targets += [catch["Next"] for catch in state.get("Catch", [])]
    return targets


def _check_graph(graph: dict[str, Any]) -> None:
    states = graph["States"]
    assert graph["StartAt"] in states
    for name, state in states.items():
        for target in _targets(state):
            assert target in states, f"{name} goes to {target}, which is not a state of its scope"
        terminal = state.get("End") or state["Type"] in ("Succeed", "Fail", "Choice")
        assert terminal or "Next" in state, f"{name} has neither Next nor End"
    reachable, frontier = set(), [graph["StartAt"]]
    while frontier:
        name = frontier.pop()
        if name not in reachable:
            reachable.add(name)
            frontier.extend(_targets(states[name]))
    assert reachable == set(states), f"unreachable states: {sorted(set(states) - reachable)}"
    for state in states.values():
        if state["Type"] == "Map":
            _check_graph(state["ItemProcessor"])


def test_asl_graph_every_next_exists_and_every_state_is_reachable(asl: dict[str, Any]) -> None:
    _check_graph(asl)


def test_every_lambda_task_has_timeout_retry_and_catch(asl: dict[str, Any]) -> None:
    tasks = {name: state for name, state in _states(asl).items() if state["Type"] == "Task"}
    assert len(tasks) >= 11
    for name, task in tasks.items():
        assert task["Resource"] == "arn:aws:states:::lambda:invoke", name
        assert "Payload.$" in task["Parameters"] or "Payload" in task["Parameters"], name
        assert 0 < task.get("TimeoutSeconds", 0) <= 900, f"{name} needs TimeoutSeconds"
        assert task.get("Retry"), f"{name} needs Retry"
        assert task.get("Catch"), f"{name} needs Catch"
        for retrier in task["Retry"]:
            assert "States.ALL" not in retrier["ErrorEquals"], f"{name} retries States.ALL"
        retried = {error for retrier in task["Retry"] for error in retrier["ErrorEquals"]}
        transient = {error.__name__ for error in RETRYABLE_ERRORS}
        assert transient <= retried, f"{name} does not retry {sorted(transient - retried)}"
        assert retried - transient <= LAMBDA_SERVICE_ERRORS, f"{name} retries {sorted(retried - transient - LAMBDA_SERVICE_ERRORS)}"


def test_every_error_name_is_ours_or_the_services(asl: dict[str, Any]) -> None:
    ours = all_error_names()
    for name, state in _states(asl).items():
        for rule in state.get("Retry", []) + state.get("Catch", []):
            for error in rule["ErrorEquals"]:
                assert error in ours or error.startswith(("States.", "Lambda.")), f"{name} matches unknown error {error}"
        if state["Type"] == "Fail" and "Error" in state:
            assert state["Error"] in ours or state["Error"].startswith("States."), name


def test_result_selectors_name_exactly_the_fields_of_the_step_outputs(asl: dict[str, Any]) -> None:
    """The ASL unwraps each Lambda's Payload field by field; a model change must show up here."""
    expected = {
        "ImageRef": set(models.ImageRef.model_fields),
        "InstanceRef": set(models.InstanceRef.model_fields),
        "ShareImageOutput": set(models.ShareImageOutput.model_fields),
        "PublishParameterOutput": set(models.PublishParameterOutput.model_fields),
        "CommandRef": set(models.CommandRef.model_fields),
        "LaunchedInstance": set(models.LaunchedInstance.model_fields),
        "GeneralizeRef": set(models.GeneralizeRef.model_fields),
        "ProtectImageOutput": set(models.ProtectImageOutput.model_fields),
    }
    checked = 0
    for name, state in _states(asl).items():
        selector = state.get("ResultSelector")
        if not selector:
            continue
        fields = {key.removesuffix(".$") for key in selector}
        assert fields in expected.values(), f"{name}'s ResultSelector {sorted(fields)} matches no step output model"
        assert all(value == f"$.Payload.{key.removesuffix('.$')}" for key, value in selector.items()), name
        checked += 1
    assert checked >= 8


def test_waits_are_bounded_loops(asl: dict[str, Any]) -> None:
    """Every Wait leads to a check whose input carries max_polls: no unbounded loop."""
    states = _states(asl)
    waits = {name: state for name, state in states.items() if state["Type"] == "Wait"}
    assert len(waits) == 8
    for name, wait in waits.items():
        check = states[wait["Next"]]
        assert check["Type"] == "Task" and "max_polls.$" in check["Parameters"]["Payload"], name


def test_iam_never_grants_ec2_wildcard(template: dict[str, Any]) -> None:
    for name, properties in functions(template).items():
        for policy in properties["Policies"]:
            for statement in policy.get("Statement", []):
                for action in statement["Action"]:
                    assert not action.endswith(":*"), f"{name} grants {action}"
                mutating = [a for a in statement["Action"] if not a.split(":")[1].startswith(("Describe", "Get", "List"))]
                # The one exception: KMS key use for encrypted images, which only EC2 may exercise.
                through_ec2 = "kms:ViaService" in json.dumps(statement.get("Condition", {}))
                if mutating and statement["Resource"] == "*" and not (through_ec2 and all(a.startswith("kms:") for a in mutating)):
                    pytest.fail(f"{name} grants {mutating} on every resource")


def test_public_sharing_is_off_by_default(template: dict[str, Any]) -> None:
    assert template["Parameters"]["AllowPublicSharing"]["Default"] == "false"
    for name in ("AllowedShareAccounts", "AllowedShareOrganizations", "AllowedShareOUs"):
        assert template["Parameters"][name]["Default"] == "", f"{name} must allow nobody by default"


def test_triggers_are_wired_to_the_start_function(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    rule = resources["TagTriggerRule"]["Properties"]
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["StartRunFunction", "Arn"]}
    assert rule["Targets"][0]["RetryPolicy"]["MaximumRetryAttempts"] > 0
    permission = resources["TagTriggerPermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["TagTriggerRule", "Arn"]}
    schedule = resources["RebuildSchedule"]
    assert schedule["Condition"] == "HasSchedule" and resources["SchedulerRole"]["Condition"] == "HasSchedule"
    assert "<aws.scheduler.scheduled-time>" in schedule["Properties"]["Target"]["Input"]
    start = functions(template)["StartRunFunction"]
    assert start["Environment"]["Variables"]["STATE_MACHINE_ARN"] == {"Ref": "ImagingStateMachine"}
