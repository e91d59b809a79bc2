"""Approval before anyone gets the images: a run with approval copies and checks, tells the topic
which images wait and how to answer, shares and publishes nothing until a person approves; rejected
or unanswered, its images are removed and the instance is as it was."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from ami_factory_cli import cli
from ami_factory_local import Emulator
from ami_factory_local.emulator import ACCOUNT_ID
from tests.helpers import ALLOWED_ACCOUNT, all_instances, ledger_items, run_images, sample

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
DECIDE = "ami-factory-local-DecideApprovalFunction"


def execution(emu: Emulator, name: str) -> str:
    return f"{emu.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


def answered_when_asked(emu: Emulator, name: str, *argv: str) -> io.StringIO:
    """The person answers with the CLI when the topic asks (right after AwaitApproval publishes)."""
    said = io.StringIO()

    def person() -> None:
        args = cli.parser().parse_args([*argv, execution(emu, name), "--function-name", DECIDE])
        assert cli.answer(args, said) == 0, said.getvalue()

    emu.world.after_call("Publish", person)
    return said


def shared(emu: Emulator) -> list[str]:
    return [r.params["ImageId"] for r in emu.world.sent("ModifyImageAttribute") if "LaunchPermission" in r.params]


def test_nothing_is_shared_or_published_until_a_person_approves(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    before: dict[str, int] = {}
    given = ("ModifyImageAttribute", "ModifySnapshotAttribute", "PutParameter", "CreateLaunchTemplateVersion")
    emu.world.after_call("Publish", lambda: before.update({op: len(emu.world.sent(op)) for op in given}))
    said = answered_when_asked(emu, "approved", "approve", "--approver", "alice")

    result = emu.run(sample("request-basic.json", instance_id=instance_id, approval=True), name="approved")

    assert result.output["status"] == "SUCCEEDED", result.cause
    assert said.getvalue().startswith("approved arn:aws:states:us-east-1:")
    assert before == dict.fromkeys(given, 0), "nothing shared, published or pointed at before the approval"
    (asked,) = [r.params for r in emu.world.sent("Publish") if "awaits approval" in r.params.get("Subject", "")]
    for region in REGIONS:
        (image,) = run_images(emu, region, "approved")
        assert f"{region}: {image['ImageId']}" in asked["Message"]
        assert image["ImageId"] in shared(emu)
    assert f"ami_factory_cli approve {execution(emu, 'approved')} --stack-name" in asked["Message"]
    assert f"ami_factory_cli reject {execution(emu, 'approved')} --stack-name" in asked["Message"]
    decided = [i for i in ledger_items(emu) if i["sk"] == "approval"]
    assert [(i["decision"], i["decided_by"]) for i in decided] == [("approved", "alice")]


def test_a_rejected_run_removes_its_images_and_leaves_the_instance_running(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    answered_when_asked(emu, "rejected", "reject", "--reason", "CVE-2026-1234 not patched")

    result = emu.run(sample("request-basic.json", instance_id=instance_id, approval=True), name="rejected")

    assert result.status == "FAILED" and result.error == "ApprovalRejectedError", result.cause
    assert "CVE-2026-1234 not patched" in result.cause_message
    for region in REGIONS:
        assert run_images(emu, region, "rejected") == [], region
    assert shared(emu) == []
    (found,) = [i for i in all_instances(emu) if i["InstanceId"] == instance_id]
    assert found["State"]["Name"] == "running"
    assert not emu.client("ssm").get_parameters(Names=["/ami-factory/web/latest"])["Parameters"]


def test_an_unanswered_run_times_out_and_removes_its_images(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(ApprovalTimeoutHours="2")
    instance_id = emu.launch_instance(name="web")
    started = emu.clock.now()

    result = emu.run(sample("request-basic.json", instance_id=instance_id, approval=True), name="unanswered")

    assert result.status == "FAILED" and result.error == "WaitTimeoutError", result.cause
    assert "no one approved run unanswered within ApprovalTimeoutHours (7200 s)" in result.cause_message
    assert emu.clock.now() - started >= 7200
    for region in REGIONS:
        assert run_images(emu, region, "unanswered") == [], region
    assert shared(emu) == []


def test_the_cli_refuses_to_answer_a_run_that_does_not_wait(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.run(sample("request-basic.json", instance_id=instance_id), name="plain")
    out = io.StringIO()
    assert (
        cli.answer(cli.parser().parse_args(["approve", execution(emu, "plain"), "--function-name", DECIDE]), out) == 1
    )
    assert "run plain is not waiting for approval" in out.getvalue()
    assert ACCOUNT_ID in execution(emu, "plain")


def test_only_the_regions_that_copied_wait_for_approval(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.refuse("CopyImage", 1, region="ap-southeast-2")
    answered_when_asked(emu, "some", "approve")

    result = emu.run(sample("request-basic.json", instance_id=instance_id, approval=True), name="some")

    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["ap-southeast-2"]
    (asked,) = [r.params for r in emu.world.sent("Publish") if "awaits approval" in r.params.get("Subject", "")]
    assert "ap-southeast-2" not in asked["Message"] and "eu-west-1: ami-" in asked["Message"]


def test_a_task_success_sent_around_the_decide_function_gives_nothing_away(emu: Emulator) -> None:
    """Whoever reads the history has the wait's token; sending SendTaskSuccess with it moves the
    execution on, but ShareImage finds no decision in the ledger: nothing is shared or published, and
    the images are removed."""
    instance_id = emu.launch_instance(name="web")

    def around() -> None:
        history = emu.client("stepfunctions").get_execution_history(
            executionArn=execution(emu, "around"), reverseOrder=True
        )["events"]
        (token,) = [
            json.loads(e["taskScheduledEventDetails"]["parameters"])["Payload"]["task_token"]
            for e in history
            if e["type"] == "TaskScheduled" and "AwaitApproval" in e["taskScheduledEventDetails"]["parameters"]
        ]
        emu.client("stepfunctions").send_task_success(taskToken=token, output="{}")

    emu.world.after_call("Publish", around)

    result = emu.run(sample("request-basic.json", instance_id=instance_id, approval=True), name="around")

    assert result.status == "FAILED" and result.error == "AllRegionsFailedError", result.cause
    assert result.cause_message.count("ApprovalMissingError") == len(REGIONS), result.cause_message
    assert shared(emu) == [] and not emu.world.sent("PutParameter")
    for region in REGIONS:
        assert run_images(emu, region, "around") == [], region


def test_a_deployment_that_requires_approval_waits_whatever_the_request_says(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(RequireApproval="true", ApprovalTimeoutHours="1")
    instance_id = emu.launch_instance(name="web")
    request = sample("request-basic.json", instance_id=instance_id, approval=False)
    result = emu.run(request, name="required")
    assert result.status == "FAILED" and result.error == "WaitTimeoutError", result.cause
    assert shared(emu) == []


def test_a_deployment_that_requires_approval_shares_nothing_whatever_the_state_says(
    make_emulator: Callable[..., Emulator],
) -> None:
    """The state is data whoever starts a run (or invokes a step) shapes: ShareImage holds the
    deployment's RequireApproval itself, not only the plan's approval flag."""
    emu = make_emulator(RequireApproval="true")
    instance_id = emu.launch_instance(name="web")
    image_id = emu.client("ec2").create_image(InstanceId=instance_id, Name="unapproved")["ImageId"]
    errored, answer = emu.runtime.invoke(
        "ami-factory-local-ShareImageFunction",
        {
            "image": {"region": "us-east-1", "image_id": image_id},
            "share": {"accounts": [ALLOWED_ACCOUNT]},
            "run_id": "shaped",
            "approval": False,
        },
    )
    assert errored and answer["errorType"] == "ApprovalMissingError", answer
    assert shared(emu) == [] and emu.world.sent("ModifyImageAttribute") == []


def test_a_run_whose_every_region_failed_asks_nobody_and_ends_failed(emu: Emulator) -> None:
    """No image to approve: the approval's wait ends at once (its own SendTaskSuccess), nobody is asked."""
    instance_id = emu.launch_instance(name="web")
    for region in REGIONS:
        emu.world.status_checks_fail(region)

    result = emu.run(
        sample("request-basic.json", instance_id=instance_id, approval=True, launch_check=True), name="none"
    )

    assert result.status == "FAILED" and result.error == "AllRegionsFailedError", result.cause
    assert not [r for r in emu.world.sent("Publish") if "awaits approval" in r.params.get("Subject", "")]
    used = {action for role, action, _ in emu.authorizer.used if role == "AwaitApprovalFunctionRole"}
    assert "states:SendTaskSuccess" in used
    for region in REGIONS:
        assert run_images(emu, region, "none") == []
