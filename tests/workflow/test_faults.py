"""The fault matrix: a new user's worst day, played through the real path. Every case ends with the
instance as it was, nothing the run made left (or removed by the janitor), ``latest`` valid in every
Region, and tags and a notification that say what happened."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ami_factory.rules import execution_arn
from ami_factory_local import Emulator
from tests.helpers import (
    REGIONS,
    create_keys,
    encrypting_emulator,
    instance,
    instance_tags,
    invoke,
    invoke_error,
    ledger_items,
    run_images,
    sample,
)


def stop_when(emu: Emulator, operation: str, name: str) -> None:
    """StopExecution of run ``name`` right after its first ``operation`` took effect: deterministic,
    whatever the machine's speed."""
    emu.world.after_call(
        operation,
        lambda: emu.client("stepfunctions").stop_execution(executionArn=execution_arn(emu.state_machine_arn, name)),
    )


def left_in_ledger(emu: Emulator, run: str) -> list[dict[str, str]]:
    return [
        item
        for item in ledger_items(emu)
        if item["pk"] == f"run#{run}" and item["sk"].startswith("made#") and item["removed"] != "true"
    ]


def assert_nothing_of_the_run_left(emu: Emulator, run: str) -> None:
    assert left_in_ledger(emu, run) == []
    recorded_snapshots = {
        (item["region"], snapshot)
        for item in ledger_items(emu)
        if item["pk"] == f"run#{run}" and item["sk"].startswith("made#")
        for snapshot in item.get("snapshots", "").split(",")
        if snapshot
    }
    for region in REGIONS:
        assert run_images(emu, region, run) == [], f"images of {run} left in {region}"
        snapshots = {
            s["SnapshotId"] for s in emu.client("ec2", region).describe_snapshots(OwnerIds=["self"])["Snapshots"]
        }
        assert not {snapshot for where, snapshot in recorded_snapshots if where == region} & snapshots, region
        reservations = emu.client("ec2", region).describe_instances(
            Filters=[{"Name": "tag:ami-factory:run", "Values": [run]}]
        )["Reservations"]
        alive = [i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]
        assert alive == [], f"instances of {run} left in {region}"


def latest(emu: Emulator, region: str, family: str = "web") -> str | None:
    try:
        parameter = emu.client("ssm", region).get_parameter(Name=f"/ami-factory/{family}/latest")
        return str(parameter["Parameter"]["Value"])
    except ClientError:
        return None


def assert_only_delivered_left(emu: Emulator, run: str, regions: list[str], family: str = "web") -> None:
    """What the ledger still holds of the run is the images it delivered: latest in each of ``regions``."""
    kept = {(item["region"], item["resource_id"], item["role"]) for item in left_in_ledger(emu, run)}
    assert kept == {(region, latest(emu, region, family), "image") for region in regions}


def assert_latest_valid_everywhere(emu: Emulator, family: str = "web") -> None:
    """Each Region's latest is absent, or names an image that is there and available."""
    for region in REGIONS:
        value = latest(emu, region, family)
        if value is not None:
            (image,) = emu.client("ec2", region).describe_images(ImageIds=[value])["Images"]
            assert image["State"] == "available", (region, value)


def told(emu: Emulator) -> dict[str, Any]:
    """The last summary the run's end announced on EventBridge."""
    entries = [entry for request in emu.world.sent("PutEvents") for entry in request.params["Entries"]]
    detail: dict[str, Any] = json.loads(entries[-1]["Detail"])
    return detail


def assert_told_and_tagged(emu: Emulator, run: str, instance_id: str, status: str, family: str = "web") -> None:
    """How every case ends: latest valid everywhere, the result on the instance, and people told."""
    assert_latest_valid_everywhere(emu, family)
    tags = instance_tags(emu, instance_id)
    assert (tags["ami-factory:last-run"], tags["ami-factory:last-status"]) == (run, status)
    assert "ami-factory:create" not in tags
    summary = told(emu)
    assert (summary["run_id"], summary["status"]) == (run, status)


def janitor_summaries(emu: Emulator) -> list[dict[str, Any]]:
    assert all("error" not in change for change in emu.status_changes), emu.status_changes
    return [summary for change in emu.status_changes for result in change["results"] for summary in result["ended"]]


# --- the instance is put back first --------------------------------------------------------------


def test_a_lost_stop_answer_still_restores_the_instance(emu: Emulator) -> None:
    """StopInstances takes effect, its answer is lost: the retried step sees `stopping`."""
    emu.world.lose_responses("StopInstances", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="lost-stop")
    assert result.status == "SUCCEEDED", result.cause
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert len(emu.world.sent("StartInstances")) == 1
    assert result.output["instance_state"] == "running"
    assert_told_and_tagged(emu, "lost-stop", instance_id, "SUCCEEDED")


def test_prepare_failing_after_the_stop_restores_the_instance(emu: Emulator) -> None:
    """The stop went through but its answer was lost, and the retried step fails for good: HandleFailure
    has no $.instance, and the ledger's record of the stop is what puts the instance back."""
    emu.world.lose_responses("StopInstances", times=1, region="us-east-1")
    emu.world.after_call("StopInstances", lambda: emu.world.refuse("DescribeInstances", times=1, region="us-east-1"))
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="half-prepared")
    assert result.status == "FAILED" and result.error == "ClientError", result.cause
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert instance_tags(emu, instance_id)["ami-factory:last-status"] == "FAILED"
    assert_nothing_of_the_run_left(emu, "half-prepared")
    assert_told_and_tagged(emu, "half-prepared", instance_id, "FAILED")


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "RequestLimitExceeded"])
def test_a_refused_clean_up_restores_first_keeps_the_error_and_the_janitor_finishes(emu: Emulator, code: str) -> None:
    emu.world.images_take(120)
    emu.world.images_fail("us-east-1")
    emu.world.refuse("DeregisterImage", times=1, code=code)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="refused")
    assert result.status == "FAILED" and result.error == "ImageFailedError", "the run keeps its own error"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    operations = [r.operation for r in emu.world.requests]
    assert operations.index("StartInstances") < operations.index("DeregisterImage"), "restore first"
    summary = told(emu)
    (left,) = summary["left_over"]
    assert "(image)" in left and code in left
    (janitor,) = janitor_summaries(emu)
    assert janitor["left_over"] == [] and len(janitor["cleaned_up"]) == 1
    assert_nothing_of_the_run_left(emu, "refused")
    assert_told_and_tagged(emu, "refused", instance_id, "FAILED")
    assert len(emu.world.sent("Publish")) == 1, "the run told once; the janitor only finished its clean-up"


def test_a_snapshot_delete_throttled_once_is_deleted_by_its_recorded_id(emu: Emulator) -> None:
    emu.world.images_take(120)
    emu.world.images_fail("us-east-1")
    emu.world.throttle("DeleteSnapshot", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="snapshot")
    assert result.status == "FAILED" and result.error == "ImageFailedError"
    (item,) = [i for i in ledger_items(emu) if i["pk"] == "run#snapshot" and i["sk"].startswith("made#")]
    assert item["snapshots"].startswith("snap-"), "recorded before the image was deregistered"
    assert_nothing_of_the_run_left(emu, "snapshot")
    assert_told_and_tagged(emu, "snapshot", instance_id, "FAILED")
    assert instance(emu, instance_id)["State"]["Name"] == "running"


# --- latest never dangles ------------------------------------------------------------------------


def test_protection_failing_leaves_latest_where_it_was(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    first = emu.run(sample("request-basic.json", instance_id=instance_id), name="first")
    assert first.output["status"] == "SUCCEEDED", first.cause
    before = {region: latest(emu, region) for region in REGIONS}
    emu.world.refuse("EnableImageDeregistrationProtection", times=10, region="eu-west-1")
    request = sample("request-basic.json", instance_id=instance_id, protection={"deregistration_protection": True})
    second = emu.run(request, name="second")
    assert second.output["status"] == "PARTIAL" and second.output["failed_regions"] == ["eu-west-1"]
    assert latest(emu, "eu-west-1") == before["eu-west-1"], "never moved to an incomplete image"
    assert run_images(emu, "eu-west-1", "second") == []
    assert latest(emu, "ap-southeast-2") == run_images(emu, "ap-southeast-2", "second")[0]["ImageId"]
    assert_latest_valid_everywhere(emu)
    assert_told_and_tagged(emu, "second", instance_id, "PARTIAL")


@pytest.mark.parametrize("cooldown", [False, True])
def test_a_failed_regions_protected_image_is_removed_at_once_or_after_its_cooldown(
    emu: Emulator, cooldown: bool
) -> None:
    emu.world.refuse("PutParameter", times=10, code="AccessDeniedException", region="eu-west-1")
    instance_id = emu.launch_instance(name="web")
    protection = {"deregistration_protection": True, "cooldown": cooldown}
    result = emu.run(sample("request-basic.json", instance_id=instance_id, protection=protection), name="guarded")
    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"]
    assert latest(emu, "eu-west-1") is None
    if not cooldown:
        assert result.output["left_over"] == []
        assert run_images(emu, "eu-west-1", "guarded") == []
    else:
        (left,) = result.output["left_over"]
        assert left.startswith("eu-west-1:ami-") and "deregistration protection" in left
        emu.world.calm()
        emu.clock.advance(86400 + 60)
        (sweep,) = emu.fire_scheduled_rule()
        (ended,) = sweep["ended"]
        assert ended["status"] == "PARTIAL" and len(ended["cleaned_up"]) == 1
    assert_only_delivered_left(emu, "guarded", ["us-east-1", "ap-southeast-2"])
    assert run_images(emu, "eu-west-1", "guarded") == []
    for region in ("us-east-1", "ap-southeast-2"):
        assert latest(emu, region) == run_images(emu, region, "guarded")[0]["ImageId"]
    assert_latest_valid_everywhere(emu)
    assert_told_and_tagged(emu, "guarded", instance_id, "PARTIAL")


# --- Finalize --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_finalize_that_never_ran_is_undone_by_the_janitor(make_emulator, encrypt: bool) -> None:
    emu = encrypting_emulator(make_emulator) if encrypt else make_emulator()
    if encrypt:
        create_keys(emu, users=["arn:aws:iam::111122223333:root"])
    emu.runtime.crash("FinalizeFunction", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, encrypt=encrypt), name="no-finalize")
    assert result.status == "FAILED" and result.error == "Runtime.ExitError"
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "FAILED" and janitor["error"] == "Runtime.ExitError"
    assert janitor["cause"] == "Runtime exited with error: signal: killed", "the execution's own cause, one line"
    assert len(janitor["cleaned_up"]) == (4 if encrypt else 3), "every Region's image, and the encrypt capture"
    assert_nothing_of_the_run_left(emu, "no-finalize")
    assert [latest(emu, region) for region in REGIONS] == [None, None, None], "rolled back: there was none"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    tags = instance_tags(emu, instance_id)
    assert tags["ami-factory:last-status"] == "FAILED" and tags["ami-factory:last-error"] == "Runtime.ExitError"
    assert told(emu)["status"] == "FAILED"
    assert_told_and_tagged(emu, "no-finalize", instance_id, "FAILED")


def test_an_undone_run_puts_the_previous_image_back_as_latest(emu: Emulator) -> None:
    """The family's latest named the last good run's image before this run moved it: undoing the run
    writes that image back (PutParameter from the ledger's record), in every Region."""
    instance_id = emu.launch_instance(name="web")
    good = emu.run(sample("request-basic.json", instance_id=instance_id), name="good")
    assert good.status == "SUCCEEDED", good.cause
    before = {region: latest(emu, region) for region in REGIONS}
    emu.runtime.crash("FinalizeFunction", times=1)
    assert emu.run(sample("request-basic.json", instance_id=instance_id), name="undone").status == "FAILED"
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "FAILED" and janitor["left_over"] == []
    assert {region: latest(emu, region) for region in REGIONS} == before
    assert all(image is not None for image in before.values())
    assert_nothing_of_the_run_left(emu, "undone")


def test_a_finalize_that_fails_after_recording_its_result_is_completed_by_the_janitor(emu: Emulator) -> None:
    """Finalize recorded what the run delivered, then could not go on (EventBridge kept throttling its
    announcement, past the step's retries): the janitor keeps the images and says the run succeeded."""
    emu.world.refuse("PutEvents", times=7, code="ThrottlingException")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="late")
    assert result.status == "FAILED" and result.error == "ThrottledError"
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "SUCCEEDED" and janitor["error"] is None
    assert janitor["image_name"] == "ami-factory-web-late" and janitor["instance_state"] == "running"
    delivered = {entry["region"]: (entry["status"], entry["image_id"]) for entry in janitor["regions"]}
    assert delivered == {region: ("AVAILABLE", run_images(emu, region, "late")[0]["ImageId"]) for region in REGIONS}
    for region in REGIONS:
        assert latest(emu, region) == run_images(emu, region, "late")[0]["ImageId"]
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert instance_tags(emu, instance_id)["ami-factory:last-status"] == "SUCCEEDED"
    assert_only_delivered_left(emu, "late", REGIONS)
    assert_told_and_tagged(emu, "late", instance_id, "SUCCEEDED")


# --- runs stopped where no Catch runs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "operation, request_name",
    [
        ("CreateImage", "request-basic.json"),
        ("CopyImage", "request-basic.json"),
        ("SendCommand", "request-generalize.json"),
    ],
    ids=["during the image wait", "during copies", "during sysprep"],
)
def test_a_stopped_execution_is_ended_by_the_janitor(emu: Emulator, operation: str, request_name: str) -> None:
    emu.world.images_take(1200)
    emu.world.generalize_takes(600)
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    stop_when(emu, operation, "stopped")
    result = emu.run(sample(request_name, instance_id=instance_id), name="stopped")
    assert result.status in ("ABORTED", "FAILED")
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "FAILED" and janitor["left_over"] == []
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert_nothing_of_the_run_left(emu, "stopped")
    assert_latest_valid_everywhere(emu)
    assert instance_tags(emu, instance_id)["ami-factory:last-status"] == "FAILED"
    assert told(emu)["run_id"] == "stopped"
    assert_told_and_tagged(emu, "stopped", instance_id, "FAILED")
    assert not [item for item in ledger_items(emu) if item["sk"] == "lock"], "the lock is released"


# --- scaffolding that will not go away ----------------------------------------------------------------


def test_a_clone_whose_termination_keeps_being_throttled_never_costs_the_image(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    emu.world.throttle("TerminateInstances", times=1000)
    result = emu.run(sample("request-generalize.json", instance_id=instance_id), name="sticky")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    (left,) = result.output["left_over"]
    assert "(clone)" in left and "ThrottledError" in left
    emu.world.calm()
    (sweep,) = emu.fire_scheduled_rule()
    assert [len(ended["cleaned_up"]) for ended in sweep["ended"]] == [1]
    delivered = [region["region"] for region in result.output["regions"]]
    assert_only_delivered_left(emu, "sticky", delivered, family="win2022-base")
    for region in result.output["regions"]:
        assert run_images(emu, region["region"], "sticky")[0]["State"] == "available"
    assert_told_and_tagged(emu, "sticky", instance_id, "SUCCEEDED", family="win2022-base")


def test_a_launch_check_whose_termination_keeps_being_throttled_never_fails_the_region(emu: Emulator) -> None:
    emu.world.throttle("TerminateInstances", times=1000, region="ap-southeast-2")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_check=True), name="checked")
    assert result.output["status"] == "SUCCEEDED", result.output
    (left,) = result.output["left_over"]
    assert left.startswith("ap-southeast-2:i-") and "(launch-check)" in left
    emu.world.calm()
    emu.fire_scheduled_rule()
    checks = emu.client("ec2", "ap-southeast-2").describe_instances(
        Filters=[{"Name": "tag:ami-factory:role", "Values": ["launch-check"]}]
    )["Reservations"]
    assert [i["State"]["Name"] for r in checks for i in r["Instances"]] == ["terminated"]
    assert_told_and_tagged(emu, "checked", instance_id, "SUCCEEDED")


def test_an_unexpected_crash_in_a_wait_fails_the_run_cleanly(emu: Emulator) -> None:
    emu.runtime.crash("WatchImageFunction", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="crash")
    assert result.status == "FAILED" and result.error == "Runtime.ExitError"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert_nothing_of_the_run_left(emu, "crash")
    assert told(emu)["status"] == "FAILED"
    assert_told_and_tagged(emu, "crash", instance_id, "FAILED")


def test_an_image_someone_else_deregistered_mid_run_fails_the_run_and_is_settled_as_removed(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    ec2 = emu.client("ec2")
    emu.world.after_call(
        "CreateImage", lambda: ec2.deregister_image(ImageId=run_images(emu, "us-east-1", "gone")[0]["ImageId"])
    )
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="gone")
    assert result.status == "FAILED"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    (removed,) = told(emu)["cleaned_up"]
    assert removed.startswith("us-east-1:ami-") and told(emu)["left_over"] == []
    assert_nothing_of_the_run_left(emu, "gone")


# --- the emulator starts executions as Step Functions does ---------------------------------------------


def test_an_execution_without_a_name_gets_one_and_input_that_is_not_json_is_refused(emu: Emulator) -> None:
    sfn = emu.client("stepfunctions")
    instance_id = emu.launch_instance(name="web")
    started = sfn.start_execution(
        stateMachineArn=emu.state_machine_arn, input=json.dumps({"instance_id": instance_id, "regions": []})
    )
    assert len(started["executionArn"].rsplit(":", 1)[1]) >= 32
    assert emu.wait(started["executionArn"]).status == "SUCCEEDED"
    with pytest.raises(ClientError) as refused:
        sfn.start_execution(stateMachineArn=emu.state_machine_arn, name="not-json", input="{instance_id: i-1}")
    assert refused.value.response["Error"]["Code"] == "InvalidExecutionInput"


def test_a_run_that_outgrows_its_history_fails_with_no_catch_and_the_janitor_ends_it(emu: Emulator) -> None:
    """The emulator holds executions to the history quota, as Step Functions does (lowered here so a
    short run reaches it): the run fails where no Catch runs, and the janitor ends it."""
    emu.history_quota = 120
    emu.world.clones_take_to_register(3600)  # a clone polled every minute until SSM reaches it
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, "Linux")
    result = emu.run({"instance_id": instance_id, "regions": [], "mode": "generalize"}, name="too-long")
    assert result.status == "FAILED" and result.error == "States.Runtime"
    assert "reached 120 events, the Step Functions quota" in (result.cause or "")
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "FAILED" and janitor["left_over"] == []
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert_nothing_of_the_run_left(emu, "too-long")
    assert_told_and_tagged(emu, "too-long", instance_id, "FAILED")


# --- what the janitor and a late task could do to each other ----------------------------------------


def scheduled_payload(result: Any, function: str) -> dict[str, Any]:
    """The input Step Functions sent a task of the run (its last invocation of ``function``)."""
    scheduled = [
        json.loads(event["taskScheduledEventDetails"]["parameters"])
        for event in result.history
        if event["type"] == "TaskScheduled"
        and f"-{function}Function" in event["taskScheduledEventDetails"]["parameters"]
    ]
    payload: dict[str, Any] = scheduled[-1]["Payload"]
    return payload


def test_a_finalize_that_runs_after_the_janitor_does_nothing(make_emulator) -> None:
    """The execution was stopped during Finalize, whose Lambda went on: the janitor ended the run first,
    so the late Finalize neither keeps nor announces anything."""
    emu = make_emulator()
    emu.runtime.crash("FinalizeFunction", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="raced")
    (janitor,) = janitor_summaries(emu)
    assert janitor["status"] == "FAILED"
    late = invoke_error(emu, "Finalize", scheduled_payload(result, "Finalize"))
    assert late["errorType"] == "RunEndedError"
    assert_nothing_of_the_run_left(emu, "raced")
    assert_told_and_tagged(emu, "raced", instance_id, "FAILED")
    assert len(emu.world.sent("PutEvents")) == 1, "one ending, told once"


def test_a_task_that_finishes_after_the_janitor_leaves_nothing_the_sweep_misses(emu: Emulator) -> None:
    """A task of a stopped execution whose Lambda outlives it (here a launch check started late) records
    what it made after the janitor ended the run: the sweep removes it."""
    emu.world.images_take(1200)
    instance_id = emu.launch_instance(name="web")
    stop_when(emu, "CopyImage", "late-task")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="late-task")
    assert result.status in ("ABORTED", "FAILED")
    assert_nothing_of_the_run_left(emu, "late-task")
    image_id = instance(emu, instance_id)["ImageId"]
    # The launch check may launch only the tool's own images (its role's condition): this one plays one.
    emu.client("ec2").create_tags(Resources=[image_id], Tags=[{"Key": "ami-factory:managed", "Value": "true"}])
    base = {"region": "us-east-1", "image_id": image_id}
    late = invoke(emu, "StartLaunchCheck", {"run_id": "late-task", "image": base})
    assert [item["resource_id"] for item in left_in_ledger(emu, "late-task")] == [late["instance_id"]]
    (sweep,) = emu.fire_scheduled_rule()
    assert [ended["cleaned_up"] for ended in sweep["ended"]] == [[f"us-east-1:{late['instance_id']}"]]
    assert_nothing_of_the_run_left(emu, "late-task")
    assert len(emu.world.sent("Publish")) == 1, "the run was told once, by the janitor"


def test_an_instance_its_owner_stops_after_the_run_stays_stopped_through_every_sweep(emu: Emulator) -> None:
    """The run put the instance back once; a later sweep (here for an image in its protection cooldown)
    never starts it again."""
    emu.world.refuse("PutParameter", times=10, code="AccessDeniedException", region="eu-west-1")
    instance_id = emu.launch_instance(name="web")
    protection = {"deregistration_protection": True, "cooldown": True}
    result = emu.run(sample("request-basic.json", instance_id=instance_id, protection=protection), name="owned")
    assert result.output["status"] == "PARTIAL" and len(result.output["left_over"]) == 1
    emu.client("ec2").stop_instances(InstanceIds=[instance_id])
    emu.world.calm()
    emu.clock.advance(86400 + 60)
    (sweep,) = emu.fire_scheduled_rule()
    assert [len(ended["cleaned_up"]) for ended in sweep["ended"]] == [1]
    assert instance(emu, instance_id)["State"]["Name"] == "stopped", "the owner's stop stands"
    assert len(emu.world.sent("StartInstances")) == 1


def test_a_rollback_that_is_refused_keeps_the_image_latest_still_names(make_emulator) -> None:
    """latest is never left naming a removed image: where it cannot be rolled back yet, its image
    stays (listed as left), and the sweep finishes both once the refusal is over."""
    emu = make_emulator()
    emu.runtime.crash("FinalizeFunction", times=1)
    emu.world.after_call(
        "PutParameter",
        lambda: emu.world.refuse("DeleteParameter", times=10, code="AccessDeniedException", region="eu-west-1"),
    )
    instance_id = emu.launch_instance(name="web")
    emu.run(sample("request-basic.json", instance_id=instance_id), name="pinned")
    (janitor,) = janitor_summaries(emu)
    assert sorted(left.split(" ")[0] for left in janitor["left_over"]) == [
        "eu-west-1:/ami-factory/web/latest",
        f"eu-west-1:{latest(emu, 'eu-west-1')}",
    ]
    assert_latest_valid_everywhere(emu)
    emu.world.calm()
    emu.fire_scheduled_rule()
    assert_nothing_of_the_run_left(emu, "pinned")
    assert [latest(emu, region) for region in REGIONS] == [None, None, None]


def test_an_execution_reusing_an_earlier_runs_name_inherits_nothing(emu: Emulator) -> None:
    """Step Functions allows a name again 90 days after its execution: the earlier run's ledger records
    (what it made, the parameters it moved, the instance it stopped) are never the new run's."""
    owner = emu.launch_instance(name="db", state="stopped")
    old_image = emu.client("ec2").create_image(InstanceId=owner, Name="db-image")["ImageId"]
    table = "ami-factory-local-LedgerTable"
    earlier = {"pk": "run#nightly", "started": "2026-08-01T03:00:00+00:00", "instance_id": owner}
    for item in (
        {
            **earlier,
            "sk": "run",
            "region": "us-east-1",
            "image_name": "db",
            "ended": "true",
            "finalizing": "true",
            "delivered": "",
            "settled": "true",
        },
        {"pk": "run#nightly", "sk": f"made#us-east-1#{old_image}", "region": "us-east-1", "kind": "image"},
        {"pk": "run#nightly", "sk": f"stop#us-east-1#{owner}", "region": "us-east-1", "instance_id": owner},
    ):
        defaults = {"resource_id": old_image, "role": "image", "removed": "false", "settled": "false"}
        full = {**defaults, "original_state": "running", **item}
        emu.client("dynamodb").put_item(TableName=table, Item={k: {"S": v} for k, v in full.items()})
    emu.world.images_fail()
    victim_of_nothing = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=victim_of_nothing), name="nightly")
    assert result.status == "FAILED" and result.error == "RunNameTakenError"
    assert "execution name nightly was the name of an earlier run (started 2026-08-01" in result.cause
    assert instance(emu, owner)["State"]["Name"] == "stopped", "the earlier run's stop is not this run's to undo"
    assert emu.client("ec2").describe_images(ImageIds=[old_image])["Images"], "its image is not this run's"
    assert emu.world.sent("StartInstances") == [] and emu.world.sent("DeregisterImage") == []
    assert len(emu.world.sent("StopInstances")) == 1 and len(emu.world.sent("CreateImage")) == 1, "the test's own"


def test_a_run_whose_status_change_never_reached_the_janitor_is_ended_by_the_sweep(emu: Emulator) -> None:
    """The janitor crashed on the event (or EventBridge gave up): the hourly sweep ends the run, with the
    error its execution left unsaid; a run already settled is left alone by both."""
    emu.runtime.crash("EndRunFunction", times=1)
    emu.runtime.crash("FinalizeFunction", times=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="missed")
    assert result.status == "FAILED" and "Runtime.ExitError" in emu.status_changes[0]["error"]
    assert left_in_ledger(emu, "missed"), "nothing ended the run yet"
    (sweep,) = emu.fire_scheduled_rule()
    (ended,) = sweep["ended"]
    assert (ended["status"], ended["error"]) == ("FAILED", "ExecutionFailed") and len(ended["cleaned_up"]) == 3
    assert_nothing_of_the_run_left(emu, "missed")
    assert_told_and_tagged(emu, "missed", instance_id, "FAILED")
    assert emu.fire_scheduled_rule() == [{"ended": []}], "settled: the next sweep finds nothing"
    change = {**emu.status_changes[0]["event"], "detail": {**emu.status_changes[0]["event"]["detail"]}}
    assert invoke(emu, "EndRun", change) == {"ended": []}, "nor does a late status change"


def test_the_sweep_goes_on_past_a_run_it_cannot_end_and_ends_it_next_time(emu: Emulator) -> None:
    emu.runtime.crash("EndRunFunction", times=2)
    emu.runtime.crash("FinalizeFunction", times=2)
    for name in ("missed-1", "missed-2"):
        instance_id = emu.launch_instance(name=name)
        assert emu.run(sample("request-basic.json", instance_id=instance_id), name=name).status == "FAILED"
    emu.world.refuse("DescribeExecution", times=1, code="AccessDeniedException")  # the first run's look
    (sweep,) = emu.fire_scheduled_rule()
    (ended,) = sweep["ended"]
    (later,) = emu.fire_scheduled_rule()[0]["ended"]
    assert {ended["run_id"], later["run_id"]} == {"missed-1", "missed-2"}
    for name in ("missed-1", "missed-2"):
        assert_nothing_of_the_run_left(emu, name)


def test_a_family_taken_between_preflight_and_publish_is_refused_at_publish_naming_both(emu: Emulator) -> None:
    """The owner check runs again where latest moves: a publish for another instance (a family claimed
    by a run that started in between) is refused with who owns it and who asked, and latest stays."""
    owner = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=owner, regions=[]), name="owner-run")
    assert result.status == "SUCCEEDED", result.cause
    other = emu.launch_instance(name="web")
    payload = {**scheduled_payload(result, "PublishParameter"), "instance_id": other}
    refused = invoke_error(emu, "PublishParameter", payload)
    assert refused["errorType"] == "FamilyOwnedError"
    assert refused["errorMessage"].startswith(
        f"image family web belongs to instance {owner} (us-east-1, account 123456789012); {other} may not move"
    )
    assert latest(emu, "us-east-1") == payload["image"]["image_id"]


def test_createimage_whose_answer_the_sdk_lost_is_found_by_its_token_not_refused_as_anothers(
    monkeypatch: pytest.MonkeyPatch, make_emulator: Any
) -> None:
    """Deployed, boto3 retries a call whose answer was lost: CreateImage made the image, and the SDK's
    retry is refused for the name. The image carries the run's create token, so it is the run's own:
    adopted and recorded (not refused as another's, and not left behind unrecorded)."""
    from ami_factory_local import emulator

    monkeypatch.setitem(emulator.EMULATOR_ENVIRONMENT, "SDK_MAX_ATTEMPTS", "2")
    emu: Emulator = make_emulator()
    emu.world.lose_responses("CreateImage", times=1, region="us-east-1")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="sdk-retry")
    assert result.output["status"] == "SUCCEEDED", result.cause
    assert len(emu.world.sent("CreateImage")) == 2, "the SDK's retry reached EC2, which refused the name"
    (image,) = run_images(emu, "us-east-1", "sdk-retry")
    assert result.output["regions"][0]["image_id"] == image["ImageId"]
    recorded = {item.get("resource_id") for item in ledger_items(emu)}
    assert image["ImageId"] in recorded


def test_createimage_whose_answer_the_sdk_lost_waits_for_its_image_to_be_listed(
    monkeypatch: pytest.MonkeyPatch, make_emulator: Any
) -> None:
    """The SDK's retry is refused for the name while the image is not listed by name yet (EC2's
    eventual consistency): the step is retried, and then finds its own image by name and token."""
    from ami_factory_local import emulator

    monkeypatch.setitem(emulator.EMULATOR_ENVIRONMENT, "SDK_MAX_ATTEMPTS", "2")
    emu: Emulator = make_emulator()
    emu.world.lose_responses("CreateImage", times=1, region="us-east-1")
    emu.world.hide_new_images(describes=1)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="sdk-unlisted")
    assert result.output["status"] == "SUCCEEDED", result.cause
    (image,) = run_images(emu, "us-east-1", "sdk-unlisted")
    assert image["ImageId"] in {item.get("resource_id") for item in ledger_items(emu)}
    assert len(emu.world.sent("CreateImage")) == 2
