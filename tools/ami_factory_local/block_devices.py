"""An image's volumes as EC2 makes them, where moto 5.2.5 falls short: CreateImage ignores
BlockDeviceMappings (every image is one 15 GiB root snapshot). For a CreateImage that sends
mappings, the world refuses what EC2 refuses (a volume shrunk below its snapshot, the root left out,
a change to a device the instance does not have), snapshots each volume kept, and describes the
image with its real mappings; a copy of such an image has them too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.utils import random_snapshot_id


def refusal(backend: Any, instance_id: str, mappings: list[dict[str, Any]]) -> EC2ClientError | None:
    """What EC2 answers to these mappings for this instance, before it makes anything."""
    instance = backend.get_instance(instance_id)
    attached = {device: backend.get_volume(bdt.volume_id) for device, bdt in instance.block_device_mapping.items()}
    for mapping in mappings:
        device = mapping["DeviceName"]
        volume = attached.get(device)
        if volume is None:
            if "NoDevice" not in mapping and not (mapping.get("Ebs") or {}).get("VolumeSize"):
                return EC2ClientError("InvalidBlockDeviceMapping", f"The device {device} has no volume to change")
            continue
        if "NoDevice" in mapping and device == instance.root_device_name:
            return EC2ClientError("InvalidBlockDeviceMapping", f"The root device {device} cannot be left out")
        ebs = mapping.get("Ebs") or {}
        size = int(ebs.get("VolumeSize") or volume.size)
        if size < volume.size:
            return EC2ClientError(
                "InvalidBlockDeviceMapping",
                f"Volume of size {size}GB is smaller than snapshot of {device}, expect size >= {volume.size}GB",
            )
        kind = ebs.get("VolumeType") or volume.volume_type
        iops = int(ebs["Iops"]) if ebs.get("Iops") else None
        throughput = int(ebs["Throughput"]) if ebs.get("Throughput") else None
        if problem := ebs_refusal(device, kind, size, iops, throughput, device == instance.root_device_name):
            return EC2ClientError("InvalidParameterValue", problem)
    return None


def ebs_refusal(device: str, kind: str, size: int, iops: int | None, throughput: int | None, root: bool) -> str | None:
    """EBS's own limits, as EC2 states them (not AMI Factory's code: the world is AWS)."""
    if kind in ("st1", "sc1") and root:
        return f"{kind} volumes cannot be boot volumes ({device})"
    minimum = {"st1": 125, "sc1": 125, "io1": 4, "io2": 4}.get(kind, 1)
    if size < minimum:
        return f"Volume size {size} is below the minimum of {minimum} GiB for {kind}"
    if kind == "gp3" and iops is not None and iops < 3000:
        return "gp3 volumes take at least 3000 IOPS"
    ratio = {"gp3": 500, "io1": 50, "io2": 500}.get(kind)
    if ratio and iops is not None and iops > ratio * size:
        return f"Iops to volume size ratio of {iops / size:.1f} is too high; maximum is {ratio}"
    if kind == "gp3" and throughput is not None and throughput > (iops or 3000) / 4:
        return f"Throughput ({throughput}) is too high for {iops or 3000} IOPS: at most 0.25 MiB/s per IOPS"
    return None


def created(backend: Any, instance_id: str, image: Any, mappings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image's mappings: each of the instance's volumes not left out, snapshotted, with the changes."""
    instance = backend.get_instance(instance_id)
    changes = {mapping["DeviceName"]: mapping for mapping in mappings}
    result = []
    for device, bdt in instance.block_device_mapping.items():
        change = changes.get(device, {})
        if "NoDevice" in change:
            continue
        volume = backend.get_volume(bdt.volume_id)
        ebs = change.get("Ebs") or {}
        is_root = device == instance.root_device_name
        snapshot = (
            image.ebs_snapshot
            if is_root
            else backend.create_snapshot(volume.id, f"Created by CreateImage({instance_id}) for {image.id}")
        )
        snapshot.encrypted, snapshot.kms_key_id = volume.encrypted, volume.kms_key_id
        result.append(
            {
                "DeviceName": device,
                "Ebs": {
                    "SnapshotId": snapshot.id,
                    "VolumeSize": int(ebs.get("VolumeSize") or volume.size),
                    "VolumeType": ebs.get("VolumeType") or volume.volume_type,
                    "DeleteOnTermination": True,
                    "Encrypted": bool(volume.encrypted),
                    **({"Iops": int(ebs["Iops"])} if ebs.get("Iops") else {}),
                    **({"Throughput": int(ebs["Throughput"])} if ebs.get("Throughput") else {}),
                },
            }
        )
    return result


def snapshot_copier(backend: Any, source_backend: Any, image: Any) -> Callable[[str], Any]:
    """Copies one of the source image's snapshots into ``backend`` for the copy ``image`` (moto's
    copy_snapshot looks only in the caller's own account; a shared image's snapshots are another's)."""

    def copy(snapshot_id: str) -> Any:
        source = source_backend.snapshots[snapshot_id]
        snapshot = Snapshot(
            backend,
            random_snapshot_id(),
            volume=source.volume,
            description=f"Copied for {image.id}",
            encrypted=source.encrypted,
            kms_key_id=source.kms_key_id,
        )
        backend.snapshots[snapshot.id] = snapshot
        return snapshot

    return copy


def copied(
    copy_snapshot: Callable[[str], Any], image: Any, source: Any, source_mappings: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A copy's mappings: the source's, each snapshot copied (the root's is the copy's own)."""
    result = []
    for mapping in source_mappings:
        ebs = dict(mapping["Ebs"])
        if ebs["SnapshotId"] == source.ebs_snapshot.id:
            ebs["SnapshotId"] = image.ebs_snapshot.id
        else:
            ebs["SnapshotId"] = copy_snapshot(ebs["SnapshotId"]).id
        result.append({**mapping, "Ebs": ebs})
    return result


def snapshots(backend: Any, mappings: list[dict[str, Any]]) -> list[Any]:
    return [backend.snapshots[m["Ebs"]["SnapshotId"]] for m in mappings if m["Ebs"]["SnapshotId"] in backend.snapshots]
