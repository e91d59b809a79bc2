"""Launch templates: each listed template gets a new version with its Region's image (based on its
default version) and, if asked, becomes its default; a Region that fails takes its templates'
changes back; only templates in the deployment's AllowedLaunchTemplates are touched."""

from __future__ import annotations

from typing import Any

from ami_factory_local import Emulator
from ami_factory_local.emulator import ACCOUNT_ID
from tests.helpers import ledger_items, sample


def launch_template(emu: Emulator, region: str, name: str = "web") -> str:
    """An operator's template, with settings a new version must keep."""
    data = {"ImageId": "ami-0123456789abcdef0", "InstanceType": "t3.small", "KeyName": "ops"}
    created = emu.client("ec2", region).create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)
    return str(created["LaunchTemplate"]["LaunchTemplateId"])


def arn(region: str, template_id: str) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT_ID}:launch-template/{template_id}"


def versions(emu: Emulator, region: str, template_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = emu.client("ec2", region).describe_launch_template_versions(
        LaunchTemplateId=template_id
    )["LaunchTemplateVersions"]
    return found


def default_version(emu: Emulator, region: str, template_id: str) -> int:
    (template,) = emu.client("ec2", region).describe_launch_templates(LaunchTemplateIds=[template_id])[
        "LaunchTemplates"
    ]
    return int(template["DefaultVersionNumber"])


def allowed(emu: Emulator, *templates: tuple[str, str]) -> None:
    emu.reconfigure(AllowedLaunchTemplates=",".join(arn(region, template) for region, template in templates))


def test_each_template_gets_a_version_with_its_regions_image_and_becomes_default_if_asked(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    home, eu = launch_template(emu, "us-east-1"), launch_template(emu, "eu-west-1")
    allowed(emu, ("us-east-1", home), ("eu-west-1", eu))
    targets = [
        {"region": "us-east-1", "launch_template_id": home, "set_default": True},
        {"region": "eu-west-1", "launch_template_id": eu},
    ]

    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_templates=targets), name="lt")

    assert result.output["status"] == "SUCCEEDED", result.cause
    by_region = {r["region"]: r for r in result.output["regions"]}
    assert by_region["us-east-1"]["launch_templates"] == [{"launch_template_id": home, "version": 2, "default": True}]
    assert by_region["eu-west-1"]["launch_templates"] == [{"launch_template_id": eu, "version": 2, "default": False}]
    assert by_region["ap-southeast-2"]["launch_templates"] == []
    for region, template in (("us-east-1", home), ("eu-west-1", eu)):
        new = versions(emu, region, template)[-1]["LaunchTemplateData"]
        assert new == {"ImageId": by_region[region]["image_id"], "InstanceType": "t3.small", "KeyName": "ops"}
    assert default_version(emu, "us-east-1", home) == 2
    assert default_version(emu, "eu-west-1", eu) == 1, "not asked: the default stays"


def test_a_region_that_fails_takes_back_its_templates_new_version_and_default(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    first, second = launch_template(emu, "eu-west-1"), launch_template(emu, "eu-west-1", "web-2")
    allowed(emu, ("eu-west-1", first), ("eu-west-1", second))
    targets = [
        {"region": "eu-west-1", "launch_template_id": first, "set_default": True},
        {"region": "eu-west-1", "launch_template_id": second},
    ]
    # The first template is changed (new version, new default), then EC2 refuses the second's version.
    emu.world.after_call(
        "ModifyLaunchTemplate", lambda: emu.world.refuse("CreateLaunchTemplateVersion", 1, region="eu-west-1")
    )

    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_templates=targets), name="lt-fail")

    assert result.output["status"] == "PARTIAL", result.cause
    assert result.output["failed_regions"] == ["eu-west-1"]
    assert default_version(emu, "eu-west-1", first) == 1, "the default it replaced is put back"
    assert [v["VersionNumber"] for v in versions(emu, "eu-west-1", first)] == [1], "its version is deleted"
    assert [v["VersionNumber"] for v in versions(emu, "eu-west-1", second)] == [1]
    records = [i for i in ledger_items(emu) if i["sk"].startswith("template#")]
    assert len(records) == 2 and all(i["settled"] == "true" for i in records), records


def test_templates_outside_the_allow_list_or_the_runs_regions_are_refused_before_anything_changes(
    emu: Emulator,
) -> None:
    instance_id = emu.launch_instance(name="web")
    listed, unlisted = launch_template(emu, "eu-west-1"), launch_template(emu, "eu-west-1", "other")
    allowed(emu, ("eu-west-1", listed))
    for name, target, error, words in [
        (
            "unlisted",
            {"region": "eu-west-1", "launch_template_id": unlisted},
            "LaunchTemplateNotAllowedError",
            "AllowedLaunchTemplates",
        ),
        (
            "wrong-region",
            {"region": "us-east-1", "launch_template_id": listed},
            "LaunchTemplateNotAllowedError",
            "us-east-1",
        ),
        (
            "not-copied-to",
            {"region": "eu-west-1", "launch_template_id": listed},
            "InvalidRequestError",
            "does not distribute to",
        ),
    ]:
        request = sample("request-basic.json", instance_id=instance_id, launch_templates=[target])
        if name == "not-copied-to":
            request["regions"] = ["ap-southeast-2"]
        result = emu.run(request, name=name)
        assert result.status == "FAILED" and result.error == error, (name, result.cause)
        assert words in result.cause_message
    assert not emu.world.sent("StopInstances") and not emu.world.sent("CreateLaunchTemplateVersion")
    assert default_version(emu, "eu-west-1", unlisted) == 1 and len(versions(emu, "eu-west-1", unlisted)) == 1


def test_a_template_that_does_not_exist_is_refused_before_anything_changes(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    missing = "lt-0123456789abcdef0"
    allowed(emu, ("eu-west-1", missing))
    target = {"region": "eu-west-1", "launch_template_id": missing}
    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_templates=[target]), name="gone")
    assert result.status == "FAILED" and result.error == "InvalidRequestError", result.cause
    assert f"launch template {missing} does not exist in eu-west-1" in result.cause_message
    assert not emu.world.sent("StopInstances")


def test_a_version_whose_answer_was_lost_is_still_taken_back(emu: Emulator) -> None:
    """CreateLaunchTemplateVersion takes effect, its answer is lost, the retry is refused: the Region
    fails with the version unrecorded, and the run's ending learns it by asking again (same ClientToken)."""
    instance_id = emu.launch_instance(name="web")
    eu = launch_template(emu, "eu-west-1")
    allowed(emu, ("eu-west-1", eu))
    emu.world.lose_responses("CreateLaunchTemplateVersion", 1, region="eu-west-1")
    emu.world.after_call(
        "CreateLaunchTemplateVersion", lambda: emu.world.refuse("CreateLaunchTemplateVersion", 1, region="eu-west-1")
    )
    targets = [{"region": "eu-west-1", "launch_template_id": eu}]

    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_templates=targets), name="lost")

    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"], result.cause
    assert [v["VersionNumber"] for v in versions(emu, "eu-west-1", eu)] == [1], "the unrecorded version is deleted"
    assert result.output["left_over"] == []
