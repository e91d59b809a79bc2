"""Distribution done right: public sharing only when it can work, snapshot permissions only when
asked, tags on copies and their snapshots, deprecation, deregistration protection, time-based copies.
moto lacks or ignores several of these calls; the tests assert what was sent, and the world answers."""

from __future__ import annotations

from typing import Any

from ami_factory_local import Emulator
from tests.conftest import ALLOWED_ACCOUNT, ALLOWED_ORG, ALLOWED_OU, sample

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def run_images(emu: Emulator, region: str, run: str) -> list[dict[str, Any]]:
    found = emu.client("ec2", region).describe_images(Owners=["self"], Filters=[{"Name": "tag:ami-factory:run", "Values": [run]}])
    return found["Images"]


def launch_permissions(emu: Emulator, region: str, image_id: str) -> list[dict[str, str]]:
    attribute = emu.client("ec2", region).describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    return attribute["LaunchPermissions"]


def nothing_was_changed(emu: Emulator) -> None:
    mutating = {op for op in emu.world.calls("ec2") if not op.startswith(("Describe", "Get"))} - {"RunInstances", "RegisterImage"}
    assert mutating == set(), f"nothing may change, sent {mutating}"


def public_request(instance_id: str, **changes: Any) -> dict[str, Any]:
    return {"instance_id": instance_id, "regions": ["eu-west-1"], "share": {"public": True}, **changes}


def test_public_sharing_while_blocked_fails_before_anything_changes(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    instance_id = emu.launch_instance(name="web")
    emu.world.image_block_public_access("us-east-1", "unblocked")  # eu-west-1 keeps a new account's default
    result = emu.run(public_request(instance_id), name="blocked")
    assert result.status == "FAILED" and result.error == "PublicSharingBlockedError"
    assert "block public access is on in ['eu-west-1']" in result.cause_message
    assert "disable-image-block-public-access" in result.cause_message
    nothing_was_changed(emu)


def test_public_sharing_allowed_and_unblocked_makes_every_region_public(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    instance_id = emu.launch_instance(name="web")
    for region in ("us-east-1", "eu-west-1"):
        emu.world.image_block_public_access(region, "unblocked")
    result = emu.run(public_request(instance_id), name="public")
    assert result.status == "SUCCEEDED", result.cause
    for region in ("us-east-1", "eu-west-1"):
        (image,) = run_images(emu, region, "public")
        assert launch_permissions(emu, region, image["ImageId"]) == [{"Group": "all"}]
    assert emu.world.sent("ModifySnapshotAttribute") == [], "snapshots stay private unless asked"


def test_a_region_at_its_public_image_limit_fails_before_anything_changes(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    for region in ("us-east-1", "eu-west-1"):
        emu.world.image_block_public_access(region, "unblocked")
    ec2 = emu.client("ec2", "eu-west-1")
    for n in range(5):
        image_id = ec2.register_image(Name=f"already-public-{n}", RootDeviceName="/dev/xvda")["ImageId"]
        ec2.modify_image_attribute(ImageId=image_id, Attribute="launchPermission", LaunchPermission={"Add": [{"Group": "all"}]})
    emu.world.requests.clear()
    instance_id = emu.launch_instance(name="web")
    result = emu.run(public_request(instance_id), name="quota")
    assert result.status == "FAILED" and result.error == "PublicImageLimitError"
    assert "eu-west-1 already has 5 public images, the limit is 5" in result.cause_message
    nothing_was_changed(emu)


def test_public_snapshots_of_an_encrypted_instance_are_refused_before_anything_changes(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    instance_id = emu.launch_instance(name="web", encrypted=True)
    request = public_request(instance_id, share={"public": True, "snapshot_permissions": True})
    result = emu.run(request, name="public-encrypted")
    assert result.status == "FAILED" and result.error == "InvalidRequestError"
    assert "encrypted snapshots cannot be public" in result.cause_message
    nothing_was_changed(emu)


def test_snapshot_permissions_only_when_asked_and_only_to_accounts(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    share = {"accounts": [ALLOWED_ACCOUNT], "organizational_units": [ALLOWED_OU], "snapshot_permissions": True}
    result = emu.run(sample("request-basic.json", instance_id=instance_id, share=share), name="copyable")
    assert result.status == "SUCCEEDED", result.cause
    for region in REGIONS:
        (image,) = run_images(emu, region, "copyable")
        (snapshot_id,) = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
        permissions = emu.client("ec2", region).describe_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission"
        )["CreateVolumePermissions"]
        assert permissions == [{"UserId": ALLOWED_ACCOUNT}], "EBS has no OU principals: accounts only"
    sent = emu.world.sent("ModifySnapshotAttribute")
    assert len(sent) == 3 and all(r.params["UserIds"] == [ALLOWED_ACCOUNT] for r in sent)


def test_organization_and_ou_sharing(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="base")
    result = emu.run(sample("request-org-share.json", instance_id=instance_id), name="org")
    assert result.status == "SUCCEEDED", result.cause
    (sent, *_) = emu.world.sent("ModifyImageAttribute")
    added = sent.params["LaunchPermission"]["Add"]
    assert {"OrganizationArn": ALLOWED_ORG} in added and {"OrganizationalUnitArn": ALLOWED_OU} in added
    assert result.output["regions"][1]["shared_with"] == [ALLOWED_ORG, ALLOWED_OU]


def test_copies_and_their_snapshots_carry_the_tools_and_the_users_tags(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, tags={"team": "platform"}), name="tagged")
    assert result.status == "SUCCEEDED", result.cause
    for region in REGIONS[1:]:
        (copy,) = run_images(emu, region, "tagged")
        (snapshot_id,) = [m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]]
        (snapshot,) = emu.client("ec2", region).describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        for resource in (copy, snapshot):
            assert tags(resource)["team"] == "platform" and tags(resource)["ami-factory:managed"] == "true"
            assert tags(resource)["ami-factory:source-image"] == result.output["regions"][0]["image_id"]
    for sent in emu.world.sent("CopyImage"):
        assert sent.params["CopyImageTags"] in (False, "false")
        kinds = {spec["ResourceType"] for spec in sent.params["TagSpecifications"]}
        assert kinds == {"image", "snapshot"}


def test_deprecation_protection_and_time_based_copies_as_requested(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    protection = {"deprecate_after_days": 90, "deregistration_protection": True, "cooldown": True}
    request = sample("request-basic.json", instance_id=instance_id, protection=protection, copy_completion_minutes=30)
    result = emu.run(request, name="kept")
    assert result.status == "SUCCEEDED", result.cause
    images = {r["image_id"] for r in result.output["regions"]}
    assert set(emu.world.deprecations) == images and set(emu.world.protected) == images
    assert all(emu.world.protected.values()), "with cooldown"
    for region in result.output["regions"]:
        assert region["deregistration_protection"] is True and region["deprecate_at"].endswith("Z")
    assert {r.params["SnapshotCopyCompletionDurationMinutes"] for r in emu.world.sent("CopyImage")} == {30}
    assert {r.region for r in emu.world.sent("EnableImageDeregistrationProtection")} == set(REGIONS)


def test_no_protection_asked_no_protection_calls(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="plain")
    assert result.status == "SUCCEEDED", result.cause
    assert emu.world.sent("EnableImageDeprecation") == [] and emu.world.sent("EnableImageDeregistrationProtection") == []
    assert all(r["deprecate_at"] is None and r["deregistration_protection"] is False for r in result.output["regions"])
    assert all("SnapshotCopyCompletionDurationMinutes" not in r.params for r in emu.world.sent("CopyImage"))
