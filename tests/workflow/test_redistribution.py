"""Re-running what failed: a request with source_image_id distributes an image an earlier run
delivered to the Regions named, and never touches the instance (no stop, no tag, no lock)."""

from __future__ import annotations

from typing import Any

from ami_factory_local import Emulator
from tests.helpers import (
    ALLOWED_ACCOUNT,
    create_keys,
    encrypting_emulator,
    instance_tags,
    launch_tagged,
    run_images,
    sample,
    tag_event,
)

FAMILY_PARAMETER = "/ami-factory/web/latest"


def partial_run(emu: Emulator, instance_id: str, name: str = "partial") -> dict[str, Any]:
    """A run whose ap-southeast-2 copy EC2 refuses: PARTIAL, eu-west-1 and the stack's Region delivered."""
    emu.world.refuse("CopyImage", 1, region="ap-southeast-2")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name=name)
    assert result.status == "SUCCEEDED" and result.output["status"] == "PARTIAL", result.cause
    assert result.output["failed_regions"] == ["ap-southeast-2"]
    summary: dict[str, Any] = result.output
    return summary


def image_in(summary: dict[str, Any], region: str) -> str:
    (image_id,) = [r["image_id"] for r in summary["regions"] if r["region"] == region and r["status"] == "AVAILABLE"]
    return str(image_id)


def latest(emu: Emulator, region: str) -> str | None:
    try:
        value: str = emu.client("ssm", region).get_parameter(Name=FAMILY_PARAMETER)["Parameter"]["Value"]
    except emu.client("ssm", region).exceptions.ParameterNotFound:
        return None
    return value


def test_a_partial_run_is_redistributed_to_its_failed_region_without_touching_the_instance(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    summary = partial_run(emu, instance_id)
    source = image_in(summary, "us-east-1")
    tags_before = instance_tags(emu, instance_id)
    stops, copies = len(emu.world.sent("StopInstances")), len(emu.world.sent("CopyImage"))

    request = sample("request-basic.json", instance_id=instance_id, regions=["ap-southeast-2"], source_image_id=source)
    del request["mode"]
    result = emu.run(request, name="again")

    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    assert [r["region"] for r in result.output["regions"]] == ["ap-southeast-2"]
    sent = emu.world.sent("CopyImage")[copies:]
    assert [(r.region, r.params["SourceImageId"]) for r in sent] == [("ap-southeast-2", source)]
    assert len(emu.world.sent("StopInstances")) == stops, "the instance is never stopped"
    assert not emu.world.sent("CreateImage")[1:], "no new image of the instance"
    assert instance_tags(emu, instance_id) == tags_before, "not even its tags change"
    (copy,) = run_images(emu, "ap-southeast-2", "again")
    assert latest(emu, "ap-southeast-2") == copy["ImageId"]
    assert latest(emu, "eu-west-1") == image_in(summary, "eu-west-1"), "the Regions not named are left alone"
    assert emu.client("ec2").describe_images(ImageIds=[source])["Images"][0]["State"] == "available"


def test_only_an_image_the_ledger_records_for_the_family_is_distributed(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    other = emu.launch_instance(name="db")
    summary = partial_run(emu, instance_id)
    planted = emu.client("ec2").create_image(InstanceId=instance_id, Name="web-lookalike")["ImageId"]
    emu.client("ec2").create_tags(
        Resources=[planted],
        Tags=[{"Key": "ami-factory:family", "Value": "web"}, {"Key": "ami-factory:run", "Value": "partial"}],
    )
    copies = len(emu.world.sent("CopyImage"))
    for name, request in {
        "planted": {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": planted},
        # An image of the family is not the db family's: latest of db must never name web's image.
        "other-family": {
            "instance_id": other,
            "regions": ["ap-southeast-2"],
            "source_image_id": image_in(summary, "us-east-1"),
        },
    }.items():
        result = emu.run(request, name=name)
        assert result.status == "FAILED" and result.error == "InvalidRequestError", (name, result.cause)
        assert "is not an image AMI Factory delivered for family" in result.cause_message
    assert len(emu.world.sent("CopyImage")) == copies, "nothing was copied"


def test_a_delivered_image_that_is_gone_is_refused_with_what_to_do(emu: Emulator) -> None:
    """Deregistered by hand: the ledger still records it, EC2 no longer has it."""
    instance_id = emu.launch_instance(name="web")
    source = image_in(partial_run(emu, instance_id), "us-east-1")
    emu.client("ec2").deregister_image(ImageId=source)
    copies = len(emu.world.sent("CopyImage"))
    request = {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": source}
    result = emu.run(request, name="gone")
    assert result.status == "FAILED" and result.error == "InvalidRequestError", result.cause
    assert f"image {source} in us-east-1 is gone, not available" in result.cause_message
    assert "start a new run to image the instance again" in result.cause_message
    assert len(emu.world.sent("CopyImage")) == copies, "nothing was copied"


def test_distributing_refuses_the_stacks_region_and_fields_that_touch_the_instance(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    source = image_in(partial_run(emu, instance_id), "us-east-1")
    for name, changes, words in [
        ("home", {"regions": ["us-east-1", "ap-southeast-2"]}, "leave us-east-1 out of regions"),
        ("mode", {"mode": "no-reboot"}, "['mode'] do not apply"),
        ("cleanup", {"cleanup": True}, "['cleanup'] do not apply"),
    ]:
        request = {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": source, **changes}
        result = emu.run(request, name=name)
        assert result.status == "FAILED" and result.error == "InvalidRequestError", (name, result.cause)
        assert words in result.cause_message, result.cause_message


def test_an_older_image_distributed_again_never_moves_latest_back(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    source = image_in(partial_run(emu, instance_id), "us-east-1")
    newer = emu.run(sample("request-basic.json", instance_id=instance_id), name="newer")
    assert newer.output["status"] == "SUCCEEDED", newer.cause
    newest = image_in(newer.output, "ap-southeast-2")

    result = emu.run(
        {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": source}, name="late"
    )

    assert result.output["status"] == "SUCCEEDED", result.cause
    (region,) = result.output["regions"]
    assert latest(emu, "ap-southeast-2") == newest
    assert f"latest and the launch templates stay on {newest} (run newer, started " in region["parameter_note"]


def test_no_tag_can_make_a_run_distribute_an_image(emu: Emulator) -> None:
    """A tagger who could name an image would copy and share any image the roles can read."""
    owner = emu.launch_instance(name="web")
    source = image_in(partial_run(emu, owner), "us-east-1")
    copies = len(emu.world.sent("CopyImage"))
    tagged = launch_tagged(emu, **{"ami-factory:source-image-id": source, "ami-factory:regions": "ap-southeast-2"})

    (outcome,) = emu.deliver_event(tag_event(emu, tagged))

    (rejected,) = outcome["rejected"]
    assert (
        rejected["error"] == "InvalidRequestError"
        and "unknown tag(s) ['ami-factory:source-image-id']" in rejected["message"]
    )
    assert len(emu.world.sent("CopyImage")) == copies and not emu.world.sent("StopInstances", "us-east-1")[1:]


def test_two_partial_runs_redriven_in_order_leave_latest_on_the_newer_image(emu: Emulator) -> None:
    """latest moves by the start of the image's own run, not of the run that copied it."""
    instance_id = emu.launch_instance(name="web")
    older = image_in(partial_run(emu, instance_id, "older"), "us-east-1")
    newer = image_in(partial_run(emu, instance_id, "newer"), "us-east-1")
    again = {"instance_id": instance_id, "regions": ["ap-southeast-2"]}

    first = emu.run({**again, "source_image_id": older}, name="older-again")
    second = emu.run({**again, "source_image_id": newer}, name="newer-again")

    assert first.output["status"] == second.output["status"] == "SUCCEEDED", (first.cause, second.cause)
    (copy,) = run_images(emu, "ap-southeast-2", "newer-again")
    assert latest(emu, "ap-southeast-2") == copy["ImageId"]
    assert second.output["regions"][0]["parameter_note"] is None


def test_an_ended_distribution_never_tags_the_instance_even_from_the_janitor(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    source = image_in(partial_run(emu, instance_id), "us-east-1")
    tags_before = instance_tags(emu, instance_id)
    emu.world.after_call(
        "CopyImage",
        lambda: emu.client("stepfunctions").stop_execution(
            executionArn=f"{emu.state_machine_arn.replace(':stateMachine:', ':execution:')}:stopped"
        ),
    )

    result = emu.run(
        {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": source}, name="stopped"
    )

    assert result.status in ("ABORTED", "FAILED")
    ended = [s for change in emu.status_changes for r in change["results"] for s in r["ended"]]
    assert [s["run_id"] for s in ended] == ["stopped"], "the janitor ended the run"
    assert run_images(emu, "ap-southeast-2", "stopped") == [], "its copy is removed"
    assert instance_tags(emu, instance_id) == tags_before


def test_a_delivered_images_encryption_is_judged_not_the_instances(make_emulator) -> None:
    """An image made with encrypt has snapshots under the stack's key while the instance's volumes are
    plain: distributing it to another Region without encrypt would copy it under that Region's
    aws/ebs key, which the share targets cannot use."""
    emu = encrypting_emulator(make_emulator)
    create_keys(emu, [f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"])
    instance_id = emu.launch_instance(name="web")
    emu.world.refuse("CopyImage", 1, region="ap-southeast-2")
    partial = emu.run(sample("request-basic.json", instance_id=instance_id, encrypt=True), name="sealed")
    assert partial.output["status"] == "PARTIAL", partial.cause
    copies = len(emu.world.sent("CopyImage"))
    request = {
        "instance_id": instance_id,
        "regions": ["ap-southeast-2"],
        "share": {"accounts": [ALLOWED_ACCOUNT]},
        "source_image_id": image_in(partial.output, "us-east-1"),
    }

    result = emu.run(request, name="unsealed")

    assert result.status == "FAILED" and result.error == "EncryptionKeyError", result.cause
    assert "set encrypt to true" in result.cause_message
    assert len(emu.world.sent("CopyImage")) == copies


def test_a_region_that_fails_after_claiming_latest_gives_the_claim_back(emu: Emulator) -> None:
    """A later run claims latest in a Region and then fails there: its parameter is rolled back, and
    so is its claim, so an image older than it but newer than what latest names may still move it."""
    instance_id = emu.launch_instance(name="web")
    middle = image_in(partial_run(emu, instance_id, "middle"), "us-east-1")
    emu.world.refuse("PutParameter", 1, region="ap-southeast-2")  # after the later run's claim
    later = emu.run(sample("request-basic.json", instance_id=instance_id), name="later")
    assert later.output["failed_regions"] == ["ap-southeast-2"], later.cause

    result = emu.run(
        {"instance_id": instance_id, "regions": ["ap-southeast-2"], "source_image_id": middle}, name="again"
    )

    (copy,) = run_images(emu, "ap-southeast-2", "again")
    assert result.output["regions"][0]["parameter_note"] is None
    assert latest(emu, "ap-southeast-2") == copy["ImageId"]
