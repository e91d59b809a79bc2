"""The real handlers, invoked the way Lambda invokes them, on moto (inputs from events/)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ami_factory_local import Emulator
from tests.helpers import (
    ALLOWED_ACCOUNT,
    OTHER_ACCOUNT,
    all_instances,
    event,
    invoke,
    invoke_error,
    ledger_items,
    sample,
)


@pytest.fixture
def plan(emu: Emulator) -> dict[str, Any]:
    instance_id = emu.launch_instance(name="web")
    request = sample("request-basic.json", instance_id=instance_id)
    return invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "run-7", "state_machine_arn": emu.state_machine_arn}
    )


def test_resolve_request_turns_a_sample_request_into_a_plan(plan: dict[str, Any]) -> None:
    assert plan["image_name"] == "ami-factory-web-run-7"
    assert [r["name"] for r in plan["regions"]] == ["us-east-1", "eu-west-1", "ap-southeast-2"]
    assert plan["regions"][0]["is_source"] is True
    assert plan["parameter_name"] == "/ami-factory/web/latest"
    assert plan["tags"]["ami-factory:managed"] == "true"
    assert plan["max_wait_seconds"] == 7200, "the sample deployment's bound on a wait that ends on AWS's events"


def test_create_image_retried_makes_one_image(emu: Emulator, plan: dict[str, Any]) -> None:
    first = invoke(emu, "CreateImage", plan)
    second = invoke(emu, "CreateImage", plan)
    assert first["image_id"] == second["image_id"]
    assert second["state"] == "available", "the image found again is reported as EC2 describes it"
    assert len(emu.world.sent("CreateImage")) == 1
    (request,) = emu.world.sent("CreateImage")
    kinds = [spec["ResourceType"] for spec in request.params["TagSpecifications"]]
    assert kinds == ["image", "snapshot"]


def test_copy_image_retried_makes_one_copy_with_token_and_tags(emu: Emulator, plan: dict[str, Any]) -> None:
    source = invoke(emu, "CreateImage", plan)
    item = {**plan, "region": {"name": "eu-west-1", "is_source": False}, "source_image": source}
    first = invoke(emu, "CopyImage", item)
    second = invoke(emu, "CopyImage", item)
    assert first["image_id"] == second["image_id"] and first["region"] == "eu-west-1"
    # The retry asks again with the same ClientToken (never a lookup by name), and EC2 answers with
    # the copy it made: one copy.
    copy, again = emu.world.sent("CopyImage", "eu-west-1")
    assert copy.params["SourceImageId"] == source["image_id"] and copy.params["SourceRegion"] == "us-east-1"
    assert len(copy.params["ClientToken"]) == 64 and again.params["ClientToken"] == copy.params["ClientToken"]
    named = emu.client("ec2", "eu-west-1").describe_images(Filters=[{"Name": "name", "Values": [plan["image_name"]]}])
    assert [image["ImageId"] for image in named["Images"]] == [first["image_id"]]
    (image,) = emu.client("ec2", "eu-west-1").describe_images(ImageIds=[first["image_id"]])["Images"]
    tags = {tag["Key"]: tag["Value"] for tag in image["Tags"]}
    assert tags["ami-factory:source-image"] == source["image_id"]
    assert tags["ami-factory:run"] == "run-7"


def test_share_refuses_a_target_outside_the_allow_list_even_from_tampered_state(
    emu: Emulator, plan: dict[str, Any]
) -> None:
    image = invoke(emu, "CreateImage", plan)
    error = invoke_error(emu, "ShareImage", {"image": image, "share": {"accounts": [ALLOWED_ACCOUNT, OTHER_ACCOUNT]}})
    assert error["errorType"] == "ShareTargetNotAllowedError"
    assert OTHER_ACCOUNT in error["errorMessage"]
    assert emu.world.sent("ModifyImageAttribute") == []
    shared = invoke(emu, "ShareImage", {"image": image, "share": {"accounts": [ALLOWED_ACCOUNT]}})
    assert shared == {"shared_with": [ALLOWED_ACCOUNT]}


def ami_event(image_id: str, state: str, region: str = "us-east-1") -> dict[str, Any]:
    """EC2's event about an image (events/ami-state-change.json), for ``image_id`` in ``region``."""
    sample_event = event("ami-state-change.json")
    sample_event["region"] = region
    sample_event["resources"] = [f"arn:aws:ec2:{region}::image/{image_id}"]
    sample_event["detail"] |= {"ImageId": image_id, "State": state}
    return sample_event


def test_watch_image_records_the_wait_and_its_event_ends_it_once(emu: Emulator, plan: dict[str, Any]) -> None:
    emu.world.images_take(600)
    image = invoke(emu, "CreateImage", plan)
    watched = invoke(emu, "WatchImage", {"run_id": "run-7", "role": "image", "image": image, "task_token": "token-1"})
    assert watched["state"] == "pending"
    (wait,) = [item for item in ledger_items(emu) if item["pk"] == "wait"]
    assert wait["sk"] == f"us-east-1#{image['image_id']}" and wait["token"] == "token-1" and wait["run_id"] == "run-7"
    # The event ends the wait once EC2 says so (the token belongs to no task here: Step Functions says
    # so, and it is no failure).
    emu.clock.advance(600)
    (settled,) = emu.deliver_event(ami_event(image["image_id"], "available"))
    assert settled == {"region": "us-east-1", "resource_id": image["image_id"], "state": "available", "ended": False}
    assert [item for item in ledger_items(emu) if item["pk"] == "wait"] == [], "the wait is over"
    assert emu.world.sent("SendTaskSuccess") != [], "the task was told"
    # A duplicate finds no wait; so does an event about an image no run waits for. Neither changes anything.
    before = ledger_items(emu)
    (duplicate,) = emu.deliver_event(ami_event(image["image_id"], "available"))
    (stranger,) = emu.deliver_event(ami_event("ami-0000000000000beef", "failed"))
    assert duplicate["ended"] is False and stranger["ended"] is False
    assert ledger_items(emu) == before
    assert len(emu.world.sent("SendTaskSuccess")) == 1 and emu.world.sent("SendTaskFailure") == []


def test_watch_image_of_an_image_not_visible_yet_waits_for_its_event(emu: Emulator, plan: dict[str, Any]) -> None:
    """Right after CreateImage an image may not be visible yet: the wait is recorded all the same (its
    event, or the fallback sweep, ends it), rather than retried until the retries run out."""
    emu.world.hide_new_images(describes=5)
    image = invoke(emu, "CreateImage", plan)
    watched = invoke(emu, "WatchImage", {"run_id": "run-7", "role": "image", "image": image, "task_token": "token-2"})
    assert watched["image_id"] == image["image_id"]
    (wait,) = [item for item in ledger_items(emu) if item["pk"] == "wait"]
    assert wait["token"] == "token-2"
    missing = {"region": "us-east-1", "image_id": "ami-0000000000000dead"}
    error = invoke_error(emu, "WatchImage", {"run_id": "run-7", "role": "image", "image": missing, "task_token": "t"})
    assert error["errorType"] == "NotMadeByRunError", "an image the run never made is never waited for"


def test_the_sweep_settles_every_wait_it_can_even_when_one_region_fails(emu: Emulator, plan: dict[str, Any]) -> None:
    """One Region that cannot be looked at (a permission missing there, an outage) holds up no other
    Region's waits; its own are settled by the next sweep."""
    emu.world.images_take(600)
    image = invoke(emu, "CreateImage", plan)
    item = {**plan, "region": {"name": "eu-west-1", "is_source": False}, "source_image": image}
    copy = invoke(emu, "CopyImage", item)
    for ref, copy_slot in ((image, False), (copy, True)):
        invoke(
            emu,
            "WatchImage",
            {"run_id": "run-7", "role": "image", "image": ref, "task_token": ref["image_id"], "copy_slot": copy_slot},
        )
    emu.clock.advance(1800)  # the image, and its copy after it
    emu.world.refuse("DescribeImages", times=1, region="us-east-1")
    (first,) = emu.fire_scheduled_rule("WaitSweepRule")
    # (The tokens belong to no task here, so Step Functions answers that they are over: "settled" lists
    # the tasks a sweep ended; what the sweep did shows in its calls and the ledger.)
    assert first["failed"] == [image["image_id"]] and first["open"] == 2
    assert [item["sk"] for item in ledger_items(emu) if item["pk"] == "wait"] == [f"us-east-1#{image['image_id']}"]
    assert [call.params["taskToken"] for call in emu.world.sent("SendTaskSuccess")] == [copy["image_id"]]
    assert (
        emu.client("dynamodb")
        .get_item(
            TableName="ami-factory-local-LedgerTable", Key={"pk": {"S": "copy-slots#eu-west-1"}, "sk": {"S": "slots"}}
        )["Item"]
        .get("holders")
        is None
    ), "the settled copy gave its slot back"
    (second,) = emu.fire_scheduled_rule("WaitSweepRule")
    assert second["failed"] == [] and second["open"] == 1
    assert [item for item in ledger_items(emu) if item["pk"] == "wait"] == []


def test_handle_failure_removes_only_what_the_run_made(emu: Emulator, plan: dict[str, Any]) -> None:
    ec2 = emu.client("ec2")
    image = invoke(emu, "CreateImage", plan)
    bystander_instance = emu.launch_instance(name="other")
    bystander = ec2.create_image(InstanceId=bystander_instance, Name="not-ours")["ImageId"]
    ec2.create_tags(
        Resources=[bystander], Tags=[{"Key": "ami-factory:run", "Value": "run-7"}]
    )  # tag alone is not enough
    summary = invoke(emu, "HandleFailure", {**plan, "error": {"Error": "ImageFailedError", "Cause": "test"}})
    assert summary["cleaned_up"] == [f"us-east-1:{image['image_id']}"]
    remaining = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert bystander in remaining and image["image_id"] not in remaining


def watch(emu: Emulator, run_id: str, field: str, ref: dict[str, Any]) -> dict[str, Any]:
    """WatchInstance's first look at ``ref`` (``instance``, ``command`` or ``generalize``), as what it
    told Step Functions: {"output": the step's reference} or {"error", "cause"}; {} while not settled."""
    token = f"token-{len(emu.world.sent('SendTaskSuccess')) + len(emu.world.sent('SendTaskFailure'))}-{field}"
    invoke(emu, "WatchInstance", {"run_id": run_id, "task_token": token, field: ref})
    for call in emu.world.sent("SendTaskSuccess"):
        if call.params["taskToken"] == token:
            return {"output": json.loads(call.params["output"])}
    for call in emu.world.sent("SendTaskFailure"):
        if call.params["taskToken"] == token:
            return {"error": call.params["error"], "cause": json.loads(call.params["cause"])["errorMessage"]}
    return {}


def managed_plan(emu: Emulator, run_id: str, **request: Any) -> dict[str, Any]:
    """A plan for a new SSM-managed Linux instance (the run holds its lock)."""
    source = emu.launch_instance(name="managed")
    emu.world.ssm_manage(source, "Linux")
    return invoke(
        emu,
        "ResolveRequest",
        {
            "request": {"instance_id": source, "regions": [], **request},
            "run_id": run_id,
            "state_machine_arn": emu.state_machine_arn,
        },
    )


def test_a_stop_wait_ends_with_an_error_for_a_terminated_instance(emu: Emulator, plan: dict[str, Any]) -> None:
    prepared = invoke(emu, "PrepareInstance", plan)
    assert prepared["stopped_by_us"] is True and prepared["original_state"] == "running"
    emu.client("ec2").terminate_instances(InstanceIds=[plan["instance_id"]])
    ended = watch(emu, "run-7", "instance", prepared)
    assert ended["error"] == "UnsupportedInstanceError" and "terminated" in ended["cause"]


def test_launch_clone_retried_finds_its_clone_and_scaffolding_removal_touches_only_the_scaffolding(
    emu: Emulator,
) -> None:
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    request = {"instance_id": source, "mode": "generalize", "regions": []}
    plan = invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "run-8", "state_machine_arn": emu.state_machine_arn}
    )
    seed = invoke(emu, "CreateSeedImage", plan)
    assert invoke(emu, "CreateSeedImage", plan)["image_id"] == seed["image_id"], "one seed per run"
    clone = invoke(emu, "LaunchClone", {**plan, "seed": seed})
    assert invoke(emu, "LaunchClone", {**plan, "seed": seed})["instance_id"] == clone["instance_id"]
    first, retried = emu.world.sent("RunInstances")[1:]
    assert first.params["ClientToken"] == retried.params["ClientToken"], "a retry sends the same token"
    assert len(all_instances(emu)) == 2, "the test's launch and one clone: EC2 answers a repeated token with it"
    # Something else of the same run that is not scaffolding: never terminated, never deregistered.
    bystander = emu.launch_instance(tags={"ami-factory:run": "run-8", "ami-factory:managed": "true"})
    instance = invoke(emu, "PrepareInstance", plan)
    invoke(emu, "RestoreInstance", {"instance": instance, "run_id": "run-8", "mode": "stop"})
    assert emu.world.sent("TerminateInstances") == [], "only mode generalize has scaffolding to remove"
    invoke(emu, "RestoreInstance", {"instance": instance, "run_id": "run-8", "mode": "generalize"})
    assert [r.params["InstanceIds"] for r in emu.world.sent("TerminateInstances")] == [[clone["instance_id"]]]
    assert [r.params["ImageId"] for r in emu.world.sent("DeregisterImage")] == [seed["image_id"]]
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in emu.client("ec2").describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states[bystander] == "running" and states[source] == "running"


def last_poll(emu: Emulator, function: str, field: str, ref: dict[str, Any], max_polls: int = 5) -> dict[str, Any]:
    """Check ``ref`` on the last poll its wait may make (``max_polls``): ready then, the wait ends well."""
    return invoke(emu, function, {field: {**ref, "polls": max_polls - 1}, "max_polls": max_polls})


def test_every_wait_ends_well_when_what_it_waits_for_is_ready(emu: Emulator, plan: dict[str, Any]) -> None:
    prepared = invoke(emu, "PrepareInstance", plan)  # stop mode: the instance is stopped at once here
    assert watch(emu, "run-7", "instance", prepared)["output"]["state"] == "stopped"
    image = invoke(emu, "CreateImage", plan)

    emu.world.status_checks_take(0)
    cleaning = managed_plan(emu, "run-c")
    command = invoke(emu, "RunCleanup", cleaning)
    assert watch(emu, "run-c", "command", command)["output"]["status"] == "Success"
    emu.world.generalize_takes(0)
    in_place = managed_plan(emu, "run-g", mode="generalize-in-place", confirm_generalize_in_place=True)
    generalizing = invoke(emu, "Generalize", in_place)
    assert watch(emu, "run-g", "generalize", generalizing)["output"]["instance_state"] == "stopped"

    launched = invoke(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    assert last_poll(emu, "CheckLaunch", "launched", launched)["ready"] is True


def test_the_clone_ready_on_its_last_allowed_poll_is_generalized(emu: Emulator) -> None:
    source = emu.launch_instance(name="golden")
    emu.world.ssm_manage(source, "Linux")
    request = {"instance_id": source, "mode": "generalize", "regions": []}
    plan = invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "run-9", "state_machine_arn": emu.state_machine_arn}
    )
    clone = invoke(emu, "LaunchClone", {**plan, "seed": invoke(emu, "CreateSeedImage", plan)})
    assert last_poll(emu, "CheckClone", "clone", clone)["ready"] is True


def test_a_wait_on_the_instance_not_settled_yet_is_left_to_its_event(emu: Emulator, plan: dict[str, Any]) -> None:
    emu.world.instances_take_to_stop(3600)
    prepared = invoke(emu, "PrepareInstance", plan)
    described = len(emu.world.sent("DescribeInstances"))
    assert watch(emu, "run-7", "instance", prepared) == {}
    assert len(emu.world.sent("DescribeInstances")) == described, (
        "told to stop a moment ago (StopInstances answered stopping): its event is still to come, so no look"
    )
    assert watch(emu, "run-7", "instance", prepared) == {}
    assert len(emu.world.sent("DescribeInstances")) == described + 1, "a second round looks: the event may be past"
    emu.world.commands_take(3600)
    cleaning = managed_plan(emu, "run-c")
    command = invoke(emu, "RunCleanup", cleaning)
    assert watch(emu, "run-c", "command", command) == {}
    waits = {item["sk"]: item["run_id"] for item in ledger_items(emu) if item["pk"] == "wait"}
    assert waits == {f"us-east-1#{plan['instance_id']}": "run-7", f"us-east-1#{command['command_id']}": "run-c"}
    # Another run cannot wait on (or take over the wait for) an instance it does not hold.
    error = invoke_error(emu, "WatchInstance", {"run_id": "run-c", "task_token": "t", "instance": prepared})
    assert error["errorType"] == "NotMadeByRunError"


def test_the_instance_and_command_events_end_their_waits(emu: Emulator, plan: dict[str, Any]) -> None:
    """events/instance-state-change.json and events/command-status-change.json, through the stack's
    rules: each ends the wait for what it names once EC2 or Systems Manager confirms it."""
    emu.world.instances_take_to_stop(600)
    prepared = invoke(emu, "PrepareInstance", plan)
    assert watch(emu, "run-7", "instance", prepared) == {}
    stopped = event("instance-state-change.json")
    stopped["detail"]["instance-id"] = plan["instance_id"]
    assert emu.deliver_event({**stopped, "detail": {**stopped["detail"], "state": "stopping"}}) == [], "not a rule's"
    (early,) = emu.deliver_event(stopped)
    assert early["ended"] is False and early["state"] == "stopping", "EC2 says it is still stopping"
    emu.clock.advance(600)
    (settled,) = emu.deliver_event(stopped)
    assert settled == {"region": "us-east-1", "resource_id": plan["instance_id"], "state": "stopped", "ended": False}
    (told,) = emu.world.sent("SendTaskSuccess")
    assert json.loads(told.params["output"])["state"] == "stopped"

    emu.world.commands_take(600)
    command = invoke(emu, "RunCleanup", managed_plan(emu, "run-c"))
    assert watch(emu, "run-c", "command", command) == {}
    ended = event("command-status-change.json")
    ended["detail"]["command-id"] = command["command_id"]
    emu.clock.advance(600)
    (settled,) = emu.deliver_event(ended)
    assert settled["resource_id"] == command["command_id"] and settled["state"] == "Success"
    assert [item for item in ledger_items(emu) if item["pk"] == "wait"] == [], "both waits are over"


def test_a_throttled_first_look_leaves_the_wait_to_its_event(emu: Emulator, plan: dict[str, Any]) -> None:
    """The token is recorded before the look: a throttled look is not retried (at scale the retries
    are what drains EC2's bucket), and the event ends the wait as it would have."""
    emu.world.instances_take_to_stop(600)
    prepared = invoke(emu, "PrepareInstance", plan)
    assert prepared["state"] == "stopping" and prepared["fresh"] is True, "as StopInstances answered"
    # A wait that did not just set its instance in motion (a retried round) looks first.
    emu.world.throttle("DescribeInstances", times=1)
    assert watch(emu, "run-7", "instance", {**prepared, "fresh": False}) == {}, "no error, no outcome yet"
    assert len(emu.world.sent("DescribeInstances")) == 3, "the plan's, PrepareInstance's, the look (throttled)"
    (wait,) = [item for item in ledger_items(emu) if item["pk"] == "wait"]
    assert wait["sk"] == f"us-east-1#{plan['instance_id']}"
    # A look throttled later (here the sweep's) is no answer about the instance either: the wait stays.
    emu.world.throttle("DescribeInstances", times=1)
    (swept,) = emu.fire_scheduled_rule("WaitSweepRule")
    assert swept["failed"] == [plan["instance_id"]] and emu.world.sent("SendTaskFailure") == []
    stopped = event("instance-state-change.json")
    stopped["detail"]["instance-id"] = plan["instance_id"]
    emu.clock.advance(600)
    (settled,) = emu.deliver_event(stopped)
    assert settled["state"] == "stopped" and len(emu.world.sent("SendTaskSuccess")) == 1


def test_an_instance_shutting_down_is_not_waited_for(emu: Emulator, plan: dict[str, Any]) -> None:
    prepared = invoke(emu, "PrepareInstance", plan)
    emu.world.set_instance_state("us-east-1", plan["instance_id"], "shutting-down")
    ended = watch(emu, "run-7", "instance", prepared)
    assert ended["error"] == "UnsupportedInstanceError" and "shutting-down" in ended["cause"]


def test_protection_dates_deprecation_ahead_in_utc_whatever_the_local_zone(
    emu: Emulator, plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    image = invoke(emu, "CreateImage", plan)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        protected = invoke(emu, "ProtectImage", {"image": image, "protection": {"deprecate_after_days": 30}})
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    when = datetime.strptime(protected["deprecate_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(when - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=2)
    only_protected = invoke(emu, "ProtectImage", {"image": image, "protection": {"deregistration_protection": True}})
    assert only_protected == {"deprecate_at": None, "deregistration_protection": True}


def test_a_copy_to_a_region_the_keys_no_longer_cover_is_refused_naming_the_fix(make_emulator) -> None:
    emu = make_emulator(KmsKeyIds="arn:aws:kms:us-east-1:123456789012:key/one")
    instance_id = emu.launch_instance(name="web")
    request = {"instance_id": instance_id, "regions": [], "encrypt": True}
    plan = invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "run-k", "state_machine_arn": emu.state_machine_arn}
    )
    source = invoke(emu, "CreateImage", plan)
    item = {**plan, "region": {"name": "eu-west-1", "is_source": False}, "source_image": source}
    error = invoke_error(emu, "CopyImage", item)
    assert error["errorType"] == "EncryptionKeyError"
    assert error["errorMessage"] == (
        "the deployment's KmsKeyIds has no key for eu-west-1: add a key ARN in eu-west-1 to KmsKeyIds"
    )


@pytest.mark.parametrize("state", ["stopping", "stopped", "shutting-down", "terminated"])
def test_a_launch_check_instance_that_stops_or_dies_fails_its_region_at_once(
    emu: Emulator, plan: dict[str, Any], state: str
) -> None:
    image = invoke(emu, "CreateImage", plan)
    launched = invoke(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    emu.world.set_instance_state("us-east-1", launched["instance_id"], state)
    error = invoke_error(emu, "CheckLaunch", {"launched": launched, "max_polls": 10})
    assert error["errorType"] == "LaunchCheckFailedError"
    assert error["errorMessage"] == (
        f"the instance launched from the new image in us-east-1 ({launched['instance_id']}) is {state}: the image "
        f"does not boot. See the instance's system log"
    )


def test_a_launch_check_counts_its_polls_and_says_where_it_got_when_it_runs_out(
    emu: Emulator, plan: dict[str, Any]
) -> None:
    emu.world.status_checks_take(3600)
    image = invoke(emu, "CreateImage", plan)
    launched = invoke(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    assert invoke(emu, "CheckLaunch", {"launched": {**launched, "polls": 3}, "max_polls": 5})["polls"] == 4
    timeout = invoke_error(emu, "CheckLaunch", {"launched": {**launched, "polls": 4}, "max_polls": 5})
    assert timeout["errorMessage"].startswith(
        f"the launch check instance {launched['instance_id']} in us-east-1 is still running, checks "
        f"initializing/initializing after 5 checks; raise LaunchCheckMaxWaitSeconds"
    )
    assert timeout["errorMessage"].endswith("raise LaunchCheckMaxWaitSeconds or look at its system log")
    emu.world.set_instance_state("us-east-1", launched["instance_id"], "pending")
    pending = invoke_error(emu, "CheckLaunch", {"launched": {**launched, "polls": 4}, "max_polls": 5})
    assert "is still pending, checks pending/pending after 5 checks" in pending["errorMessage"]


def test_a_launch_check_launches_with_its_token_and_name_and_a_retry_sends_the_same_token(
    emu: Emulator, plan: dict[str, Any]
) -> None:
    from ami_factory.steps import client_token

    image = invoke(emu, "CreateImage", plan)
    first = invoke(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    again = invoke(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    assert again["instance_id"] == first["instance_id"], "EC2 answers the repeated token with the same instance"
    assert len(all_instances(emu)) == 2, "the test's own launch and one launch check"
    launch, retried = emu.world.sent("RunInstances")[1:]
    assert retried.params["ClientToken"] == launch.params["ClientToken"]
    assert "SubnetId" not in launch.params and "SecurityGroupIds" not in launch.params, "the default VPC's"
    assert launch.params["ClientToken"] == client_token("run-7", "launch-check/us-east-1")
    tags = {t["Key"]: t["Value"] for spec in launch.params["TagSpecifications"] for t in spec["Tags"]}
    assert tags["Name"] == "AMI Factory launch check, run run-7" and tags["ami-factory:role"] == "launch-check"


def test_a_launch_check_goes_to_the_configured_subnet_and_a_refusal_fails_its_region_saying_why(
    make_emulator,
) -> None:
    emu = make_emulator(LaunchCheckSubnets="us-east-1=subnet-0123456789abcdef0")
    instance_id = emu.launch_instance(name="web")
    plan = invoke(
        emu,
        "ResolveRequest",
        {
            "request": {"instance_id": instance_id, "regions": []},
            "run_id": "run-7",
            "state_machine_arn": emu.state_machine_arn,
        },
    )
    image = invoke(emu, "CreateImage", plan)
    error = invoke_error(emu, "StartLaunchCheck", {"run_id": "run-7", "image": image})
    assert error["errorType"] == "LaunchCheckFailedError"
    assert error["errorMessage"].startswith(
        f"could not launch an instance from {image['image_id']} in us-east-1 (InvalidSubnetID.NotFound: "
    )
    assert error["errorMessage"].endswith("set LaunchCheckSubnets for Regions without a default VPC")


# --- the generalize waits' own decisions --------------------------------------------------------------


@pytest.mark.parametrize("state", ["stopping", "stopped", "shutting-down", "terminated"])
def test_a_clone_that_goes_down_before_it_is_generalized_fails_saying_so(emu: Emulator, state: str) -> None:
    clone = emu.launch_instance(name="clone")
    emu.world.set_instance_state("us-east-1", clone, state)
    error = invoke_error(
        emu, "CheckClone", {"clone": {"instance_id": clone, "region": "us-east-1", "state": "pending"}, "max_polls": 5}
    )
    assert error["errorType"] == "UnsupportedInstanceError"
    assert error["errorMessage"].startswith(f"the clone {clone} is {state} before it was generalized")


def test_a_clone_ssm_never_reaches_names_the_limit_and_the_fix(emu: Emulator) -> None:
    clone = emu.launch_instance(name="clone")  # running, but not managed by SSM
    ref = {"instance_id": clone, "region": "us-east-1", "state": "pending", "polls": 4}
    error = invoke_error(emu, "CheckClone", {"clone": ref, "max_polls": 5})
    assert error["errorType"] == "WaitTimeoutError"
    assert error["errorMessage"].startswith(f"clone {clone} is still running and not yet reachable through SSM")
    assert "raise GeneralizeMaxWaitSeconds or check that its instance profile allows SSM" in error["errorMessage"]


def generalizing(emu: Emulator) -> dict[str, Any]:
    """Run run-g generalizes a new managed instance in place: its command."""
    return invoke(
        emu, "Generalize", managed_plan(emu, "run-g", mode="generalize-in-place", confirm_generalize_in_place=True)
    )


@pytest.mark.parametrize(("then_stops", "said"), [(True, " and the instance shut down anyway"), (False, "")])
def test_a_failed_generalize_command_fails_the_wait_whether_or_not_the_instance_stopped(
    emu: Emulator, then_stops: bool, said: str
) -> None:
    emu.world.generalize_fails(0, then_stops=then_stops)
    command = generalizing(emu)
    emu.clock.advance(60)
    ended = watch(emu, "run-g", "generalize", command)
    assert ended["error"] == "CommandFailedError"
    assert f"ended Failed{said}: it did not complete, so nothing is imaged" in ended["cause"]


def test_a_generalize_command_that_timed_out_fails_the_wait_unless_the_instance_shut_down(emu: Emulator) -> None:
    """A command that timed out while its instance still runs did not generalize it; one that timed out
    because the instance shut down is what sysprep looks like (the agent stops reporting)."""
    emu.world.generalize_fails(0, then_stops=False, status="TimedOut")
    command = generalizing(emu)
    emu.clock.advance(60)
    ended = watch(emu, "run-g", "generalize", command)
    assert (ended["error"], ended["cause"].split(":")[0]) == (
        "CommandFailedError",
        f"the generalize command {command['command_id']} on instance {command['instance_id']} ended TimedOut",
    )
    emu.world.generalize_fails(0, then_stops=True, status="TimedOut")
    shut_down = generalizing(emu)
    emu.clock.advance(60)
    checked = watch(emu, "run-g", "generalize", shut_down)["output"]
    assert (checked["status"], checked["instance_state"]) == ("TimedOut", "stopped")


@pytest.mark.parametrize("state", ["shutting-down", "terminated"])
def test_an_instance_terminating_while_generalizing_fails_the_wait(emu: Emulator, state: str) -> None:
    emu.world.generalize_never_stops()
    command = generalizing(emu)
    emu.world.set_instance_state("us-east-1", command["instance_id"], state)
    ended = watch(emu, "run-g", "generalize", command)
    assert (ended["error"], ended["cause"]) == (
        "UnsupportedInstanceError",
        f"instance {command['instance_id']} is {state} while generalizing",
    )


def test_a_generalize_wait_is_recorded_under_the_instance_and_the_command(emu: Emulator) -> None:
    """Either event ends it: the instance shutting down, or the command failing before it does."""
    emu.world.generalize_never_stops()
    command = generalizing(emu)
    assert watch(emu, "run-g", "generalize", command) == {}
    waits = sorted(item["sk"] for item in ledger_items(emu) if item["pk"] == "wait")
    assert waits == sorted([f"us-east-1#{command['instance_id']}", f"us-east-1#{command['command_id']}"])
    (swept,) = emu.fire_scheduled_rule("WaitSweepRule")
    assert swept["open"] == 1, "one wait, however many resources it is recorded under"
