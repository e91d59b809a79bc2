"""The emulator proves the template's IAM: take one grant away and the path that needs it is refused.

Each case copies the project with a template that lacks one action for one role (or one resource of
it), runs the path that needs it, and shows the call refused as AWS refuses it, naming the role and
the action, and the run failing. The rest of the suite passes with every call evaluated, so each grant
these cases remove is one a real path uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from ami_factory_local import Emulator
from ami_factory_local.authorization import Refusal, acting_as
from ami_factory_local.emulator import IAM_USAGE_VARIABLE
from ami_factory_local.template import load_template
from tests.helpers import ROOT, TEST_PARAMETERS, launch_tagged, sample, tag_event, wait_all

Scenario = Callable[[Emulator], dict[str, Any]]


def _statements(template: dict[str, Any], owner: str) -> Iterator[dict[str, Any]]:
    """The policy statements of a function, role or managed policy (an ``!If`` statement's own)."""
    properties = template["Resources"][owner]["Properties"]
    documents: list[Any] = []
    if "PolicyDocument" in properties:
        documents.append(properties["PolicyDocument"])
    for policy in properties.get("Policies", []):
        if isinstance(policy, dict) and "Ref" in policy:
            documents.append(template["Resources"][policy["Ref"]]["Properties"]["PolicyDocument"])
        else:
            documents.append(policy.get("PolicyDocument", policy))
    for document in documents:
        for statement in document["Statement"]:
            branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
            yield from (branch for branch in branches if "Action" in branch)


def project_without(tmp_path: Path, owner: str, action: str, resource: str | None = None) -> Path:
    """A copy of the project whose template lacks ``action`` in ``owner``'s policies (only for the
    resource whose text contains ``resource``, when given)."""
    template = load_template(ROOT / "template.yaml")
    removed = 0
    for statement in _statements(template, owner):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action not in actions:
            continue
        if resource is None:
            statement["Action"] = [a for a in actions if a != action] or ["none:NoAction"]
            removed += 1
        else:
            kept = [r for r in statement["Resource"] if resource not in json.dumps(r)]
            removed += len(statement["Resource"]) - len(kept)
            statement["Resource"] = kept
    assert removed, f"{owner} grants no {action} to remove: the case no longer matches template.yaml"
    return project_with(tmp_path, template)


def project_with(tmp_path: Path, template: dict[str, Any]) -> Path:
    """The project at ``tmp_path``: its code as it is, ``template`` as its template.yaml."""
    for name in ("functions", "src", "statemachine", "events"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    return tmp_path


@pytest.fixture(autouse=True)
def _not_in_the_iam_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template with a grant taken away is not the stack: what its roles used is not reported."""
    monkeypatch.delenv(IAM_USAGE_VARIABLE, raising=False)


def refusal(emu: Emulator, role: str, action: str) -> Refusal:
    found = [r for r in emu.authorizer.refusals if r.role == role and r.decision.action == action]
    assert found, f"no refusal of {action} for {role}: {[(r.role, r.decision.action) for r in emu.authorizer.refusals]}"
    return found[0]


# --- the paths -----------------------------------------------------------------------------------


def basic(emu: Emulator) -> dict[str, Any]:
    return sample("request-basic.json", instance_id=emu.launch_instance(name="web"))


def distribution(emu: Emulator) -> dict[str, Any]:
    return sample("request-distribution.json", instance_id=emu.launch_instance(name="web"), regions=["eu-west-1"])


def cleanup(emu: Emulator) -> dict[str, Any]:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    return sample("request-cleanup.json", instance_id=instance_id)


def generalize(emu: Emulator) -> dict[str, Any]:
    instance_id = emu.launch_instance(name="golden")
    emu.world.ssm_manage(instance_id, "Linux")
    return {"instance_id": instance_id, "mode": "generalize", "regions": []}


def slow_stop(emu: Emulator) -> dict[str, Any]:
    emu.world.instances_take_to_stop(150)
    return basic(emu)


def stop_answer_lost(emu: Emulator) -> dict[str, Any]:
    """The retried PrepareInstance finds the instance stopping: its wait did not set it in motion, so it looks."""
    emu.world.instances_take_to_stop(150)
    emu.world.lose_responses("StopInstances", times=1)
    return basic(emu)


def image_answer_lost(emu: Emulator) -> dict[str, Any]:
    """The retried CreateImage finds the image by name: its wait looks first, and finds it available."""
    emu.world.lose_responses("CreateImage", times=1)
    return basic(emu)


def failing(emu: Emulator) -> dict[str, Any]:
    emu.world.images_fail()
    return basic(emu)


RUNS: list[tuple[str, str, Scenario]] = [
    ("ResolveRequestFunction", "ec2:DescribeInstances", basic),
    ("PrepareInstanceFunction", "ec2:StopInstances", basic),
    # A wait on the instance records its token and looks once (the event, or the look, ends it).
    ("WatchInstanceFunction", "ec2:DescribeInstances", stop_answer_lost),
    # CreateImage with TagSpecifications is also a CreateTags (ec2:CreateAction = CreateImage).
    ("CreateImageFunction", "ec2:CreateTags", basic),
    # An image wait records its token and, unless its image was made a moment ago, looks, and (an image
    # settled already) ends its own task.
    ("WatchImageFunction", "ec2:DescribeImages", image_answer_lost),
    ("WatchImageFunction", "dynamodb:UpdateItem", basic),
    ("WatchImageFunction", "states:SendTaskSuccess", image_answer_lost),
    ("RestoreInstanceFunction", "ec2:StartInstances", basic),
    # A copy's wait for its slot queues its token, takes a free slot and ends its own task.
    ("AwaitCopySlotFunction", "dynamodb:UpdateItem", basic),
    ("AwaitCopySlotFunction", "states:SendTaskSuccess", basic),
    ("CopyImageFunction", "ec2:CopyImage", basic),
    # The copy slot: held by CopyImage (a conditional write that finds it held), given back when the copy settles.
    ("CopyImageFunction", "dynamodb:UpdateItem", basic),
    ("ShareImageFunction", "ec2:ModifyImageAttribute", basic),
    ("PublishParameterFunction", "ssm:PutParameter", basic),
    ("ProtectImageFunction", "ec2:EnableImageDeregistrationProtection", distribution),
    ("StartLaunchCheckFunction", "ec2:RunInstances", distribution),
    ("CheckLaunchFunction", "ec2:DescribeInstanceStatus", distribution),
    ("RunCleanupFunction", "ssm:SendCommand", cleanup),
    ("WatchInstanceFunction", "ssm:GetCommandInvocation", cleanup),
    ("CreateSeedImageFunction", "ec2:CreateImage", generalize),
    ("LaunchCloneFunction", "iam:PassRole", generalize),
    ("CheckCloneFunction", "ssm:DescribeInstanceInformation", generalize),
    ("GeneralizeFunction", "ssm:SendCommand", generalize),
    # Generalizing on a clone: the run made it (its ledger, queried), then one look at both.
    ("WatchInstanceFunction", "dynamodb:Query", generalize),
]


@pytest.mark.slow
@pytest.mark.parametrize(("function", "action", "scenario"), RUNS, ids=[f"{f}-{a}" for f, a, _ in RUNS])
def test_a_run_fails_when_a_step_loses_a_grant_it_uses(
    tmp_path: Path, function: str, action: str, scenario: Scenario
) -> None:
    with Emulator(parameters=TEST_PARAMETERS, project_root=project_without(tmp_path, function, action)) as emu:
        result = emu.run(scenario(emu), name="lost-grant")
        refused = refusal(emu, f"{function}Role", action)
        assert f"not authorized to perform: {action}" in refused.message
        assert result.status == "FAILED" or (result.output or {}).get("status") in ("PARTIAL", "FAILED"), result.cause
        assert refused.message in failures(result), "the run's history says which call was refused, and whose"


def failures(result: Any) -> str:
    """Every task failure's cause in the run's history (the Lambda error bodies), as text."""
    failed = [event for event in result.history if event["type"] in ("TaskFailed", "LambdaFunctionFailed")]
    return json.dumps(failed, default=str)


@pytest.mark.slow
def test_a_launch_check_that_cannot_terminate_is_ended_by_the_run_ending(tmp_path: Path) -> None:
    """EndLaunchCheck losing TerminateInstances is refused; the run's ending (its own grant, limited to
    instances tagged as launch checks) terminates the instance, so nothing is left running."""
    project = project_without(tmp_path, "EndLaunchCheckFunction", "ec2:TerminateInstances")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        result = emu.run(distribution(emu), name="lost-grant")
        refusal(emu, "EndLaunchCheckFunctionRole", "ec2:TerminateInstances")
        assert result.output and len(result.output["cleaned_up"]) == 2, result.output
        assert {r.region for r in emu.world.sent("RunInstances")} == {"eu-west-1", "us-east-1"}
        assert {r.region for r in emu.world.sent("TerminateInstances")} == {"eu-west-1", "us-east-1"}, (
            "the ending terminated both launch checks"
        )


@pytest.mark.slow
def test_the_run_ending_policy_is_needed_to_put_the_instance_back(tmp_path: Path) -> None:
    """Finalize, HandleFailure and the janitor share RunEndingPolicy: without StartInstances a failed
    run's ending is refused, and the instance is left stopped (what the grant is there for)."""
    project = project_without(tmp_path, "RunEndingPolicy", "ec2:StartInstances")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        result = emu.run(failing(emu), name="lost-grant")
        assert result.status == "FAILED"
        refused = refusal(emu, "HandleFailureFunctionRole", "ec2:StartInstances")
        assert "instance/i-" in refused.decision.resource


@pytest.mark.slow
def test_the_janitor_needs_to_read_the_execution_it_ends(tmp_path: Path) -> None:
    project = project_without(tmp_path, "EndRunFunction", "states:DescribeExecution")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        request = basic(emu)
        emu.world.after_call(
            "CreateImage",
            lambda: emu.client("stepfunctions").stop_execution(
                executionArn=f"{emu.state_machine_arn.replace(':stateMachine:', ':execution:')}:stopped"
            ),
        )
        assert emu.run(request, name="stopped").status == "ABORTED"
        refusal(emu, "EndRunFunctionRole", "states:DescribeExecution")
        assert any("error" in change for change in emu.status_changes), "the janitor's invocation failed"


@pytest.mark.slow
def test_only_the_janitor_reads_the_whole_ledger_and_its_sweep_needs_to(tmp_path: Path) -> None:
    project = project_without(tmp_path, "EndRunFunction", "dynamodb:Scan")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        with pytest.raises(RuntimeError, match="not authorized to perform: dynamodb:Scan"):
            emu.fire_scheduled_rule()
        refusal(emu, "EndRunFunctionRole", "dynamodb:Scan")
        finalize = emu.authorizer.roles["ami-factory-local-FinalizeFunctionRole"]
        assert not any("dynamodb:Scan" in str(s.document.get("Action")) for s in finalize.statements)


@pytest.mark.slow
def test_the_tag_trigger_needs_to_start_the_execution(tmp_path: Path) -> None:
    project = project_without(tmp_path, "StartRunFunction", "states:StartExecution")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        instance_id = launch_tagged(emu)
        with pytest.raises(RuntimeError, match="states:StartExecution"):
            emu.deliver_event(tag_event(emu, instance_id))
        refusal(emu, "StartRunFunctionRole", "states:StartExecution")


@pytest.mark.slow
def test_retention_needs_to_deregister(tmp_path: Path) -> None:
    project = project_without(tmp_path, "ApplyRetentionFunction", "ec2:DeregisterImage")
    with Emulator(parameters={**TEST_PARAMETERS, "RetentionKeepNewest": "1"}, project_root=project) as emu:
        instance_id = emu.launch_instance(name="web")
        for run in ("r1", "r2"):
            assert (
                emu.run(sample("request-basic.json", instance_id=instance_id, regions=[]), name=run).status
                == "SUCCEEDED"
            )
        with pytest.raises(RuntimeError, match="not authorized to perform: ec2:DeregisterImage"):
            emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {"dry_run": False})
        refusal(emu, "ApplyRetentionFunctionRole", "ec2:DeregisterImage")


# --- the orchestrators -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_state_machine_may_invoke_only_the_functions_its_role_names(tmp_path: Path) -> None:
    project = project_without(
        tmp_path, "ImagingStateMachineRole", "lambda:InvokeFunction", resource="CopyImageFunction"
    )
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        result = emu.run(basic(emu), name="lost-grant")
        refused = refusal(emu, "ImagingStateMachineRole", "lambda:InvokeFunction")
        assert refused.decision.resource.endswith(":function:ami-factory-local-CopyImageFunction")
        assert result.output and result.output["status"] == "PARTIAL", result.cause
        assert {"ap-southeast-2", "eu-west-1"} <= set(result.output["failed_regions"]), result.output
        assert "lambda:InvokeFunction" in failures(result)


@pytest.mark.slow
def test_the_schedule_needs_its_role_to_invoke_the_start_function(tmp_path: Path) -> None:
    project = project_without(tmp_path, "SchedulerRole", "lambda:InvokeFunction")
    with (
        Emulator(
            parameters={**TEST_PARAMETERS, "ScheduleExpression": "cron(0 3 ? * SUN *)"}, project_root=project
        ) as emu,
        pytest.raises(RuntimeError, match=r"Scheduler cannot invoke .*StartRunFunction"),
    ):
        emu.fire_schedule("2026-11-29T03:00:00Z")


@pytest.mark.slow
def test_eventbridge_needs_the_lambda_permission_to_reach_the_janitor(tmp_path: Path) -> None:
    template = load_template(ROOT / "template.yaml")
    del template["Resources"]["RunEndedPermission"]
    with Emulator(parameters=TEST_PARAMETERS, project_root=project_with(tmp_path, template)) as emu:
        emu.runtime.crash("FinalizeFunction", times=1)
        assert emu.run(basic(emu), name="crashed").status == "FAILED"
        wait_all(emu)
        assert [name for _, name in emu.runtime.refused_deliveries] == ["ami-factory-local-EndRunFunction"]
        assert all(not change["results"] for change in emu.status_changes), "no janitor ran"


@pytest.mark.slow
def test_finalize_needs_to_claim_the_ending(tmp_path: Path) -> None:
    """Finalize shares RunEndingPolicy with HandleFailure and the janitor: without UpdateItem it cannot
    claim the run's ending, and the run fails saying so."""
    project = project_without(tmp_path, "RunEndingPolicy", "dynamodb:UpdateItem")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        result = emu.run(basic(emu), name="lost-grant")
        refused = refusal(emu, "FinalizeFunctionRole", "dynamodb:UpdateItem")
        assert result.status == "FAILED"
        assert refused.message in failures(result)


# --- tags as AWS applies them ----------------------------------------------------------------------


def as_function(emu: Emulator, function: str) -> Any:
    """The block's calls are made by the deployed function's role, as the function would make them."""
    return acting_as(f"ami-factory-local-{function}Role", f"ami-factory-local-{function}")


def test_a_request_tag_counts_only_in_the_tag_specifications_of_the_creating_call(emu: Emulator) -> None:
    """LaunchClone may launch only instances tagged ami-factory:role=clone at launch: launching untagged
    and tagging afterwards is refused at the launch, as on AWS."""
    ec2 = emu.client("ec2")
    seed = ec2.register_image(Name="seed", RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[seed], Tags=[{"Key": "ami-factory:role", "Value": "seed"}])
    clone_tags = [{"Key": "ami-factory:role", "Value": "clone"}]
    with as_function(emu, "LaunchCloneFunction"):
        with pytest.raises(ClientError, match="UnauthorizedOperation") as refused:
            ec2.run_instances(ImageId=seed, MinCount=1, MaxCount=1, InstanceType="t3.micro")
        assert "ec2:RunInstances on resource: arn:aws:ec2:us-east-1:123456789012:instance/*" in str(refused.value)
        specs = [{"ResourceType": kind, "Tags": clone_tags} for kind in ("instance", "volume")]
        launched = ec2.run_instances(
            ImageId=seed, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=specs
        )
    assert launched["Instances"][0]["InstanceId"].startswith("i-")


def test_create_tags_is_allowed_only_as_part_of_the_call_that_creates(emu: Emulator) -> None:
    """CreateImage's role may tag images only through CreateImage's TagSpecifications (ec2:CreateAction):
    it cannot retag an image that exists, e.g. to make someone else's image look like the tool's."""
    ec2 = emu.client("ec2")
    instance_id = emu.launch_instance(name="web")
    image_id = ec2.register_image(Name="someone-elses", RootDeviceName="/dev/xvda")["ImageId"]
    with as_function(emu, "CreateImageFunction"):
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            ec2.create_tags(Resources=[image_id], Tags=[{"Key": "ami-factory:managed", "Value": "true"}])
        tags = [{"Key": "ami-factory:managed", "Value": "true"}]
        specs = [{"ResourceType": kind, "Tags": tags} for kind in ("image", "snapshot")]
        made = ec2.create_image(InstanceId=instance_id, Name="mine", NoReboot=True, TagSpecifications=specs)
    assert made["ImageId"].startswith("ami-")
    (refused,) = emu.authorizer.refusals
    assert (refused.role, refused.decision.action) == ("CreateImageFunctionRole", "ec2:CreateTags")


def test_a_refusal_is_answered_as_each_service_answers(emu: Emulator) -> None:
    """EC2's UnauthorizedOperation carries an encoded message; JSON services say AccessDeniedException."""
    instance_id = emu.launch_instance(name="web")
    with as_function(emu, "WatchImageFunction"):
        with pytest.raises(ClientError) as ec2_refusal:
            emu.client("ec2").stop_instances(InstanceIds=[instance_id])
        with pytest.raises(ClientError, match="does not model the resources of ec2:RegisterImage"):
            emu.client("ec2").register_image(Name="not-modelled", RootDeviceName="/dev/xvda")  # fails closed
        with pytest.raises(ClientError) as ssm_refusal:
            emu.client("ssm").get_parameter(Name="/ami-factory/web/latest")
        with pytest.raises(ClientError) as table_refusal:
            emu.client("dynamodb").scan(TableName="ami-factory-local-LedgerTable")
        with pytest.raises(ClientError) as topic_refusal:
            emu.client("sns").publish(TopicArn=emu.deployment.topic_arns["NotificationTopic"], Message="x")
    assert ec2_refusal.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert "Encoded authorization failure message: " in ec2_refusal.value.response["Error"]["Message"]
    assert ssm_refusal.value.response["Error"]["Code"] == "AccessDeniedException"
    assert table_refusal.value.response["Error"]["Code"] == "AccessDeniedException"
    assert topic_refusal.value.response["Error"]["Code"] == "AuthorizationError"
    assert "ami-factory-local-WatchImageFunctionRole/ami-factory-local-WatchImageFunction" in str(table_refusal.value)


def test_each_schedule_reaches_its_function_through_its_own_role(make_emulator: Any) -> None:
    emu: Emulator = make_emulator(
        ScheduleExpression="cron(0 3 ? * SUN *)", RetentionScheduleExpression="cron(0 4 * * ? *)"
    )
    fired = emu.fire_schedule("2026-11-29T03:00:00Z")
    assert len(fired) == 2 and emu.authorizer.refusals == []
    used = {(role, action) for role, action, _ in emu.authorizer.used}
    assert {("SchedulerRole", "lambda:InvokeFunction"), ("RetentionSchedulerRole", "lambda:InvokeFunction")} <= used


@pytest.mark.parametrize("function", ["StartRunFunction", "FinalizeFunction"])
def test_a_delete_tags_without_keys_which_would_remove_every_tag_is_refused(emu: Emulator, function: str) -> None:
    """ForAllValues holds for a request with no tag keys, and DeleteTags without keys removes them all:
    the roles that may remove one tag cannot strip an instance of every tag."""
    instance_id = emu.launch_instance(
        name="web", tags={"owner": "team-a", "ami-factory:error": "x", "ami-factory:create": "true"}
    )
    key = "ami-factory:error" if function == "StartRunFunction" else "ami-factory:create"
    with as_function(emu, function):
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            emu.client("ec2").delete_tags(Resources=[instance_id])
        emu.client("ec2").delete_tags(Resources=[instance_id], Tags=[{"Key": key}])
    left = {tag["Key"] for tag in emu.client("ec2").describe_tags()["Tags"] if tag["ResourceId"] == instance_id}
    assert "owner" in left and key not in left


@pytest.mark.slow
def test_an_image_event_ends_its_wait_only_through_settle_waits_grant(tmp_path: Path) -> None:
    """Without SendTaskSuccess, EC2's event (and the fallback sweep) cannot end the wait: the run fails
    at the wait's bound with WaitTimeoutError, the instance put back, each refusal naming the role."""
    project = project_without(tmp_path, "SettleWaitFunction", "states:SendTaskSuccess")
    with Emulator(parameters={**TEST_PARAMETERS, "MaxWaitSeconds": "3600"}, project_root=project) as emu:
        emu.world.images_take(20 * 60)
        instance_id = emu.launch_instance(name="web")
        result = emu.run({"instance_id": instance_id, "regions": []}, name="lost-grant")
        assert result.status == "FAILED" and result.error == "WaitTimeoutError", result.error
        assert "still not available after MaxWaitSeconds (3600 s)" in (result.cause or "")
        refused = refusal(emu, "SettleWaitFunctionRole", "states:SendTaskSuccess")
        assert any(refused.message in error for _, error in emu.failed_deliveries)
        (described,) = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
        assert described["State"]["Name"] == "running"


@pytest.mark.slow
def test_a_copy_event_reaches_the_stacks_region_only_through_the_forwarding_roles_grant(tmp_path: Path) -> None:
    """Without events:PutEvents on the home bus, EventBridge cannot forward a copy's event: the copy's
    wait ends at the fallback sweep instead, and the refused forwarding is recorded."""
    project = project_without(tmp_path, "AmiEventForwardingRole", "events:PutEvents")
    with Emulator(parameters=TEST_PARAMETERS, project_root=project) as emu:
        emu.world.images_take(45 * 60)
        instance_id = emu.launch_instance(name="web")
        result = emu.run({"instance_id": instance_id, "regions": ["eu-west-1"]}, name="lost-grant")
        assert result.status == "SUCCEEDED", result.cause
        assert ("arn:aws:events:eu-west-1:123456789012:rule/ami-factory-local-us-east-1-ami-events") in {
            rule for rule, _ in emu.runtime.refused_deliveries
        }
        swept = [out for name, out in emu.runtime.results if name.endswith("SettleWaitFunction") and "settled" in out]
        assert [image for out in swept for image in out["settled"]] != []
