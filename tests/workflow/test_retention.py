"""The scheduled clean-up across 3 Regions: keeps the newest N, deletes the rest with their
snapshots, skips what is protected, referenced, recently launched or published as latest (and says
why), never touches an image without AMI Factory's tags, and a dry run changes nothing."""

from __future__ import annotations

from typing import Any

from ami_factory_local import Emulator
from tests.helpers import REGIONS, published_in_ledger, sample


def four_runs(emu: Emulator) -> dict[str, dict[str, str]]:
    """Images of four runs of one family: run -> Region -> image id."""
    instance_id = emu.launch_instance(name="web")
    made = {}
    for run in ("r1", "r2", "r3", "r4"):
        result = emu.run(sample("request-basic.json", instance_id=instance_id), name=run)
        assert result.status == "SUCCEEDED", result.cause
        made[run] = {r["region"]: r["image_id"] for r in result.output["regions"]}
    return made


def image_ids(emu: Emulator, region: str) -> set[str]:
    return {image["ImageId"] for image in emu.client("ec2", region).describe_images(Owners=["self"])["Images"]}


def decisions(report: dict[str, Any], action: str) -> dict[tuple[str, str], str]:
    return {(d["region"], d["image_id"]): d["reason"] for d in report["decisions"] if d["action"] == action}


def test_keeps_the_newest_n_deletes_the_rest_with_snapshots_and_a_dry_run_changes_nothing(make_emulator) -> None:
    emu = make_emulator(RetentionKeepNewest="2", RetentionScheduleExpression="cron(0 4 ? * * *)")
    made = four_runs(emu)
    untagged = emu.client("ec2").register_image(Name="someone-elses", RootDeviceName="/dev/xvda")["ImageId"]
    snapshots_before = {
        s["SnapshotId"] for s in emu.client("ec2", "eu-west-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }

    dry = emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {"dry_run": True})
    expired = {(region, made[run][region]) for run in ("r1", "r2") for region in REGIONS}
    assert set(decisions(dry, "would delete")) == expired
    assert all(reason == "not among the newest 2" for reason in decisions(dry, "would delete").values())
    assert emu.world.sent("DisableImage") == [] and emu.world.sent("DeregisterImage") == []

    (report,) = [r for r in emu.fire_schedule("2026-11-28T04:00:00Z") if "decisions" in r]
    assert set(decisions(report, "deleted")) == expired and report["kept"] == 6
    for region in REGIONS:
        assert image_ids(emu, region) >= {made["r3"][region], made["r4"][region]}
        assert not image_ids(emu, region) & {made["r1"][region], made["r2"][region]}
    assert untagged in image_ids(emu, "us-east-1"), "an image without AMI Factory's tags is never touched"
    disabled = [r.params["ImageId"] for r in emu.world.sent("DisableImage")]
    assert sorted(disabled) == sorted(image for _, image in expired), "disabled first, then deregistered"
    assert emu.world.sent("DescribeFastLaunchImages") == [], "fast launch is only looked at where a run turned it on"
    snapshots_after = {
        s["SnapshotId"] for s in emu.client("ec2", "eu-west-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }
    assert len(snapshots_before - snapshots_after) == 2, "the two deleted images' snapshots go too"


def test_protected_referenced_launched_and_latest_images_are_skipped_and_the_report_says_why(make_emulator) -> None:
    emu = make_emulator(RetentionKeepNewest="2")
    made = four_runs(emu)
    emu.client("ec2", "eu-west-1").enable_image_deregistration_protection(ImageId=made["r1"]["eu-west-1"])
    template = "arn:aws:ec2:ap-southeast-2:123456789012:launch-template/lt-0123456789abcdef0"
    emu.world.image_references[made["r2"]["ap-southeast-2"]] = [("ec2:LaunchTemplate", template)]
    emu.client("ssm").put_parameter(
        Name="/ami-factory/web/latest",
        Value=made["r1"]["us-east-1"],
        Type="String",
        DataType="aws:ec2:image",
        Overwrite=True,
    )
    emu.client("ec2").run_instances(ImageId=made["r2"]["us-east-1"], MinCount=1, MaxCount=1)

    report = emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {})
    skipped = decisions(report, "skipped")
    assert skipped[("eu-west-1", made["r1"]["eu-west-1"])].startswith("deregistration protection is enabled")
    assert skipped[("ap-southeast-2", made["r2"]["ap-southeast-2"])] == f"in use by ec2:LaunchTemplate {template}"
    assert skipped[("us-east-1", made["r1"]["us-east-1"])] == "/ami-factory/web/latest points to it"
    assert skipped[("us-east-1", made["r2"]["us-east-1"])].startswith("launched ")
    assert set(decisions(report, "deleted")) == {
        ("eu-west-1", made["r2"]["eu-west-1"]),
        ("ap-southeast-2", made["r1"]["ap-southeast-2"]),
    }
    assert made["r1"]["eu-west-1"] in image_ids(emu, "eu-west-1")
    assert report["kept"] == 6 + 4, "the newest two in each Region, and the four skipped"


def test_a_familys_own_retention_comes_from_its_request_and_wins(make_emulator) -> None:
    emu = make_emulator(RetentionKeepNewest="3")
    instance_id = emu.launch_instance(name="web")
    for run in ("a", "b"):
        request = sample("request-basic.json", instance_id=instance_id, regions=[], retention={"keep_newest": 1})
        assert emu.run(request, name=run).status == "SUCCEEDED"
    (image,) = [
        i
        for i in emu.client("ec2").describe_images(Owners=["self"])["Images"]
        if any(t["Value"] == "b" for t in i.get("Tags", []) if t["Key"] == "ami-factory:run")
    ]
    assert {t["Key"]: t["Value"] for t in image["Tags"]}["ami-factory:keep-newest"] == "1"
    report = emu.runtime.invoke_checked(
        "ami-factory-local-ApplyRetentionFunction", {"dry_run": True, "regions": ["us-east-1"]}
    )
    assert [d["reason"] for d in report["decisions"]] == ["not among the newest 1"], (
        "the request's 1, not the deployment's 3"
    )


def test_the_age_rule_keeps_younger_images_and_either_rule_keeps_an_image(make_emulator) -> None:
    from datetime import timedelta

    from moto.ec2.models import ec2_backends

    emu = make_emulator(RetentionMaxAgeDays="30", RetentionKeepNewest="1")
    instance_id = emu.launch_instance(name="web")
    made = {}
    for run in ("old", "older", "new"):
        result = emu.run(sample("request-basic.json", instance_id=instance_id, regions=[]), name=run)
        made[run] = result.output["regions"][0]["image_id"]
    amis = ec2_backends["123456789012"]["us-east-1"].amis
    amis[made["old"]].creation_date -= timedelta(days=100)
    amis[made["older"]].creation_date -= timedelta(days=200)
    report = emu.runtime.invoke_checked(
        "ami-factory-local-ApplyRetentionFunction", {"dry_run": True, "regions": ["us-east-1"]}
    )
    assert decisions(report, "would delete") == {
        ("us-east-1", made["old"]): "not among the newest 1 and older than 30 days",
        ("us-east-1", made["older"]): "not among the newest 1 and older than 30 days",
    }
    amis[made["old"]].creation_date += timedelta(days=90)  # now 10 days old: the age rule keeps it
    report = emu.runtime.invoke_checked(
        "ami-factory-local-ApplyRetentionFunction", {"dry_run": True, "regions": ["us-east-1"]}
    )
    assert set(decisions(report, "would delete")) == {("us-east-1", made["older"])}


def test_every_family_is_judged_by_its_own_newest_image_and_only_finished_images_count(make_emulator) -> None:
    """Images made directly and recorded in the ledger as published (no runs), so each rule's edge is one
    image: families, pending and disabled images, the newest image's own rules, the age rule alone, what
    is counted as kept, and what is never judged (scaffolding, images only tags call the family's)."""
    from datetime import timedelta

    from moto.ec2.models import ec2_backends

    emu = make_emulator(RetentionMaxAgeDays="30")
    ec2 = emu.client("ec2")
    instance_id = emu.launch_instance()
    amis = ec2_backends["123456789012"]["us-east-1"].amis

    def image(name: str, days_old: int, family: str | None, keep_newest: int = 0, max_age_days: int = 0) -> str:
        image_id = ec2.create_image(InstanceId=instance_id, Name=name)["ImageId"]
        tags = {"ami-factory:managed": "true", "ami-factory:family": family or "a"}
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        amis[image_id].creation_date -= timedelta(days=days_old)
        if family:
            published_in_ledger(emu, family, image_id, keep_newest=keep_newest, max_age_days=max_age_days)
        return image_id

    old_a, new_a = image("a-old", 40, "a"), image("a-new", 1, "a")
    only_tagged = image("a-tagged-only", 90, None)  # tags say family a; the ledger never recorded it
    making = image("b-pending", 90, "b")
    amis[making].state = "pending"
    disabled = image("b-disabled", 60, "b")
    amis[disabled].state = "disabled"
    b_newest = image("b-newest", 50, "b", max_age_days=100)
    c_old = image("c-old", 5, "c")
    c_newest = image("c-newest", 1, "c", keep_newest=1, max_age_days=2)

    report = emu.runtime.invoke_checked(
        "ami-factory-local-ApplyRetentionFunction", {"dry_run": True, "regions": ["us-east-1"]}
    )
    would = {d["image_id"]: (d["family"], d["reason"]) for d in report["decisions"] if d["action"] == "would delete"}
    assert would == {
        old_a: ("a", "older than 30 days"),  # the deployment's age rule alone
        c_old: ("c", "not among the newest 1 and older than 2 days"),  # the newest image's own rules
    }, "b keeps its newest's 100 days: its disabled image stays too; pending and unrecorded images are not judged"
    assert only_tagged not in would and making not in would and disabled not in would and b_newest not in would
    assert report["kept"] == 4, "a-new, b-disabled, b-newest and c-newest"
    assert new_a not in would and c_newest not in would


def test_an_expired_image_in_use_says_where() -> None:
    from datetime import UTC, datetime

    from ami_factory.retention import _why_kept
    from tests.helpers import SETTINGS

    image: Any = {"ImageId": "ami-1", "DeregistrationProtection": "disabled"}
    references = {"ami-1": ["launch-template lt-1", "ssm-parameter /app/ami"]}
    now = datetime.now(UTC)
    assert _why_kept(image, ("/ami-factory/a/latest", None), references, SETTINGS, now) == (
        "in use by launch-template lt-1, ssm-parameter /app/ami"
    )
    assert _why_kept(image, ("/ami-factory/a/latest", None), {}, SETTINGS, now) is None
    protected: Any = {"ImageId": "ami-1", "DeregistrationProtection": "enabled-with-cooldown"}
    assert _why_kept(protected, ("p", None), {}, SETTINGS, now) == "deregistration protection is enabled-with-cooldown"


def test_without_rules_every_family_is_kept_and_counted(emu: Emulator) -> None:
    ec2 = emu.client("ec2")
    instance_id = emu.launch_instance()
    for family in ("a", "a", "b", "b", "b"):
        image_id = ec2.create_image(InstanceId=instance_id, Name=f"{family}-{len(emu.world.sent('CreateImage'))}")[
            "ImageId"
        ]
        published_in_ledger(emu, family, image_id)
    report = emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {"regions": ["us-east-1"]})
    assert report == {"dry_run": False, "decisions": [], "kept": 5}


def test_retention_turns_windows_fast_launch_off_before_it_deregisters(make_emulator) -> None:
    """An expired image whose run turned fast launch on: off first (the world refuses to deregister
    it otherwise, and on AWS its pre-provisioned snapshots would stay)."""
    emu = make_emulator(RetentionKeepNewest="1")
    instance_id = emu.launch_instance(name="win")
    emu.world.set_platform("us-east-1", instance_id, "windows")
    request = {"instance_id": instance_id, "regions": [], "fast_launch": [{"region": "us-east-1"}]}
    old, new = (emu.run(request, name=name) for name in ("old", "new"))
    assert old.output["status"] == new.output["status"] == "SUCCEEDED", (old.cause, new.cause)
    expired = old.output["regions"][0]["image_id"]
    assert expired in emu.world.fast_launch

    report = emu.runtime.invoke_checked("ami-factory-local-ApplyRetentionFunction", {})

    assert set(decisions(report, "deleted")) == {("us-east-1", expired)}, report
    assert expired not in image_ids(emu, "us-east-1") and expired not in emu.world.fast_launch
    assert [r.params["ImageId"] for r in emu.world.sent("DisableFastLaunch")] == [expired]
