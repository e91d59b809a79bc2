"""Distribution done right: public sharing only when it can work, snapshot permissions only when
asked, tags on copies and their snapshots, deprecation, deregistration protection, time-based copies.
moto lacks or ignores several of these calls; the tests assert what was sent, and the world answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ami_factory_local import Emulator
from tests.helpers import (
    ALLOWED_ACCOUNT,
    ALLOWED_ORG,
    ALLOWED_OU,
    KEY_USERS,
    REGIONS,
    create_keys,
    deploy_keys,
    encrypting_emulator,
    nothing_was_changed,
    run_images,
    sample,
    tags,
)


def launch_permissions(emu: Emulator, region: str, image_id: str) -> list[dict[str, str]]:
    attribute = emu.client("ec2", region).describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    return attribute["LaunchPermissions"]


def public_request(instance_id: str, **changes: Any) -> dict[str, Any]:
    return {"instance_id": instance_id, "regions": ["eu-west-1"], "share": {"public": True}, **changes}


def test_public_sharing_while_blocked_fails_before_anything_changes(make_emulator) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    instance_id = emu.launch_instance(name="web")
    emu.world.image_block_public_access("us-east-1", "unblocked")  # eu-west-1 keeps a new account's default
    result = emu.run(public_request(instance_id), name="blocked")
    assert result.status == "FAILED" and result.error == "PublicSharingBlockedError"
    assert "block public access is on in ['eu-west-1']" in result.cause_message
    assert {r.region for r in emu.world.sent("GetImageBlockPublicAccessState")} == {"us-east-1", "eu-west-1"}
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
        ec2.modify_image_attribute(
            ImageId=image_id, Attribute="launchPermission", LaunchPermission={"Add": [{"Group": "all"}]}
        )
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
    assert "encrypted snapshots cannot be public, and the instance's volumes ['vol-" in result.cause_message
    nothing_was_changed(emu)
    plain = emu.launch_instance(name="plain")
    with_encrypt = emu.run(public_request(plain, encrypt=True), name="public-encrypt")
    assert with_encrypt.error == "InvalidRequestError"
    assert "an image with encrypted snapshots cannot be public, and encrypt is set: drop share.public" in (
        with_encrypt.cause_message
    )


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
    assert (
        emu.world.sent("EnableImageDeprecation") == [] and emu.world.sent("EnableImageDeregistrationProtection") == []
    )
    assert all(r["deprecate_at"] is None and r["deregistration_protection"] is False for r in result.output["regions"])
    assert all("SnapshotCopyCompletionDurationMinutes" not in r.params for r in emu.world.sent("CopyImage"))


# --- encryption -------------------------------------------------------------------------------


def snapshot_of(emu: Emulator, region: str, image: dict[str, Any]) -> dict[str, Any]:
    (snapshot_id,) = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    return emu.client("ec2", region).describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]


def test_encrypted_copies_in_three_regions_each_with_its_own_key(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator)
    keys = create_keys(emu, [f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"])
    instance_id = emu.launch_instance(name="web", encrypted=True)  # aws/ebs: re-encrypted by the copies
    result = emu.run(sample("request-basic.json", instance_id=instance_id, encrypt=True), name="sealed")
    assert result.status == "SUCCEEDED", result.cause
    for region in REGIONS:
        (image,) = run_images(emu, region, "sealed")
        assert image["Name"] == "ami-factory-web-sealed" and image["ImageId"] == next(
            r["image_id"] for r in result.output["regions"] if r["region"] == region
        )
        snapshot = snapshot_of(emu, region, image)
        assert snapshot["Encrypted"] is True and snapshot["KmsKeyId"] == keys[region]
        assert launch_permissions(emu, region, image["ImageId"]) == [{"UserId": ALLOWED_ACCOUNT}]
    copies = {r.region: r.params for r in emu.world.sent("CopyImage")}
    assert set(copies) == set(REGIONS), "the source Region's image is re-encrypted by a same-Region copy"
    assert all(p["Encrypted"] in (True, "true") and p["KmsKeyId"] == keys[region] for region, p in copies.items())
    (capture_create,) = emu.world.sent("CreateImage")
    assert capture_create.params["Name"] == "ami-factory-web-sealed-capture"
    assert result.output["cleaned_up"] == [f"us-east-1:{copies['us-east-1']['SourceImageId']}"], (
        "the capture is removed"
    )


def test_an_aws_managed_key_shared_cross_account_without_encrypt_is_refused_before_anything(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator)
    instance_id = emu.launch_instance(name="web", encrypted=True)
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="aws-ebs")
    assert result.status == "FAILED" and result.error == "EncryptionKeyError"
    assert "AWS managed key aws/ebs, which no other account can use: set encrypt to true" in result.cause_message
    nothing_was_changed(emu)


def test_a_key_a_share_target_cannot_use_is_refused_naming_the_account(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator)
    create_keys(emu, users=[])
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, encrypt=True), name="no-grant")
    assert result.status == "FAILED" and result.error == "KeyAccessError"
    assert f"does not let ['{ALLOWED_ACCOUNT}'] use it" in result.cause_message
    assert "arn:aws:kms:us-east-1:123456789012:key/" in result.cause_message
    nothing_was_changed(emu)
    (read,) = emu.world.sent("GetKeyPolicy")
    assert read.params["PolicyName"] == "default" and read.params["KeyId"].startswith("arn:aws:kms:us-east-1:"), (
        "the policy is read by key ARN (GetKeyPolicy takes no alias)"
    )
    assert emu.world.sent("ListGrants"), "grants count too"


def test_encrypt_without_a_key_for_a_region_is_refused_naming_the_region(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator, regions=["us-east-1", "eu-west-1"])
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, encrypt=True), name="keyless")
    assert result.status == "FAILED" and result.error == "EncryptionKeyError"
    assert "KmsKeyIds has none for ['ap-southeast-2']" in result.cause_message
    nothing_was_changed(emu)


def test_organization_and_ou_may_use_a_key_through_its_policy_conditions(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator, regions=["us-east-1", "eu-west-1"])
    keys = {}
    for region in ("us-east-1", "eu-west-1"):
        kms = emu.client("kms", region)
        org_statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": KEY_USERS,
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-exampleorgid"}},
        }
        key = kms.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": [org_statement]}))
        keys[region] = key["KeyMetadata"]["Arn"]
    deploy_keys(emu, keys)
    instance_id = emu.launch_instance(name="base")
    result = emu.run(sample("request-org-share.json", instance_id=instance_id, encrypt=True), name="org-key")
    assert result.status == "SUCCEEDED", result.cause


def test_an_instance_on_a_customer_managed_key_is_shared_in_its_region_and_needs_encrypt_beyond(make_emulator) -> None:
    emu = encrypting_emulator(make_emulator)
    keys = create_keys(emu, [ALLOWED_ACCOUNT], regions=["us-east-1"])
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=keys["us-east-1"])
    here = emu.run(sample("request-basic.json", instance_id=instance_id, regions=[]), name="cmk-here")
    assert here.status == "SUCCEEDED", here.cause
    assert emu.world.sent("CopyImage") == [], "no re-encryption needed: the instance's own key is shareable"
    beyond = emu.run(sample("request-basic.json", instance_id=instance_id), name="cmk-beyond")
    assert beyond.status == "FAILED" and beyond.error == "EncryptionKeyError"
    assert "uses that Region's aws/ebs key" in beyond.cause_message and "set encrypt to true" in beyond.cause_message


@pytest.mark.parametrize(
    "changes",
    [{"launch_check": True}, {"regions": ["eu-west-1"], "share": {}}, {"encrypt": True}, {"mode": "generalize"}],
    ids=["launch check", "copy", "encrypt", "clone"],
)
def test_a_run_that_would_use_a_key_outside_kms_key_ids_is_refused_before_anything(
    make_emulator, changes: dict[str, Any]
) -> None:
    """AMI Factory's roles may use only the KmsKeyIds keys: a run that needs the volumes' key fails here,
    not half-way through on AWS."""
    emu = encrypting_emulator(make_emulator)
    create_keys(emu, [ALLOWED_ACCOUNT])
    unlisted = emu.client("kms").create_key(Description="the team's own key")["KeyMetadata"]["Arn"]
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=unlisted)
    request = {**sample("request-basic.json", instance_id=instance_id, regions=[]), **changes}
    result = emu.run(request, name="unlisted")
    assert result.status == "FAILED" and result.error == "EncryptionKeyError"
    assert f"encrypted with ['{unlisted}'], which AMI Factory may not use" in result.cause_message
    assert "Add them to KmsKeyIds" in result.cause_message
    nothing_was_changed(emu)


# --- launch check ----------------------------------------------------------------------------


def launch_checks(emu: Emulator) -> list[Any]:
    return [
        r
        for r in emu.world.sent("RunInstances")
        if "ami-factory:launch-check" not in str(r.params)
        and any(
            tag.get("Value") == "launch-check" for spec in r.params.get("TagSpecifications", []) for tag in spec["Tags"]
        )
    ]


def test_launch_check_passing_in_every_region(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.status_checks_take(150)
    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_check=True), name="boots")
    assert result.status == "SUCCEEDED", result.cause
    launched = launch_checks(emu)
    assert {r.region for r in launched} == set(REGIONS)
    for region in result.output["regions"]:
        assert region["launch_checked"] is True
        (check,) = [r for r in launched if r.region == region["region"]]
        assert check.params["ImageId"] == region["image_id"], "the check boots the Region's own image"
        (instance_tags,) = [
            spec["Tags"] for spec in check.params["TagSpecifications"] if spec["ResourceType"] == "instance"
        ]
        assert {"Key": "ami-factory:managed", "Value": "true"} in instance_tags, (
            "marked as AMI Factory's own, like all it makes"
        )
    assert len(emu.world.sent("TerminateInstances")) == 3
    checked = [
        json.loads(e["stateEnteredEventDetails"]["input"])["launched"]["region"]
        for e in result.history
        if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == "CheckLaunch"
    ]
    assert all(checked.count(region) == 3 for region in REGIONS), (
        "status checks initialize for 150 s: 3 checks a minute apart in every Region"
    )
    shared = {r.region: r.at for r in emu.world.sent("ModifyImageAttribute")}
    ended = {r.region: r.at for r in emu.world.sent("TerminateInstances")}
    assert all(ended[region] <= shared[region] for region in REGIONS), "nobody gets an image before it booted"


def test_a_region_whose_image_fails_its_launch_check_is_failed_and_cleaned_up(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.status_checks_fail("ap-southeast-2")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, launch_check=True), name="no-boot")
    assert result.status == "SUCCEEDED" and result.output["status"] == "PARTIAL"
    (failed,) = [r for r in result.output["regions"] if r["status"] == "FAILED"]
    assert failed["region"] == "ap-southeast-2" and failed["error"]["Error"] == "LaunchCheckFailedError"
    assert "instance impaired" in failed["error"]["Cause"]
    assert run_images(emu, "ap-southeast-2", "no-boot") == [], "the image that does not boot is removed"
    assert not [r for r in emu.world.sent("ModifyImageAttribute") if r.region == "ap-southeast-2"], "never shared"
    checks = emu.client("ec2", "ap-southeast-2").describe_instances(
        Filters=[{"Name": "tag:ami-factory:role", "Values": ["launch-check"]}]
    )["Reservations"]
    assert [i["State"]["Name"] for r in checks for i in r["Instances"]] == ["terminated"]


@pytest.mark.parametrize(
    ("image_fails", "status", "starter"),
    [(False, "SUCCEEDED", "RestoreInstanceFunctionRole"), (True, "FAILED", "HandleFailureFunctionRole")],
    ids=["restored", "failed run ended"],
)
def test_an_instance_on_a_key_outside_kms_key_ids_is_started_again(
    make_emulator, image_fails: bool, status: str, starter: str
) -> None:
    """Restore first never depends on KmsKeyIds: the source's own key, whatever it is, may be granted to
    EC2 to start the instance again (without it AWS would leave the server stopped), by RestoreInstance
    or, when the run fails after the stop, by its ending (RunEndingPolicy)."""
    emu = make_emulator()
    key = emu.client("kms").create_key(Description="the team's own")["KeyMetadata"]["Arn"]
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=key)
    if image_fails:
        emu.world.images_fail()
    result = emu.run({"instance_id": instance_id, "regions": [], "mode": "stop"}, name="own-key")
    assert result.status == status, result.cause
    described = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "running"
    granted = {(role, action) for role, action, _ in emu.authorizer.used}
    assert (starter, "kms:CreateGrant") in granted and emu.authorizer.refusals == []


def test_imds_support_v2_is_set_on_every_regions_image_before_it_is_shared(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    request = sample("request-basic.json", instance_id=instance_id, imds_support="v2.0", launch_check=True)
    result = emu.run(request, name="imdsv2")
    assert result.output["status"] == "SUCCEEDED", result.cause
    for region in REGIONS:
        (image,) = run_images(emu, region, "imdsv2")
        assert image["ImdsSupport"] == "v2.0", region
        modified = [
            r for r in emu.world.sent("ModifyImageAttribute", region) if r.params["ImageId"] == image["ImageId"]
        ]
        assert ["ImdsSupport" in r.params for r in modified] == [True, False], "required before launch permissions"
        (check,) = emu.world.sent("RunInstances", region)[-1:]
        assert check.params["MetadataOptions"] == {"HttpTokens": "required"}, "the check boots as users' instances will"
    assert all(r["imds_support"] == "v2.0" for r in result.output["regions"])


def test_without_imds_support_images_are_left_as_ec2_makes_them(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="plain")
    assert result.output["status"] == "SUCCEEDED", result.cause
    assert not [r for r in emu.world.sent("ModifyImageAttribute") if "ImdsSupport" in r.params]
    assert all(r["imds_support"] is None for r in result.output["regions"])
