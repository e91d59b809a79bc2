"""Windows fast launch: turned on per Region for the run's image, and always turned off before an
image is removed (the world refuses to deregister an image with fast launch on)."""

from __future__ import annotations

from ami_factory_local import Emulator
from tests.helpers import nothing_was_changed, run_images


def windows_instance(emu: Emulator) -> str:
    instance_id = emu.launch_instance(name="win")
    emu.world.set_platform("us-east-1", instance_id, "windows")
    return instance_id


def test_fast_launch_is_turned_on_in_the_regions_asked(emu: Emulator) -> None:
    instance_id = windows_instance(emu)
    request = {
        "instance_id": instance_id,
        "regions": ["eu-west-1", "ap-southeast-2"],
        "fast_launch": [{"region": "eu-west-1", "snapshot_count": 10, "max_parallel_launches": 8}],
    }

    result = emu.run(request, name="fast")

    assert result.output["status"] == "SUCCEEDED", result.cause
    by_region = {r["region"]: r for r in result.output["regions"]}
    assert by_region["eu-west-1"]["fast_launch"] == "enabling"
    assert by_region["ap-southeast-2"]["fast_launch"] is None and by_region["us-east-1"]["fast_launch"] is None
    (image,) = run_images(emu, "eu-west-1", "fast")
    assert emu.world.fast_launch == {
        image["ImageId"]: {
            "ImageId": image["ImageId"],
            "ResourceType": "snapshot",
            "SnapshotConfiguration": {"TargetResourceCount": 10},
            "MaxParallelLaunches": 8,
            "State": "enabled",
        }
    }


def test_a_region_that_fails_turns_fast_launch_off_before_its_image_goes(emu: Emulator) -> None:
    instance_id = windows_instance(emu)
    emu.world.refuse("PutParameter", 1, region="eu-west-1")  # after fast launch is on
    request = {"instance_id": instance_id, "regions": ["eu-west-1"], "fast_launch": [{"region": "eu-west-1"}]}

    result = emu.run(request, name="fast-fail")

    assert result.output["status"] == "PARTIAL", result.cause
    assert result.output["left_over"] == []
    assert run_images(emu, "eu-west-1", "fast-fail") == []
    assert emu.world.fast_launch == {}
    assert [r.region for r in emu.world.sent("DisableFastLaunch")] == ["eu-west-1"]


def test_fast_launch_for_a_linux_instance_is_refused_before_anything_changes(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    request = {"instance_id": instance_id, "regions": ["eu-west-1"], "fast_launch": [{"region": "eu-west-1"}]}
    result = emu.run(request, name="linux")
    assert result.status == "FAILED" and result.error == "InvalidRequestError", result.cause
    assert "fast_launch is Windows fast launch, and instance" in result.cause_message
    nothing_was_changed(emu)


def test_fast_launch_in_a_region_the_run_does_not_copy_to_is_refused_by_name(emu: Emulator) -> None:
    instance_id = windows_instance(emu)
    request = {
        "instance_id": instance_id,
        "regions": ["eu-west-1"],
        "fast_launch": [{"region": "eu-west-1"}, {"region": "ap-southeast-2"}],
    }
    result = emu.run(request, name="elsewhere")
    assert result.status == "FAILED" and result.error == "InvalidRequestError", result.cause
    assert "fast_launch names ['ap-southeast-2'], which this run does not distribute to" in result.cause_message
    nothing_was_changed(emu)
