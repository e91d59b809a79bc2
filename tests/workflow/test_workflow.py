"""The real ASL from template.yaml, run by moto's interpreter, calling the real handlers; the
assertions read moto's end state (images, launch permissions, parameters, instance state, tags)."""

from __future__ import annotations

import json

import pytest

from ami_factory_local import Emulator
from tests.helpers import ALLOWED_ACCOUNT, ALLOWED_OU, OTHER_ACCOUNT, REGIONS, instance, run_images, sample, tags


def assert_nothing_left(emu: Emulator, run_id: str) -> None:
    for region in REGIONS:
        assert run_images(emu, region, run_id) == [], f"images of {run_id} left in {region}"
        snapshots = emu.client("ec2", region).describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": "tag:ami-factory:run", "Values": [run_id]}]
        )["Snapshots"]
        assert snapshots == [], f"snapshots of {run_id} left in {region}"


def test_happy_path_three_regions_shared_published_and_instance_running(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="happy")

    assert result.status == "SUCCEEDED", result.cause
    assert result.output["status"] == "SUCCEEDED"
    assert [r["region"] for r in result.output["regions"]] == REGIONS
    for region in REGIONS:
        (image,) = run_images(emu, region, "happy")
        assert image["State"] == "available"
        assert image["Name"] == "ami-factory-web-happy"
        assert tags(image)["ami-factory:source-instance"] == instance_id
        permissions = emu.client("ec2", region).describe_image_attribute(
            ImageId=image["ImageId"], Attribute="launchPermission"
        )["LaunchPermissions"]
        assert permissions == [{"UserId": ALLOWED_ACCOUNT}]
        parameter = emu.client("ssm", region).get_parameter(Name="/ami-factory/web/latest")["Parameter"]
        assert parameter["Value"] == image["ImageId"]
        assert parameter["DataType"] == "aws:ec2:image"
        (snapshot_id,) = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
        (snapshot,) = emu.client("ec2", region).describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        assert tags(snapshot)["ami-factory:run"] == "happy", "snapshots carry the tool's tags too"
    source = instance(emu, instance_id)
    assert source["State"]["Name"] == "running"
    assert tags(source)["ami-factory:last-status"] == "SUCCEEDED"
    assert tags(source)["ami-factory:last-error"] == ""
    assert tags(source)["ami-factory:last-image-id"] == run_images(emu, "us-east-1", "happy")[0]["ImageId"]
    assert emu.world.sent("StopInstances") and emu.world.sent("StartInstances")


def test_a_slow_image_is_waited_for_until_ec2_says_it_is_available(emu: Emulator) -> None:
    emu.world.images_take(45 * 60)
    instance_id = emu.launch_instance()
    result = emu.run({"instance_id": instance_id, "regions": []}, name="slow")
    assert result.status == "SUCCEEDED", result.cause
    entered = [e["stateEnteredEventDetails"]["name"] for e in result.history if "stateEnteredEventDetails" in e]
    assert entered.count("WaitForImage") == 1, "one wait, ended by EC2's event: no polling"
    assert 45 * 60 <= emu.clock.elapsed() <= 45 * 60 + 60, "the run goes on as soon as the event comes"
    # One look when EC2's event comes (the event is a reason to look), and Finalize's (the image's size,
    # for the cost): the first attempt at CreateImage looks nothing up by name, and the image it made a
    # moment ago is not looked at before its event can have come.
    assert [request.params for request in emu.world.sent("DescribeImages")] == [
        {"ImageIds": [run_images(emu, "us-east-1", "slow")[0]["ImageId"]]}
    ] * 2
    assert run_images(emu, "us-east-1", "slow")[0]["State"] == "available"


def test_instance_that_takes_time_to_stop_is_waited_for(emu: Emulator) -> None:
    emu.world.instances_take_to_stop(150)
    instance_id = emu.launch_instance()
    result = emu.run({"instance_id": instance_id, "regions": []}, name="stopping")
    assert result.status == "SUCCEEDED", result.cause
    names = [e["stateEnteredEventDetails"]["name"] for e in result.history if e["type"] == "TaskStateEntered"]
    assert names.count("WaitForInstanceStop") == 1, "one wait, ended by EC2's event: no polling"
    assert names.index("CreateImage") > names.index("WaitForInstanceStop")
    (stopped,) = [out for name, out in emu.runtime.results if name.endswith("SettleWaitFunction")][:1]
    assert stopped["resource_id"] == instance_id and stopped["state"] == "stopped" and stopped["ended"] is True
    assert instance(emu, instance_id)["State"]["Name"] == "running"


def test_an_instance_that_never_finishes_stopping_times_out_and_is_started_once_it_has_stopped(make_emulator) -> None:
    emu = make_emulator(MaxWaitSeconds="300")
    emu.world.instances_take_to_stop(400)  # longer than the wait allows, shorter than the restore retries
    instance_id = emu.launch_instance()
    result = emu.run({"instance_id": instance_id, "regions": []}, name="slow-stop")
    assert result.status == "FAILED" and result.error == "WaitTimeoutError"
    assert "still stopping" in result.cause_message
    assert instance(emu, instance_id)["State"]["Name"] == "running", "no instance is left stopped"
    assert emu.world.sent("CreateImage") == []


def test_no_reboot_mode_never_stops_the_instance(emu: Emulator) -> None:
    instance_id = emu.launch_instance()
    result = emu.run(sample("request-no-reboot.json", instance_id=instance_id, regions=[]), name="noreboot")
    assert result.status == "SUCCEEDED", result.cause
    assert emu.world.sent("StopInstances") == []
    (create,) = emu.world.sent("CreateImage")
    assert create.params["NoReboot"] is True
    (image,) = run_images(emu, "us-east-1", "noreboot")
    assert image["Name"] == "ami-factory-web-server-noreboot"
    assert tags(image)["team"] == "platform"


def test_stopped_instance_stays_stopped(emu: Emulator) -> None:
    instance_id = emu.launch_instance(state="stopped")
    result = emu.run({"instance_id": instance_id, "regions": []}, name="stays-stopped")
    assert result.status == "SUCCEEDED", result.cause
    assert instance(emu, instance_id)["State"]["Name"] == "stopped"
    assert emu.world.sent("StartInstances") == []


def test_failed_image_cleans_up_and_restores_the_instance(emu: Emulator) -> None:
    emu.world.images_take(120)
    emu.world.images_fail("us-east-1")
    instance_id = emu.launch_instance()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="broken")
    assert result.status == "FAILED"
    assert result.error == "ImageFailedError"
    assert "failed" in result.cause
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert tags(instance(emu, instance_id))["ami-factory:last-error"] == "ImageFailedError"
    assert len(emu.world.sent("DeregisterImage")) == 1
    assert_nothing_left(emu, "broken")
    assert emu.world.sent("CopyImage") == []


def test_wait_beyond_the_maximum_is_a_timeout_and_restores_the_instance(make_emulator) -> None:
    emu = make_emulator(MaxWaitSeconds="600")
    emu.world.images_never_ready()
    instance_id = emu.launch_instance()
    result = emu.run({"instance_id": instance_id, "regions": ["eu-west-1"]}, name="forever")
    assert result.status == "FAILED"
    assert result.error == "WaitTimeoutError"
    assert "MaxWaitSeconds" in result.cause
    assert emu.clock.elapsed() == pytest.approx(600, abs=120)
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert_nothing_left(emu, "forever")


def test_one_region_failing_does_not_sink_the_others(emu: Emulator) -> None:
    emu.world.images_take(300)
    emu.world.images_fail("ap-southeast-2")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="partial")
    assert result.status == "SUCCEEDED", result.cause
    summary = result.output
    assert summary["status"] == "PARTIAL"
    assert summary["failed_regions"] == ["ap-southeast-2"]
    failed = next(r for r in summary["regions"] if r["region"] == "ap-southeast-2")
    assert failed["error"]["Error"] == "ImageFailedError"
    assert run_images(emu, "ap-southeast-2", "partial") == [], "the failed copy is cleaned up"
    for region in ("us-east-1", "eu-west-1"):
        assert run_images(emu, region, "partial")[0]["State"] == "available"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert tags(instance(emu, instance_id))["ami-factory:last-status"] == "PARTIAL"
    assert (
        tags(instance(emu, instance_id))["ami-factory:last-image-id"]
        == run_images(emu, "us-east-1", "partial")[0]["ImageId"]
    )


def test_every_region_failing_fails_the_run_and_removes_its_images(emu: Emulator) -> None:
    emu.world.throttle("ModifyImageAttribute", times=1000)  # sharing never gets through, in any Region
    instance_id = emu.launch_instance()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="all-fail")
    assert result.status == "FAILED"
    assert result.error == "AllRegionsFailedError"
    assert "ThrottledError" in result.cause
    assert_nothing_left(emu, "all-fail")
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert tags(instance(emu, instance_id))["ami-factory:last-status"] == "FAILED"


def test_throttling_and_eventual_consistency_are_retried_with_one_image_per_region(emu: Emulator) -> None:
    emu.world.throttle("CopyImage", times=2)
    emu.world.hide_new_images(describes=2)
    instance_id = emu.launch_instance()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="bumpy")
    assert result.status == "SUCCEEDED", result.cause
    assert result.output["status"] == "SUCCEEDED"
    for region in REGIONS:
        assert len(run_images(emu, region, "bumpy")) == 1, f"one image in {region}"
    errors = [
        json.loads(e["taskFailedEventDetails"]["cause"])["errorType"]
        for e in result.history
        if e["type"] == "TaskFailed"
    ]
    assert errors.count("ThrottledError") == 2 * 2, "two throttled CopyImage calls in each of the two copy Regions"
    assert "ImageNotVisibleYetError" not in errors, "an image not visible yet is waited for (its event), not retried"
    assert len(emu.world.sent("CreateImage")) == 1
    for region in ("eu-west-1", "ap-southeast-2"):
        copies = emu.world.sent("CopyImage", region)
        tokens = {copy.params["ClientToken"] for copy in copies}
        assert len(tokens) == 1, "retries reuse the same ClientToken"


def test_steps_retried_after_their_work_was_done_make_no_second_image(emu: Emulator) -> None:
    """The call reaches EC2 but its answer is lost: the retried step must find what it made."""
    emu.world.lose_responses("CreateImage", times=1)
    emu.world.lose_responses("CopyImage", times=1, region="eu-west-1")
    instance_id = emu.launch_instance()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="lost")
    assert result.status == "SUCCEEDED", result.cause
    assert len(emu.world.sent("CreateImage")) == 1, "the retry found the image by its name"
    for region in REGIONS:
        assert len(run_images(emu, region, "lost")) == 1, f"one image in {region}"
    failures = [e for e in result.history if e["type"] == "TaskFailed"]
    assert len(failures) == 2


def test_two_runs_for_one_instance_at_once_one_wins_and_the_other_touches_nothing(emu: Emulator) -> None:
    """Two console runs at once, whatever their names: the instance's lock in the ledger settles it."""
    emu.world.images_take(600)
    instance_id = emu.launch_instance()
    first = emu.start_run({"instance_id": instance_id, "regions": []}, name="nightly")
    second = emu.start_run({"instance_id": instance_id, "regions": []}, name="ad-hoc")
    runs = sorted([emu.wait(first), emu.wait(second)], key=lambda run: run.status, reverse=True)
    winner, loser = runs
    assert winner.status == "SUCCEEDED", winner.cause
    assert loser.status == "FAILED" and loser.error == "RunInProgressError"
    assert f"being imaged by run {winner.name} " in loser.cause_message
    assert len(emu.world.sent("CreateImage")) == 1
    assert len(emu.world.sent("StopInstances")) == 1


SIXTEEN_REGIONS = [
    *REGIONS,
    *("eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "ap-southeast-1", "ap-northeast-1", "ap-northeast-2"),
    *("ap-south-1", "sa-east-1", "ca-central-1", "us-east-2", "us-west-1", "us-west-2"),
]
BAD_REQUESTS = [
    ("unknown instance", {"instance_id": "i-0000000000000dead"}, "InstanceNotFoundError", "does not exist"),
    ("malformed account", {"share": {"accounts": ["1234"]}}, "InvalidRequestError", "share.accounts.0"),
    ("account not allowed", {"share": {"accounts": [OTHER_ACCOUNT]}}, "ShareTargetNotAllowedError", OTHER_ACCOUNT),
    (
        "OU not allowed",
        {"share": {"organizational_units": [ALLOWED_OU.replace("ou-ab12", "ou-zz99")]}},
        "ShareTargetNotAllowedError",
        "AllowedShareOUs",
    ),
    ("public not allowed", {"share": {"public": True}}, "PublicSharingBlockedError", "AllowPublicSharing"),
    ("unknown region", {"regions": ["eu-west-9"]}, "UnknownRegionError", "eu-west-9"),
    ("unknown field", {"regoins": ["eu-west-1"]}, "InvalidRequestError", "regoins"),
    ("control character", {"description": "a\u0010b"}, "InvalidRequestError", "description: contains the control"),
    ("control character in a tag", {"tags": {"team": "a\u0007"}}, "InvalidRequestError", "tag 'team' contains"),
    ("45 tags", {"tags": {f"k{n}": "v" for n in range(45)}}, "InvalidRequestError", "45 tags: at most 40"),
    ("long tag key", {"tags": {"k" * 129: "v"}}, "InvalidRequestError", "must be 1 to 128 characters"),
    ("long tag value", {"tags": {"k": "v" * 257}}, "InvalidRequestError", "is 257 characters: at most 256"),
    ("reserved prefix behind a space", {"tags": {" aws:x": "v"}}, "InvalidRequestError", "are reserved"),
    ("reserved prefix in capitals", {"tags": {"AMI-Factory:x": "v"}}, "InvalidRequestError", "are reserved"),
    ("16 Regions", {"regions": SIXTEEN_REGIONS[1:]}, "InvalidRequestError", "16 Regions (the stack's us-east-1"),
]


@pytest.mark.parametrize("label, change, error, message", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_fail_fast_and_touch_nothing(
    emu: Emulator, label: str, change: dict, error: str, message: str
) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", **{"instance_id": instance_id, **change}), name="bad")
    assert result.status == "FAILED"
    assert result.error == error
    assert message in result.cause_message
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert tags(instance(emu, instance_id)) == {"Name": "web"}, "the instance is untouched"
    mutating = {op for op in emu.world.calls("ec2") if not op.startswith("Describe")} - {
        "RunInstances",
        "RegisterImage",
    }
    assert mutating == set(), f"a bad request must change nothing, sent {mutating}"
    entered = [e["stateEnteredEventDetails"]["name"] for e in result.history if e["type"] == "TaskStateEntered"]
    assert entered == ["ResolveRequest"]
    assert result.cause == result.cause_message and "stackTrace" not in result.cause, "the one-line message"


@pytest.mark.parametrize("payload", [[], 42, None, "text", [{"instance_id": "i-0123456789abcdef0"}]])
def test_input_that_is_not_an_object_is_an_invalid_request(emu: Emulator, payload: object) -> None:
    sfn = emu.client("stepfunctions")
    arn = sfn.start_execution(stateMachineArn=emu.state_machine_arn, name="not-an-object", input=json.dumps(payload))
    result = emu.wait(arn["executionArn"])
    assert (result.status, result.error) == ("FAILED", "InvalidRequestError"), result.cause
    assert result.cause.startswith("the execution input must be a JSON object (an ImagingRequest), not ")


def test_instance_store_root_is_refused(emu: Emulator) -> None:
    instance_id = emu.launch_instance()
    emu.world.set_root_device_type("us-east-1", instance_id, "instance-store")
    result = emu.run({"instance_id": instance_id}, name="ephemeral")
    assert result.status == "FAILED"
    assert result.error == "UnsupportedInstanceError"
    assert "EBS" in result.cause_message
    assert emu.world.sent("StopInstances") == [] and emu.world.sent("CreateImage") == []


def test_forty_tags_with_everything_ami_factory_adds_fit_ec2s_fifty(emu: Emulator) -> None:
    """The request's tag limit leaves room for the tool's own: the world refuses a 51st, as EC2 does."""
    instance_id = emu.launch_instance(name="web")
    many = {f"team-{n}": "platform" for n in range(40)}
    request = sample("request-basic.json", instance_id=instance_id, tags=many, retention={"keep_newest": 3})
    result = emu.run(request, name="tagged")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    for region in REGIONS:
        (image,) = run_images(emu, region, "tagged")
        assert 40 < len(image["Tags"]) <= 50
