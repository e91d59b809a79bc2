"""Block device edits at CreateImage: leave a data volume out, grow one, change its type, IOPS or
throughput; what EC2 would refuse after the stop is refused before anything changes, by name."""

from __future__ import annotations

from typing import Any

from ami_factory_local import Emulator
from tests.helpers import nothing_was_changed, run_images

DATA = {"/dev/sdf": 100, "/dev/sdg": 50, "/dev/sdh": 40}


def mappings(image: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["DeviceName"]: m["Ebs"] for m in image["BlockDeviceMappings"]}


def test_volumes_are_left_out_grown_and_retyped_in_every_regions_image(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web", data_volumes=DATA)
    volumes = [
        {"device_name": "/dev/sdg", "exclude": True},
        {"device_name": "/dev/sdf", "size_gib": 200, "volume_type": "gp3", "iops": 6000, "throughput": 500},
        {"device_name": "/dev/sda1", "size_gib": 30},
        # At EBS's edges: the size it has (not a shrink), and io1's 50 IOPS per GiB exactly.
        {"device_name": "/dev/sdh", "size_gib": 40, "volume_type": "io1", "iops": 2000},
    ]
    request = {"instance_id": instance_id, "regions": ["eu-west-1"], "volumes": volumes}

    result = emu.run(request, name="volumes")

    assert result.output["status"] == "SUCCEEDED", result.cause
    (sent,) = emu.world.sent("CreateImage")
    assert sent.params["BlockDeviceMappings"][0] == {"DeviceName": "/dev/sdg", "NoDevice": ""}
    for region in ("us-east-1", "eu-west-1"):
        (image,) = run_images(emu, region, "volumes")
        found = mappings(image)
        assert sorted(found) == ["/dev/sda1", "/dev/sdf", "/dev/sdh"], region
        assert (found["/dev/sdf"]["VolumeSize"], found["/dev/sdf"]["VolumeType"]) == (200, "gp3")
        assert (found["/dev/sdf"]["Iops"], found["/dev/sdf"]["Throughput"]) == (6000, 500)
        assert found["/dev/sda1"]["VolumeSize"] == 30
        assert (found["/dev/sdh"]["VolumeSize"], found["/dev/sdh"]["VolumeType"], found["/dev/sdh"]["Iops"]) == (
            40,
            "io1",
            2000,
        )


def test_what_ec2_would_refuse_is_refused_before_the_instance_stops(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web", data_volumes=DATA)
    for name, change, words in [
        ("unknown", {"device_name": "/dev/sdz", "size_gib": 10}, "has no EBS volume at /dev/sdz"),
        ("shrink", {"device_name": "/dev/sdf", "size_gib": 20}, "cannot shrink a volume below its snapshot"),
        ("root", {"device_name": "/dev/sda1", "exclude": True}, "root volume, which an image cannot leave out"),
        (
            "throughput",
            {"device_name": "/dev/sdf", "volume_type": "io2", "iops": 4000, "throughput": 300},
            "io2, which takes no throughput",
        ),
        ("iops", {"device_name": "/dev/sdf", "volume_type": "st1", "iops": 500}, "st1, which takes no iops"),
        ("gp3-iops", {"device_name": "/dev/sdf", "iops": 1000}, "gp3 gives 3000 IOPS at least"),
        ("gp3-throughput", {"device_name": "/dev/sdf", "throughput": 1000}, "needs at least 4000 IOPS"),
        ("hdd-small", {"device_name": "/dev/sdf", "volume_type": "st1"}, "st1 needs at least 125 GiB"),
        ("hdd-root", {"device_name": "/dev/sda1", "volume_type": "sc1", "size_gib": 200}, "cannot be a boot volume"),
        ("io1-ratio", {"device_name": "/dev/sdf", "volume_type": "io1", "iops": 6000}, "more than io1's 50 per GiB"),
    ]:
        result = emu.run({"instance_id": instance_id, "regions": [], "volumes": [change]}, name=name)
        assert result.status == "FAILED" and result.error == "InvalidRequestError", (name, result.cause)
        assert words in result.cause_message, (name, result.cause_message)
        assert change["device_name"] in result.cause_message, "the volume is named"
    nothing_was_changed(emu)


def test_the_world_refuses_what_ebs_refuses(emu: Emulator) -> None:
    """The world is held to EBS's own limits too, so a check AMI Factory missed fails here as on AWS."""
    instance_id = emu.launch_instance(name="web", data_volumes=DATA)
    ec2 = emu.client("ec2")
    for ebs in ({"Iops": 1000, "VolumeType": "gp3"}, {"Throughput": 1000, "VolumeType": "gp3"}, {"VolumeType": "st1"}):
        try:
            ec2.create_image(
                InstanceId=instance_id, Name="refused", BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": ebs}]
            )
        except ec2.exceptions.ClientError as error:
            assert error.response["Error"]["Code"] == "InvalidParameterValue", ebs
        else:
            raise AssertionError(f"EBS refuses {ebs}")
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["refused"]}])["Images"] == []


def test_the_world_refuses_a_shrink_as_ec2_does(emu: Emulator) -> None:
    """Held to EC2's answer too: a CreateImage that shrinks a volume makes no image."""
    instance_id = emu.launch_instance(name="web", data_volumes=DATA)
    ec2 = emu.client("ec2")
    try:
        ec2.create_image(
            InstanceId=instance_id,
            Name="shrunk",
            BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 10}}],
        )
    except ec2.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "InvalidBlockDeviceMapping"
    else:
        raise AssertionError("EC2 refuses a volume smaller than its snapshot")
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["shrunk"]}])["Images"] == []


def test_an_image_of_an_instance_with_data_volumes_has_a_snapshot_of_each_and_takes_them_all_away(
    emu: Emulator,
) -> None:
    """Without any volume change too (the world snapshots every volume, as EC2 does): a failed
    Region's copy goes with every snapshot it has."""
    instance_id = emu.launch_instance(name="web", data_volumes=DATA)
    emu.world.refuse("PutParameter", 1, region="eu-west-1")  # the copy exists, then its Region fails

    result = emu.run({"instance_id": instance_id, "regions": ["eu-west-1"]}, name="plain")

    assert result.output["status"] == "PARTIAL", result.cause
    (image,) = run_images(emu, "us-east-1", "plain")
    assert sorted(mappings(image)) == ["/dev/sda1", "/dev/sdf", "/dev/sdg", "/dev/sdh"]
    owned = emu.client("ec2", "eu-west-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert [s for s in owned if s.get("Description", "").startswith("Copied for")] == []
    assert len(emu.world.sent("DeleteSnapshot", "eu-west-1")) == 4, "the root's and every data volume's"
