"""ResolveRequest on its own, invoked as Lambda invokes it: the whole plan a request makes, and each
refusal word for word. These are the fast tests of the preflight's decisions (the workflow tests
play the same requests through the state machine)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ami_factory.ledger import FamilyImage, FamilyOwner, Ledger, RunRecord
from ami_factory_local import Emulator
from ami_factory_local.emulator import ACCOUNT_ID
from tests.helpers import (
    ALLOWED_ACCOUNT,
    create_keys,
    emitted,
    invoke,
    invoke_error,
    ledger_items,
    nothing_was_changed,
    sample,
    units,
)

SSM_FIX = (
    "make sure the instance is running, its SSM agent is installed and started, and its instance profile "
    "allows SSM (the AmazonSSMManagedInstanceCore policy)"
)
STARTED = "2026-11-29T08:00:00.000000+00:00"


def resolve(emu: Emulator, request: dict[str, Any], run_id: str = "run-7", **event: str) -> dict[str, Any]:
    return invoke(
        emu,
        "ResolveRequest",
        {"request": request, "run_id": run_id, "state_machine_arn": emu.state_machine_arn, **event},
    )


def refused(emu: Emulator, request: dict[str, Any], run_id: str = "run-7", **event: str) -> tuple[str, str]:
    """The refusal's error type and message, and that nothing was changed by it."""
    error = invoke_error(
        emu,
        "ResolveRequest",
        {"request": request, "run_id": run_id, "state_machine_arn": emu.state_machine_arn, **event},
    )
    nothing_was_changed(emu)
    return error["errorType"], error["errorMessage"]


def without_start(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan less its start time, which is checked on its own: now, in UTC."""
    started_at = plan.pop("started_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", started_at), started_at
    return plan


def run_record(emu: Emulator, run_id: str) -> dict[str, str]:
    (record,) = [item for item in ledger_items(emu) if item["pk"] == f"run#{run_id}" and item["sk"] == "run"]
    return record


def lock_of(emu: Emulator, instance_id: str) -> dict[str, str] | None:
    locks = [item for item in ledger_items(emu) if item["pk"] == f"instance#us-east-1#{instance_id}"]
    return locks[0] if locks else None


def test_the_basic_sample_makes_this_whole_plan_records_the_run_and_holds_the_instance(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    instance_id = emu.launch_instance(name="web")
    plan = resolve(emu, sample("request-basic.json", instance_id=instance_id), execution_started_at=STARTED)

    assert without_start(plan) == {
        "run_id": "run-7",
        "account_id": ACCOUNT_ID,
        "instance_id": instance_id,
        "platform": "linux",
        "cleanup": False,
        "source_region": "us-east-1",
        "family": "web",
        "family_asked_as": "web",
        "adopt_family": False,
        "retention": {"keep_newest": None, "max_age_days": None},
        "image_name": "ami-factory-web-run-7",
        "seed_image_name": "ami-factory-web-run-7-seed",
        "capture_image_name": "ami-factory-web-run-7",  # no re-encrypting copy: the image is captured as itself
        "encrypt": False,
        "launch_check": False,
        "launch_check_max_polls": 15,
        "description": f"AMI Factory image of {instance_id} (web), run run-7",
        "mode": "stop",
        "regions": [
            {"name": "us-east-1", "is_source": True},
            {"name": "eu-west-1", "is_source": False},
            {"name": "ap-southeast-2", "is_source": False},
        ],
        "share": {
            "accounts": [ALLOWED_ACCOUNT],
            "organizations": [],
            "organizational_units": [],
            "public": False,
            "snapshot_permissions": False,
        },
        "parameter_name": "/ami-factory/web/latest",
        "tags": {
            "Name": "ami-factory-web-run-7",
            "ami-factory:managed": "true",
            "ami-factory:run": "run-7",
            "ami-factory:family": "web",
            "ami-factory:source-instance": instance_id,
            "ami-factory:source-region": "us-east-1",
        },
        "poll_seconds": 60,
        "generalize_max_polls": 30,
        "max_wait_seconds": 7200,
        "generalize_max_wait_seconds": 1800,
        "windows": {"admin_password": "random", "admin_password_parameter": None},
        "clone_overrides": {
            "instance_type": None,
            "subnet_id": None,
            "security_group_ids": None,
            "instance_profile": None,
        },
        "protection": {"deprecate_after_days": None, "deregistration_protection": False, "cooldown": False},
        "copy_completion_minutes": None,
        "source_image_id": None,
        "source_run_id": None,
        "imds_support": None,
        "launch_templates": [],
        "approval": False,
        "approval_timeout_seconds": 259200,
        "volumes": [],
        "fast_launch": [],
        "copy_to_accounts": [],
        "account_cells": [],
        "copies_into_accounts": False,
    }
    record = run_record(emu, "run-7")
    assert (record["instance_id"], record["region"], record["image_name"]) == (
        instance_id,
        "us-east-1",
        "ami-factory-web-run-7",
    )
    assert (record["started"], record["distributing"]) == (STARTED, "false")
    lock = lock_of(emu, instance_id)
    assert lock is not None
    assert (lock["run_id"], lock["execution_arn"]) == (
        "run-7",
        f"arn:aws:states:us-east-1:{ACCOUNT_ID}:execution:ami-factory-local-ImagingStateMachine:run-7",
    )
    out = capsys.readouterr().out
    assert {"RunsStarted": 1.0} in emitted(out)
    assert units(out)["RunsStarted"] == "Count"


def test_every_field_of_a_full_windows_request_reaches_the_plan(emu: Emulator) -> None:
    keys = create_keys(emu, [f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"], ["us-east-1", "eu-west-1"])
    instance_id = emu.launch_instance(
        name="win", encrypted=True, kms_key_id=keys["us-east-1"], data_volumes={"/dev/sdf": 100}
    )
    emu.world.set_platform("us-east-1", instance_id, "windows")
    emu.world.ssm_manage(instance_id, "Windows")
    template = emu.client("ec2", "eu-west-1").create_launch_template(
        LaunchTemplateName="web", LaunchTemplateData={"ImageId": "ami-0123456789abcdef0"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    emu.reconfigure(
        AllowedLaunchTemplates=f"arn:aws:ec2:eu-west-1:{ACCOUNT_ID}:launch-template/{template}",
        AllowedCopyAccounts=ALLOWED_ACCOUNT,
    )
    account_key = f"arn:aws:kms:eu-west-1:{ALLOWED_ACCOUNT}:key/0123abcd-0000-0000-0000-000000000000"
    request = {
        "instance_id": instance_id,
        "image_name": "Win2022 Base",
        "description": "Windows Server 2022, hardened",
        "regions": ["eu-west-1"],
        "share": {"accounts": [ALLOWED_ACCOUNT], "snapshot_permissions": True},
        "mode": "generalize",
        "cleanup": True,
        "encrypt": True,
        "launch_check": True,
        "windows": {"admin_password": "specify", "admin_password_parameter": "/images/admin"},
        "clone": {"instance_type": "m6i.large"},
        "tags": {"team": "platform"},
        "retention": {"keep_newest": 3, "max_age_days": 30},
        "protection": {"deprecate_after_days": 90, "deregistration_protection": True, "cooldown": True},
        "copy_completion_minutes": 30,
        "imds_support": "v2.0",
        "approval": True,
        "adopt_family": True,
        "launch_templates": [{"region": "eu-west-1", "launch_template_id": template, "set_default": True}],
        "volumes": [{"device_name": "/dev/sdf", "size_gib": 200, "volume_type": "io2", "iops": 3000}],
        "fast_launch": [{"region": "eu-west-1", "snapshot_count": 5, "max_parallel_launches": 6}],
        "copy_to_accounts": [{"account_id": ALLOWED_ACCOUNT, "kms_key_ids": {"eu-west-1": account_key}}],
    }

    plan = resolve(emu, request, run_id="run-8")

    assert without_start(plan) == {
        "run_id": "run-8",
        "account_id": ACCOUNT_ID,
        "instance_id": instance_id,
        "platform": "windows",
        "cleanup": True,
        "source_region": "us-east-1",
        "family": "Win2022-Base",
        "family_asked_as": "Win2022 Base",
        "adopt_family": True,
        "retention": {"keep_newest": 3, "max_age_days": 30},
        "image_name": "ami-factory-Win2022-Base-run-8",
        "seed_image_name": "ami-factory-Win2022-Base-run-8-seed",
        "capture_image_name": "ami-factory-Win2022-Base-run-8-capture",  # re-encrypted by a copy into the name
        "encrypt": True,
        "launch_check": True,
        "launch_check_max_polls": 15,
        "description": "Windows Server 2022, hardened",
        "mode": "generalize",
        "regions": [{"name": "us-east-1", "is_source": True}, {"name": "eu-west-1", "is_source": False}],
        "share": {
            "accounts": [ALLOWED_ACCOUNT],
            "organizations": [],
            "organizational_units": [],
            "public": False,
            "snapshot_permissions": True,
        },
        "parameter_name": "/ami-factory/Win2022-Base/latest",
        "tags": {
            "Name": "ami-factory-Win2022-Base-run-8",
            "team": "platform",
            "ami-factory:managed": "true",
            "ami-factory:run": "run-8",
            "ami-factory:family": "Win2022-Base",
            "ami-factory:source-instance": instance_id,
            "ami-factory:source-region": "us-east-1",
            "ami-factory:keep-newest": "3",
            "ami-factory:max-age-days": "30",
        },
        "poll_seconds": 60,
        "generalize_max_polls": 30,
        "max_wait_seconds": 7200,
        "generalize_max_wait_seconds": 1800,
        "windows": {"admin_password": "specify", "admin_password_parameter": "/images/admin"},
        "clone_overrides": {
            "instance_type": "m6i.large",
            "subnet_id": None,
            "security_group_ids": None,
            "instance_profile": None,
        },
        "protection": {"deprecate_after_days": 90, "deregistration_protection": True, "cooldown": True},
        "copy_completion_minutes": 30,
        "source_image_id": None,
        "source_run_id": None,
        "imds_support": "v2.0",
        "launch_templates": [{"region": "eu-west-1", "launch_template_id": template, "set_default": True}],
        "approval": True,  # the request's, in a deployment that does not require approval
        "approval_timeout_seconds": 259200,
        "volumes": [
            {
                "device_name": "/dev/sdf",
                "exclude": False,
                "size_gib": 200,
                "volume_type": "io2",
                "iops": 3000,
                "throughput": None,
            }
        ],
        "fast_launch": [{"region": "eu-west-1", "snapshot_count": 5, "max_parallel_launches": 6}],
        "copy_to_accounts": [
            {"account_id": ALLOWED_ACCOUNT, "regions": None, "kms_key_ids": {"eu-west-1": account_key}}
        ],
        "account_cells": [
            {"account_id": ALLOWED_ACCOUNT, "region": "us-east-1", "kms_key_id": None},
            {"account_id": ALLOWED_ACCOUNT, "region": "eu-west-1", "kms_key_id": account_key},
        ],
        "copies_into_accounts": True,
    }


def delivered(emu: Emulator, instance_id: str, family: str = "web", run_id: str = "first") -> str:
    """An image a run delivered for ``family``, as the run's ending leaves it (an image in EC2, the
    family owned by the instance, the image recorded as the family's), made without the run."""
    image_id = str(
        emu.client("ec2").create_image(InstanceId=instance_id, Name=f"ami-factory-{family}-{run_id}")["ImageId"]
    )
    with emu.runtime.environment_of("ami-factory-local-FinalizeFunction"):
        ledger = Ledger()
        ledger.claim_family(family, FamilyOwner(ACCOUNT_ID, "us-east-1", instance_id, family, run_id))
        ledger.record_family_image(FamilyImage(family, "us-east-1", image_id, run_id))
    return image_id


def test_a_redistribution_plans_the_delivered_image_records_it_and_leaves_the_instance_unheld(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    image_id = delivered(emu, instance_id)
    request = sample("request-basic.json", instance_id=instance_id, regions=["eu-west-1"], source_image_id=image_id)
    del request["mode"]

    plan = resolve(emu, request, run_id="again")

    assert (plan["source_image_id"], plan["source_run_id"]) == (image_id, "first")
    assert plan["regions"] == [{"name": "eu-west-1", "is_source": False}]
    assert run_record(emu, "again")["distributing"] == "true"
    assert lock_of(emu, instance_id) is None, "a redistribution never holds the instance"


def test_a_redistribution_is_not_refused_for_the_instance_it_would_not_image(emu: Emulator) -> None:
    """The instance is only read when an image is distributed again: only imaging needs an EBS root and
    an instance that is running or stopped."""
    instance_id = emu.launch_instance(name="web")
    image_id = delivered(emu, instance_id)
    emu.world.set_root_device_type("us-east-1", instance_id, "instance-store")
    emu.world.set_instance_state("us-east-1", instance_id, "shutting-down")
    request = {"instance_id": instance_id, "regions": ["eu-west-1"], "source_image_id": image_id}

    assert resolve(emu, request, run_id="again")["source_image_id"] == image_id


@pytest.mark.parametrize(
    ("request_fields", "purpose"),
    [
        ({"cleanup": True}, "clean-up"),
        ({"mode": "generalize-in-place", "confirm_generalize_in_place": True}, "generalize-in-place"),
        ({"mode": "generalize"}, "generalize (on a clone)"),
    ],
)
def test_each_step_that_runs_commands_is_refused_by_name_on_an_instance_ssm_does_not_know(
    emu: Emulator, request_fields: dict[str, Any], purpose: str
) -> None:
    instance_id = emu.launch_instance(name="web")
    assert refused(emu, {"instance_id": instance_id, "regions": [], **request_fields}) == (
        "InstanceNotManagedError",
        f"{purpose} needs SSM Run Command, and instance {instance_id} is not registered with SSM: {SSM_FIX}",
    )


@pytest.mark.parametrize("mode", ["generalize-in-place", "generalize"])
def test_a_running_instance_whose_agent_does_not_answer_is_refused(emu: Emulator, mode: str) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id, ping_status="ConnectionLost")
    purpose = "generalize (on a clone)" if mode == "generalize" else mode
    confirmed = {"confirm_generalize_in_place": True} if mode == "generalize-in-place" else {}
    request = {"instance_id": instance_id, "regions": [], "mode": mode, **confirmed}
    assert refused(emu, request) == (
        "InstanceNotManagedError",
        f"{purpose} needs SSM Run Command, and instance {instance_id} is SSM ping status ConnectionLost: {SSM_FIX}",
    )


def test_a_stopped_instance_is_generalized_on_a_clone_though_its_agent_cannot_answer(emu: Emulator) -> None:
    """The clone boots the instance's disk with its agent: a stopped instance's must be registered, not online."""
    instance_id = emu.launch_instance(name="web", state="stopped")
    emu.world.ssm_manage(instance_id, ping_status="ConnectionLost")
    assert resolve(emu, {"instance_id": instance_id, "regions": [], "mode": "generalize"})["mode"] == "generalize"


def test_an_instance_ssm_knows_as_another_platform_is_refused_naming_both(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="win")
    emu.world.set_platform("us-east-1", instance_id, "windows")
    emu.world.ssm_manage(instance_id, "Linux")
    request = {
        "instance_id": instance_id,
        "regions": [],
        "mode": "generalize-in-place",
        "confirm_generalize_in_place": True,
    }
    assert refused(emu, request) == (
        "InstanceNotManagedError",
        f"generalize-in-place: EC2 says instance {instance_id} runs windows, SSM says Linux; "
        f"check that the instance id is right",
    )


def test_windows_options_for_a_linux_instance_are_refused(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id)
    request = {
        "instance_id": instance_id,
        "regions": [],
        "mode": "generalize",
        "windows": {"admin_password": "do-nothing"},
    }
    assert refused(emu, request) == (
        "InvalidRequestError",
        f"instance {instance_id} runs Linux: the windows options (administrator password) do not apply; "
        f"drop them from the request",
    )


def test_an_instance_store_root_is_refused_saying_what_to_do(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.set_root_device_type("us-east-1", instance_id, "instance-store")
    assert refused(emu, {"instance_id": instance_id, "regions": []}) == (
        "UnsupportedInstanceError",
        f"instance {instance_id} has an instance-store root device; only EBS-backed instances can be imaged with "
        f"CreateImage. Move the instance to an EBS root volume first",
    )


@pytest.mark.parametrize("state", ["shutting-down", "terminated"])
def test_an_instance_on_its_way_out_is_refused(emu: Emulator, state: str) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.set_instance_state("us-east-1", instance_id, state)
    assert refused(emu, {"instance_id": instance_id, "regions": []}) == (
        "UnsupportedInstanceError",
        f"instance {instance_id} is {state}; only running or stopped instances can be imaged",
    )


def test_a_launch_template_missing_from_its_region_is_refused_by_id(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    missing = "lt-0123456789abcdef0"
    emu.reconfigure(AllowedLaunchTemplates=f"arn:aws:ec2:eu-west-1:{ACCOUNT_ID}:launch-template/{missing}")
    request = {
        "instance_id": instance_id,
        "regions": ["eu-west-1"],
        "launch_templates": [{"region": "eu-west-1", "launch_template_id": missing}],
    }
    assert refused(emu, request) == (
        "InvalidRequestError",
        f"launch template {missing} does not exist in eu-west-1: check its id and Region",
    )


@pytest.mark.parametrize(
    ("earlier_start", "shown"),
    [(STARTED, STARTED), ("", "before")],  # "": a run recorded without its start (invoked directly)
)
def test_a_reused_execution_name_is_refused_before_the_instance_is_held(
    emu: Emulator, earlier_start: str, shown: str
) -> None:
    first, second = emu.launch_instance(name="web"), emu.launch_instance(name="api")
    resolve(emu, {"instance_id": first, "regions": []}, execution_started_at=earlier_start)
    assert refused(
        emu, {"instance_id": second, "regions": []}, execution_started_at="2027-03-01T08:00:00.000000+00:00"
    ) == (
        "RunNameTakenError",
        f"execution name run-7 was the name of an earlier run (started {shown}), whose records AMI Factory "
        f"keeps: start this run under another name",
    )
    assert lock_of(emu, second) is None


# --- encryption: which keys, and whether each recipient may use them --------------------------

KEY_USE = (
    "allow kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncrypt* and kms:GenerateDataKey* to them in the key "
    "policy (an organization or OU: Principal * with aws:PrincipalOrgID or aws:PrincipalOrgPaths), or create grants"
)
RECIPIENT = f"arn:aws:iam::{ALLOWED_ACCOUNT}:root"


def volume_ids(emu: Emulator, instance_id: str) -> list[str]:
    (reservation,) = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return [mapping["Ebs"]["VolumeId"] for mapping in reservation["Instances"][0]["BlockDeviceMappings"]]


def test_encrypting_for_a_recipient_the_regions_key_does_not_admit_is_refused_naming_key_and_region(
    emu: Emulator,
) -> None:
    keys = create_keys(emu, [], ["us-east-1", "eu-west-1"])
    instance_id = emu.launch_instance(name="web")
    request = {
        "instance_id": instance_id,
        "regions": ["eu-west-1"],
        "encrypt": True,
        "share": {"accounts": [ALLOWED_ACCOUNT]},
    }
    assert refused(emu, request) == (
        "KeyAccessError",
        f"key {keys['us-east-1']} (us-east-1) does not let ['{ALLOWED_ACCOUNT}'] use it, so they would see the image "
        f"but could not launch it: {KEY_USE}",
    )


def test_an_unencrypted_copy_of_a_customer_key_volume_shared_is_refused(emu: Emulator) -> None:
    keys = create_keys(emu, [RECIPIENT], ["us-east-1"])
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=keys["us-east-1"])
    request = {"instance_id": instance_id, "regions": ["eu-west-1"], "share": {"accounts": [ALLOWED_ACCOUNT]}}
    assert refused(emu, request) == (
        "EncryptionKeyError",
        f"volumes {volume_ids(emu, instance_id)} of instance {instance_id} are encrypted, and a copy to another Region without a key "
        f"uses that Region's aws/ebs key, which recipients cannot use: set encrypt to true to use the deployment's "
        f"KmsKeyIds keys",
    )


def test_sharing_a_volume_on_the_aws_managed_key_is_refused_even_without_copies(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web", encrypted=True)
    request = {"instance_id": instance_id, "regions": [], "share": {"accounts": [ALLOWED_ACCOUNT]}}
    assert refused(emu, request) == (
        "EncryptionKeyError",
        f"volumes {volume_ids(emu, instance_id)} of instance {instance_id} are encrypted with the AWS managed key aws/ebs, which no "
        f"other account can use: set encrypt to true to re-encrypt every Region's image with the deployment's "
        f"KmsKeyIds keys (in us-east-1 through a same-Region copy), or share it with nobody",
    )


@pytest.mark.parametrize(("users", "admitted"), [([], False), ([RECIPIENT], True)])
def test_sharing_the_instances_own_key_without_copies_asks_that_key(
    emu: Emulator, users: list[str], admitted: bool
) -> None:
    keys = create_keys(emu, users, ["us-east-1"])
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=keys["us-east-1"])
    request = {"instance_id": instance_id, "regions": [], "share": {"accounts": [ALLOWED_ACCOUNT]}}
    if admitted:
        assert resolve(emu, request)["share"]["accounts"] == [ALLOWED_ACCOUNT]
    else:
        assert refused(emu, request) == (
            "KeyAccessError",
            f"key {keys['us-east-1']} (us-east-1) does not let ['{ALLOWED_ACCOUNT}'] use it, so they would see the "
            f"image but could not launch it: {KEY_USE}",
        )


@pytest.mark.parametrize(
    ("request_fields", "uses_the_key"),
    [
        ({}, False),
        ({"encrypt": True}, True),
        ({"mode": "generalize"}, True),
        ({"launch_check": True}, True),
        ({"regions": ["eu-west-1"]}, True),
    ],
)
def test_a_key_outside_kms_key_ids_is_refused_only_when_the_run_would_use_it(
    emu: Emulator, request_fields: dict[str, Any], uses_the_key: bool
) -> None:
    create_keys(emu, [], ["us-east-1", "eu-west-1"])
    unlisted = emu.client("kms").create_key(Description="the team's own")["KeyMetadata"]["Arn"]
    instance_id = emu.launch_instance(name="web", encrypted=True, kms_key_id=unlisted)
    emu.world.ssm_manage(instance_id)
    request = {"instance_id": instance_id, "regions": [], **request_fields}
    if not uses_the_key:
        assert resolve(emu, request)["instance_id"] == instance_id
        return
    assert refused(emu, request) == (
        "EncryptionKeyError",
        f"instance {instance_id}'s volumes are encrypted with ['{unlisted}'], which AMI Factory may not use: its "
        f"roles may use only the KmsKeyIds keys. Add them to KmsKeyIds, or image it without copies, a clone or a "
        f"launch check",
    )


def test_an_execution_of_the_same_name_recorded_just_before_this_one_is_refused(emu: Emulator) -> None:
    """Two executions of one name at once: the later record loses, whichever passed the first check."""
    instance_id = emu.launch_instance(name="web")
    other_start = "2026-11-29T08:00:00.500000+00:00"

    def other_execution_records_its_run() -> None:  # inside ResolveRequest, right after it takes the lock
        record = RunRecord(
            run_id="run-7", instance_id=instance_id, region="us-east-1", image_name="x", started=other_start
        )
        Ledger().open_run(record)

    emu.world.after_call("PutItem", other_execution_records_its_run)
    assert refused(emu, {"instance_id": instance_id, "regions": []}, execution_started_at=STARTED) == (
        "RunNameTakenError",
        f"execution name run-7 was the name of an earlier run (started {other_start}), whose records AMI Factory "
        f"keeps: start this run under another name",
    )


def test_a_retried_resolve_request_of_the_same_execution_plans_again(emu: Emulator) -> None:
    """Lambda retries a step: the run's record is its own, not an earlier run's of the name."""
    instance_id = emu.launch_instance(name="web")
    first = resolve(emu, {"instance_id": instance_id, "regions": []}, execution_started_at=STARTED)
    again = resolve(emu, {"instance_id": instance_id, "regions": []}, execution_started_at=STARTED)
    assert again["image_name"] == first["image_name"] == "ami-factory-web-run-7"


def test_generalize_in_place_on_an_instance_ssm_manages_is_planned(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id)
    request = {"instance_id": instance_id, "regions": [], "mode": "generalize-in-place", "cleanup": True}
    plan = resolve(emu, {**request, "confirm_generalize_in_place": True})
    assert (plan["mode"], plan["cleanup"], plan["platform"]) == ("generalize-in-place", True, "linux")


@pytest.mark.parametrize(
    ("asking", "image_name", "adopt", "refusal"),
    [
        ("owner", "web", False, None),  # the owner runs again
        ("other", "web", False, "belongs"),
        ("other", "web", True, None),  # adopt_family takes it over
        ("owner", "web ", False, "first published"),  # the same family by another name
    ],
)
def test_a_family_is_its_owners_unless_adopted(
    emu: Emulator, asking: str, image_name: str, adopt: bool, refusal: str | None
) -> None:
    owner, other = emu.launch_instance(name="web"), emu.launch_instance(name="api")
    delivered(emu, owner)
    emu.world.requests.clear()
    instance_id = owner if asking == "owner" else other
    request = {"instance_id": instance_id, "regions": [], "image_name": image_name, "adopt_family": adopt}
    if refusal is None:
        assert resolve(emu, request, run_id="second")["family"] == "web"
        return
    expected = {
        "belongs": f"image family web belongs to instance {owner} (us-east-1, account {ACCOUNT_ID}); {other} may not "
        f"move its latest. Use another image_name, or a StartExecution request with adopt_family true",
        "first published": "image family web was first published as 'web', and this run asks for it as 'web ': names "
        "that normalise to the same family are not merged. Set image_name (or the Name tag) to 'web', or pick a "
        "name that makes another family",
    }[refusal]
    assert refused(emu, request, run_id="second") == ("FamilyOwnedError", expected)


def test_a_clone_profile_outside_the_allow_list_is_refused(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.ssm_manage(instance_id)
    request = {"instance_id": instance_id, "regions": [], "mode": "generalize", "clone": {"instance_profile": "admin"}}
    assert refused(emu, request) == (
        "CloneProfileNotAllowedError",
        "clone.instance_profile admin is not in the deployment's AllowedCloneInstanceProfiles []: drop it (the clone "
        "then uses the stack's own profile, which has what SSM needs), or ask the operator to add it",
    )


PUBLIC_FIX = "drop share.public, or share with accounts, organizations or OUs instead"


@pytest.mark.parametrize("encrypted", ["encrypt", "volume", None])
def test_a_public_image_must_have_unencrypted_snapshots(make_emulator, encrypted: str | None) -> None:
    emu = make_emulator(AllowPublicSharing="true")
    keys = create_keys(emu, [], ["us-east-1"])
    instance_id = emu.launch_instance(name="web", encrypted=encrypted == "volume", kms_key_id=keys["us-east-1"])
    emu.world.image_block_public_access("us-east-1", "unblocked")
    request = {"instance_id": instance_id, "regions": [], "share": {"public": True}, "encrypt": encrypted == "encrypt"}
    if encrypted is None:
        assert resolve(emu, request)["share"]["public"] is True
        return
    why = (
        "encrypt is set"
        if encrypted == "encrypt"
        else f"the instance's volumes {volume_ids(emu, instance_id)} are encrypted"
    )
    assert refused(emu, request) == (
        "InvalidRequestError",
        f"an image with encrypted snapshots cannot be public, and {why}: {PUBLIC_FIX}",
    )


def test_the_deployments_bounds_reach_the_plan(emu: Emulator) -> None:
    """The plan carries the deployment's own bounds, not the template's defaults."""
    emu.reconfigure(ApprovalTimeoutHours="2", PollIntervalSeconds="30", GeneralizeMaxWaitSeconds="900")
    instance_id = emu.launch_instance(name="web")
    plan = resolve(emu, {"instance_id": instance_id, "regions": []})
    assert (plan["approval_timeout_seconds"], plan["poll_seconds"], plan["generalize_max_wait_seconds"]) == (
        7200,
        30,
        900,
    )
