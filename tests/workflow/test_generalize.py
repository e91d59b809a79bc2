"""Generalize on a clone (the instance is never sysprepped) and in place: the world plays what the
generalize command does (shuts the instance down some virtual minutes later, or never, or fails),
and the tests assert the command that was sent, since the emulator cannot run it."""

from __future__ import annotations

from typing import Any

import pytest

from ami_factory_local import Emulator
from tests import helpers
from tests.helpers import document_script, run_images, sample, tags

REGION = "us-east-1"


def launch_managed(emu: Emulator, platform: str, name: str = "golden") -> str:
    instance_id = emu.launch_instance(name=name)
    if platform == "Windows":
        emu.world.set_platform(REGION, instance_id, "windows")
    emu.world.ssm_manage(instance_id, platform)
    return instance_id


def instances(emu: Emulator) -> dict[str, dict[str, Any]]:
    found = emu.client("ec2").describe_instances()["Reservations"]
    return {instance["InstanceId"]: instance for reservation in found for instance in reservation["Instances"]}


def images(emu: Emulator, region: str = REGION) -> list[dict[str, Any]]:
    return emu.client("ec2", region).describe_images(Owners=["self"])["Images"]


def snapshot_ids(emu: Emulator, region: str = REGION) -> set[str]:
    return {s["SnapshotId"] for s in emu.client("ec2", region).describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def commands_to(emu: Emulator, instance_id: str) -> list[Any]:
    return [r for r in emu.world.sent("SendCommand") if r.params["InstanceIds"] == [instance_id]]


def nothing_was_changed(emu: Emulator) -> None:
    helpers.nothing_was_changed(emu)
    assert emu.world.sent("SendCommand") == []
    assert len(emu.world.sent("RunInstances")) == 1, "only the test's own launch"


@pytest.mark.parametrize(
    "platform, document, must_send",
    [
        (
            "Windows",
            "ami-factory-local-SysprepWindowsDocument",
            ["reset --block --clean", "sysprep --block --clean --shutdown", "$choice = '{{ AdminAccount }}'"],
        ),
        (
            "Linux",
            "ami-factory-local-SanitizeLinuxDocument",
            [
                "rm -f /etc/ssh/ssh_host_*_key",
                "truncate -s 0 /etc/machine-id",
                "cloud-init clean --logs",
                "shutdown -h +1",
            ],
        ),
    ],
)
def test_generalize_on_a_clone_images_the_clone_and_leaves_the_instance_untouched(
    emu: Emulator, platform: str, document: str, must_send: list[str]
) -> None:
    source = launch_managed(emu, platform)
    emu.world.clones_take_to_register(150)
    emu.world.generalize_takes(8 * 60)
    snapshots_before = snapshot_ids(emu)
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": ["eu-west-1"]}, name="gen")
    assert result.status == "SUCCEEDED", result.cause

    (launch,) = emu.world.sent("RunInstances")[1:]
    clone_id = next(i for i, instance in instances(emu).items() if tags(instance).get("ami-factory:role") == "clone")
    clone = instances(emu)[clone_id]
    assert clone["State"]["Name"] == "terminated"
    assert launch.params["InstanceType"] == "t3.micro", "the source's instance type"
    assert tags(clone)["ami-factory:run"] == "gen"

    (command,) = emu.world.sent("SendCommand")
    assert command.params["InstanceIds"] == [clone_id], "the command goes to the clone, never the instance"
    assert command.params["DocumentName"] == document
    script = document_script(emu, document)
    for fragment in must_send:
        assert fragment in script

    (seed_create, final_create) = emu.world.sent("CreateImage")
    assert seed_create.params["InstanceId"] == source and seed_create.params["NoReboot"] in (True, "true")
    seed_tags = {
        tag["Key"]: tag["Value"]
        for spec in seed_create.params["TagSpecifications"]
        if spec["ResourceType"] == "image"
        for tag in spec["Tags"]
    }
    assert seed_tags["Name"] == seed_create.params["Name"] and seed_tags["ami-factory:role"] == "seed"
    assert final_create.params["InstanceId"] == clone_id and final_create.params["NoReboot"] in (True, "true")
    assert emu.world.sent("StopInstances") == [], "the instance is never stopped"
    assert instances(emu)[source]["State"]["Name"] == "running"

    (final,) = run_images(emu, REGION, "gen")
    assert final["Name"] == result.output["image_name"] and "ami-factory:role" not in tags(final)
    assert final["ImageId"] == result.output["regions"][0]["image_id"]
    deregistered = {r.params["ImageId"] for r in emu.world.sent("DeregisterImage")}
    assert len(deregistered) == 1 and final["ImageId"] not in deregistered, "the seed image, and only it, is gone"
    leftover = (
        snapshot_ids(emu)
        - snapshots_before
        - {m["Ebs"]["SnapshotId"] for m in final["BlockDeviceMappings"] if "Ebs" in m}
    )
    assert leftover == set(), f"the seed's snapshots must be deleted, left {leftover}"
    assert result.output["regions"][1]["status"] == "AVAILABLE"

    checks = [
        e
        for e in result.history
        if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == "CheckClone"
    ]
    assert len(checks) == 3, "the clone registered with SSM 150 s after launch: three checks a minute apart"


def test_clone_overrides_reach_run_instances(emu: Emulator) -> None:
    source = launch_managed(emu, "Windows")
    vpc = emu.client("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = emu.client("ec2").create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = emu.client("ec2").create_security_group(GroupName="isolated", Description="no DC", VpcId=vpc)["GroupId"]
    request = sample(
        "request-generalize.json",
        instance_id=source,
        cleanup=False,
        clone={"instance_type": "m6i.large", "subnet_id": subnet, "security_group_ids": [group]},
    )
    result = emu.run(request, name="override")
    assert result.status == "SUCCEEDED", result.cause
    (launch,) = emu.world.sent("RunInstances")[1:]
    assert launch.params["InstanceType"] == "m6i.large"
    assert launch.params["SubnetId"] == subnet, launch.params
    assert launch.params["SecurityGroupIds"] == [group], launch.params
    assert launch.params["ClientToken"], "a retried launch must not start a second clone"


def test_a_clone_ec2_refuses_to_launch_is_a_clear_error_and_the_seed_is_removed(emu: Emulator) -> None:
    source = launch_managed(emu, "Linux")
    request = {
        "instance_id": source,
        "mode": "generalize",
        "regions": [],
        "clone": {"subnet_id": "subnet-0123456789abcdef0"},
    }
    result = emu.run(request, name="no-subnet")
    assert result.status == "FAILED" and result.error == "CloneLaunchError"
    assert "InvalidSubnetID.NotFound" in result.cause and "clone.subnet_id" in result.cause
    assert run_images(emu, REGION, "no-subnet") == [] and emu.world.sent("SendCommand") == []
    assert instances(emu)[source]["State"]["Name"] == "running"


def test_generalize_with_a_specified_password_sends_only_the_parameter_name(emu: Emulator) -> None:
    source = launch_managed(emu, "Windows")
    windows = {"admin_password": "specify", "admin_password_parameter": "/images/win/admin"}
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": [], "windows": windows}, name="pw")
    assert result.status == "SUCCEEDED", result.cause
    (command,) = emu.world.sent("SendCommand")
    assert command.params["Parameters"] == {"AdminAccount": ["specify"], "AdminSecretParameter": ["/images/win/admin"]}
    script = document_script(emu, command.params["DocumentName"])
    assert "$passwordParameter = '{{ AdminSecretParameter }}'" in script and "Get-SSMParameterValue" in script


def test_cleanup_runs_on_the_instance_before_the_seed_image(emu: Emulator) -> None:
    source = launch_managed(emu, "Windows")
    result = emu.run(sample("request-generalize.json", instance_id=source), name="clean-gen")
    assert result.status == "SUCCEEDED", result.cause
    cleanup, generalize = emu.world.sent("SendCommand")
    assert cleanup.params["InstanceIds"] == [source] and "clean-up" in cleanup.params["Comment"]
    assert generalize.params["InstanceIds"] != [source] and "generalize" in generalize.params["Comment"]
    assert cleanup.at <= emu.world.sent("CreateImage")[0].at


def test_generalize_in_place_with_confirmation_images_the_instance_and_starts_it_again(emu: Emulator) -> None:
    source = launch_managed(emu, "Linux")
    emu.world.generalize_takes(5 * 60)
    result = emu.run(sample("request-generalize-in-place.json", instance_id=source), name="inplace")
    assert result.status == "SUCCEEDED", result.cause
    (command,) = emu.world.sent("SendCommand")
    assert command.params["InstanceIds"] == [source]
    assert command.params["DocumentName"] == "ami-factory-local-SanitizeLinuxDocument"
    (create,) = emu.world.sent("CreateImage")
    assert create.params["InstanceId"] == source and create.params["NoReboot"] in (True, "true")
    assert emu.world.sent("RunInstances")[1:] == [], "no clone in place"
    assert [r.params["InstanceIds"] for r in emu.world.sent("StartInstances")] == [[source]]
    assert result.output["instance_state"] == "running"


def test_generalize_in_place_without_confirmation_is_rejected_before_anything_happens(emu: Emulator) -> None:
    source = launch_managed(emu, "Windows")
    request = sample("request-generalize-in-place.json", instance_id=source, confirm_generalize_in_place=False)
    result = emu.run(request, name="unconfirmed")
    assert result.status == "FAILED" and result.error == "InvalidRequestError"
    assert "confirm_generalize_in_place" in result.cause_message and "mode generalize" in result.cause_message
    nothing_was_changed(emu)


@pytest.mark.parametrize("then_stops", [False, True], ids=["fails and keeps running", "fails then shuts down"])
def test_a_failing_sysprep_leaves_no_image_and_no_clone(emu: Emulator, then_stops: bool) -> None:
    source = launch_managed(emu, "Windows")
    emu.world.generalize_fails(seconds=4 * 60, then_stops=then_stops)
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": ["eu-west-1"]}, name="sysprep-broke")
    assert result.status == "FAILED" and result.error == "CommandFailedError"
    assert "ended Failed" in result.cause and "nothing is imaged" in result.cause
    assert len(emu.world.sent("CreateImage")) == 1, "only the seed; no image of a half-generalized clone"
    assert run_images(emu, REGION, "sysprep-broke") == []
    assert all(
        i["State"]["Name"] == "terminated"
        for i in instances(emu).values()
        if tags(i).get("ami-factory:role") == "clone"
    )
    assert instances(emu)[source]["State"]["Name"] == "running"
    assert tags(instances(emu)[source])["ami-factory:last-error"] == "CommandFailedError"


def test_a_clone_that_never_shuts_down_times_out_and_is_terminated(make_emulator) -> None:
    emu = make_emulator(GeneralizeMaxWaitSeconds="600")
    source = launch_managed(emu, "Linux")
    emu.world.generalize_never_stops()
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": []}, name="stuck")
    assert result.status == "FAILED" and result.error == "WaitTimeoutError"
    assert "raise GeneralizeMaxWaitSeconds" in result.cause
    waits = [
        e
        for e in result.history
        if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == "WaitForGeneralize"
    ]
    assert len(waits) == 1, "one wait, bounded by GeneralizeMaxWaitSeconds: no polling"
    assert run_images(emu, REGION, "stuck") == [] and len(emu.world.sent("TerminateInstances")) == 1
    assert instances(emu)[source]["State"]["Name"] == "running"


def test_a_clone_that_never_comes_online_in_ssm_times_out_and_is_terminated(make_emulator) -> None:
    emu = make_emulator(GeneralizeMaxWaitSeconds="300")
    source = launch_managed(emu, "Windows")
    emu.world.clones_take_to_register(3600)
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": []}, name="offline")
    assert result.status == "FAILED" and result.error == "WaitTimeoutError"
    assert "not yet reachable through SSM" in result.cause and "clone.instance_profile" in result.cause
    assert emu.world.sent("SendCommand") == [] and run_images(emu, REGION, "offline") == []
    assert len(emu.world.sent("TerminateInstances")) == 1


@pytest.mark.parametrize("mode", ["generalize", "generalize-in-place"])
def test_an_instance_ssm_does_not_manage_is_refused_before_anything_is_touched(emu: Emulator, mode: str) -> None:
    source = emu.launch_instance(name="unmanaged")
    request = {"instance_id": source, "mode": mode, "confirm_generalize_in_place": mode == "generalize-in-place"}
    result = emu.run(request, name="unmanaged")
    assert result.status == "FAILED" and result.error == "InstanceNotManagedError"
    assert "is not registered with SSM" in result.cause_message and "instance profile" in result.cause_message
    nothing_was_changed(emu)


def test_windows_options_on_a_linux_instance_are_refused(emu: Emulator) -> None:
    source = launch_managed(emu, "Linux")
    result = emu.run(
        {"instance_id": source, "mode": "generalize", "windows": {"admin_password": "do-nothing"}}, name="lin"
    )
    assert result.status == "FAILED" and result.error == "InvalidRequestError"
    assert "runs Linux" in result.cause_message
    nothing_was_changed(emu)


def test_an_instance_on_a_kms_key_ids_key_is_generalized_on_a_clone_launched_with_that_key(make_emulator) -> None:
    """The seed image carries the source's key, so EC2 uses it for LaunchClone when the clone boots
    (CreateGrant, Decrypt, ... via EC2): the KmsKeyIds statements of LaunchClone's role are what allow it."""
    emu = helpers.encrypting_emulator(make_emulator, regions=[REGION])
    keys = helpers.create_keys(emu, [helpers.ALLOWED_ACCOUNT], regions=[REGION])
    source = emu.launch_instance(name="golden", encrypted=True, kms_key_id=keys[REGION])
    emu.world.ssm_manage(source, "Linux")
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": []}, name="gen-cmk")
    assert result.status == "SUCCEEDED", result.cause
    used = {action for role, action, _ in emu.authorizer.used if role == "LaunchCloneFunctionRole"}
    assert {"kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext"} <= used


def test_without_overrides_the_clone_runs_in_the_sources_network_named_after_the_run(emu: Emulator) -> None:
    """The clone goes where the source is (its subnet and security groups, so it reaches what the
    source reaches), is named after the family and the run, and is launched with the run's own token."""
    from ami_factory.steps import client_token

    source = launch_managed(emu, "Linux")
    ec2 = emu.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="app", Description="the app's", VpcId=vpc)["GroupId"]
    ec2.modify_instance_attribute(InstanceId=source, Groups=[group])
    described = ec2.describe_instances(InstanceIds=[source])["Reservations"][0]["Instances"][0]
    result = emu.run({"instance_id": source, "mode": "generalize", "regions": [], "image_name": "web"}, name="gen-net")
    assert result.status == "SUCCEEDED", result.cause
    (launch,) = [r.params for r in emu.world.sent("RunInstances") if "clone" in str(r.params.get("TagSpecifications"))]
    assert launch["SubnetId"] == described["SubnetId"]
    assert launch["SecurityGroupIds"] == [g["GroupId"] for g in described["SecurityGroups"]] == [group]
    assert launch["ClientToken"] == client_token("gen-net", "clone")
    (instance_spec,) = [spec for spec in launch["TagSpecifications"] if spec["ResourceType"] == "instance"]
    assert {"Key": "Name", "Value": "web clone (AMI Factory run gen-net)"} in instance_spec["Tags"]
