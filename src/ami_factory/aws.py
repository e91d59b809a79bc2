"""Small adapters over the EC2 and SSM APIs: one method per thing the workflow needs.

They translate AWS error codes into the workflow's named errors, so the state machine can retry the
transient ones and report the rest by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from .clients import Credentials, client
from .errors import (
    CopySlotBusyError,
    ImageNotVisibleYetError,
    InstanceNotFoundError,
    InstanceStateConflictError,
    InvalidRequestError,
    ThrottledError,
)
from .request import ShareTargets, VolumeChange

if TYPE_CHECKING:
    from mypy_boto3_ec2.literals import InstanceTypeType, ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        BlockDeviceMappingTypeDef,
        CreateImageRequestTypeDef,
        EbsBlockDeviceTypeDef,
        FilterTypeDef,
        ImageTypeDef,
        InstanceTypeDef,
        LaunchPermissionTypeDef,
        RunInstancesRequestTypeDef,
        TagSpecificationTypeDef,
        TagTypeDef,
        VolumeTypeDef,
    )
    from mypy_boto3_ssm.type_defs import InstanceInformationTypeDef

THROTTLING_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException", "ResourceLimitExceeded"}
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_text(error: ClientError) -> str:
    """``Code: message``, as AWS gave them: what a clear error quotes from the refusal."""
    return f"{error_code(error)}: {error.response.get('Error', {}).get('Message', '')}"


def refusal_text(error: Exception) -> str:
    """What a refusal says, for a person reading what was left and why: AWS's code and message, or our
    error's name and message."""
    return error_text(error) if isinstance(error, ClientError) else f"{type(error).__name__}: {error}"


@contextmanager
def translated_errors(operation: str) -> Iterator[None]:
    """Turn the AWS errors that retrying can fix into the names the ASL retries."""
    try:
        yield
    except ClientError as error:
        code = error_code(error)
        if code in THROTTLING_CODES:
            raise ThrottledError(
                f"{operation} was throttled ({code}); the state machine retries with backoff"
            ) from error
        if code == "InvalidAMIID.NotFound":
            raise ImageNotVisibleYetError(
                f"{operation}: the image is not visible yet (InvalidAMIID.NotFound right after create/copy is normal)"
            ) from error
        if code == "IncorrectInstanceState":
            raise InstanceStateConflictError(f"{operation}: the instance is changing state; retrying") from error
        raise


@contextmanager
def _copy_quota_full_is_a_busy_slot(region: str) -> Iterator[None]:
    """EC2's copy quota into a Region is full (ResourceLimitExceeded: 50 copies in flight, or 25 from
    one source Region), whoever holds it: no copy started, so the copy waits as for a copy slot rather
    than as for a throttled call, whose few retries would fail its Region within minutes."""
    try:
        yield
    except ClientError as error:
        if error_code(error) != "ResourceLimitExceeded":
            raise
        raise CopySlotBusyError(
            f"waiting for a copy slot in {region}: EC2's copy quota into {region} is full ({error_text(error)}); "
            f"copies of other tools or stacks are in flight there, and the copy starts when one settles"
        ) from error


def tag_list(tags: Mapping[str, str]) -> list[TagTypeDef]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def encrypted_keys(volumes: Mapping[str, VolumeTypeDef]) -> dict[str, str]:
    """The encrypted volumes and their keys: an image's snapshots use the same keys."""
    return {v["VolumeId"]: str(v.get("KmsKeyId", "")) for v in volumes.values() if v.get("Encrypted")}


def block_device_mapping(volume: VolumeChange) -> BlockDeviceMappingTypeDef:
    """CreateImage's word for a volume change: NoDevice leaves it out; Ebs overrides what is given."""
    if volume.exclude:
        return {"DeviceName": volume.device_name, "NoDevice": ""}
    ebs: EbsBlockDeviceTypeDef = {}
    if volume.size_gib is not None:
        ebs["VolumeSize"] = volume.size_gib
    if volume.volume_type is not None:
        ebs["VolumeType"] = volume.volume_type
    if volume.iops is not None:
        ebs["Iops"] = volume.iops
    if volume.throughput is not None:
        ebs["Throughput"] = volume.throughput
    return {"DeviceName": volume.device_name, "Ebs": ebs}


def tags_of(resource: ImageTypeDef | InstanceTypeDef) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def tag_specifications(
    tags: Mapping[str, str], kinds: tuple[ResourceTypeType, ...] = ("image", "snapshot")
) -> list[TagSpecificationTypeDef]:
    """The same tags on every resource a call makes: an image and its snapshots (copies do not inherit
    snapshot tags), an instance and its volumes."""
    return [{"ResourceType": kind, "Tags": tag_list(tags)} for kind in kinds]


# The states in which an image will never become available: its wait ends with ImageFailedError.
FAILED_IMAGE_STATES = frozenset({"failed", "invalid", "error", "deregistered", "disabled"})


def snapshots_of(image: ImageTypeDef) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


def volume_gib(image: ImageTypeDef) -> int:
    """An image's size: its volumes' provisioned GiB (what its snapshots can grow to)."""
    return sum(int(m["Ebs"].get("VolumeSize", 0)) for m in image.get("BlockDeviceMappings", []) if "Ebs" in m)


def launch_permissions(share: ShareTargets) -> list[LaunchPermissionTypeDef]:
    permissions: list[LaunchPermissionTypeDef] = [{"UserId": account} for account in share.accounts]
    permissions += [{"OrganizationArn": arn} for arn in share.organizations]
    permissions += [{"OrganizationalUnitArn": arn} for arn in share.organizational_units]
    if share.public:
        permissions.append({"Group": "all"})
    return permissions


class Ec2:
    def __init__(self, region: str, credentials: Credentials | None = None) -> None:
        """``credentials``: act as a role assumed in another account (its copies of the images)."""
        self.region = region
        self._ec2 = client("ec2", region) if credentials is None else client("ec2", region, credentials)

    # --- instances ---------------------------------------------------------------------------

    def describe_instance(self, instance_id: str) -> InstanceTypeDef:
        try:
            with translated_errors("DescribeInstances"):
                reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as error:
            if error_code(error).startswith("InvalidInstanceID"):
                raise InstanceNotFoundError(
                    f"instance {instance_id} does not exist in {self.region}: check the id, and that you "
                    f"start AMI Factory in the instance's Region"
                ) from error
            raise
        instances = [instance for reservation in reservations for instance in reservation["Instances"]]
        if not instances:
            raise InstanceNotFoundError(f"instance {instance_id} does not exist in {self.region}: check the id")
        return instances[0]

    def instance_state(self, instance_id: str) -> str:
        return str(self.describe_instance(instance_id)["State"]["Name"])

    def stop_instance(self, instance_id: str) -> str:
        """StopInstances; the state EC2 says the instance is in right after (``stopping``, or ``stopped``)."""
        with translated_errors("StopInstances"):
            changes = self._ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"]
        return str(changes[0]["CurrentState"]["Name"])

    def start_instance(self, instance_id: str) -> str:
        """StartInstances; the state EC2 says the instance is in right after (``pending``)."""
        with translated_errors("StartInstances"):
            changes = self._ec2.start_instances(InstanceIds=[instance_id])["StartingInstances"]
        return str(changes[0]["CurrentState"]["Name"])

    def tag_resource(self, resource_id: str, tags: Mapping[str, str]) -> None:
        with translated_errors("CreateTags"):
            self._ec2.create_tags(Resources=[resource_id], Tags=tag_list(tags))

    def untag_resource(self, resource_id: str, keys: list[str]) -> None:
        with translated_errors("DeleteTags"):
            self._ec2.delete_tags(Resources=[resource_id], Tags=[{"Key": key} for key in keys])

    def enabled_regions(self) -> list[str]:
        """The Regions enabled in the account (opted in, or not needing it)."""
        with translated_errors("DescribeRegions"):
            described = self._ec2.describe_regions(
                Filters=[{"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}]
            )
        return sorted(region["RegionName"] for region in described["Regions"])

    def instances_tagged(self, key: str) -> list[InstanceTypeDef]:
        """Running or stopped instances carrying the tag ``key``, whatever its value (EC2 matches
        values case-sensitively; the caller decides what a value means)."""
        return self._instances([{"Name": "tag-key", "Values": [key]}], ["running", "stopped"])

    def _instances(self, filters: list[FilterTypeDef], states: list[str]) -> list[InstanceTypeDef]:
        filters = [*filters, {"Name": "instance-state-name", "Values": states}]
        with translated_errors("DescribeInstances"):
            pages = self._ec2.get_paginator("describe_instances").paginate(Filters=filters)
            return [
                instance
                for page in pages
                for reservation in page["Reservations"]
                for instance in reservation["Instances"]
            ]

    def launch_instance(
        self,
        image_id: str,
        instance_type: str,
        subnet_id: str | None,
        security_group_ids: list[str],
        instance_profile: str | None,
        client_token: str,
        tags: Mapping[str, str],
        imdsv2_only: bool = False,
    ) -> tuple[str, str]:
        """(instance id, state) as EC2 answered: a repeated ClientToken answers with the instance it launched."""
        request: RunInstancesRequestTypeDef = {
            "ImageId": image_id,
            # A cast has no effect at run time: its type's name is not a decision.
            "InstanceType": cast("InstanceTypeType", instance_type),  # pragma: no mutate
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token,
            "TagSpecifications": tag_specifications(tags, ("instance", "volume")),
        }
        if subnet_id:
            request["SubnetId"] = subnet_id
        if security_group_ids:
            request["SecurityGroupIds"] = security_group_ids
        if imdsv2_only:
            request["MetadataOptions"] = {"HttpTokens": "required"}
        if instance_profile:
            by_arn = instance_profile.startswith("arn:")
            request["IamInstanceProfile"] = {"Arn": instance_profile} if by_arn else {"Name": instance_profile}
        with translated_errors("RunInstances"):
            response = self._ec2.run_instances(**request)
        launched = response["Instances"][0]
        return str(launched["InstanceId"]), str(launched["State"]["Name"])

    def status_checks(self, instance_id: str) -> tuple[str, str]:
        """(system, instance) status: ``ok``, ``impaired``, ``initializing``, ... (``initializing`` until known)."""
        with translated_errors("DescribeInstanceStatus"):
            statuses = self._ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"]
        if not statuses:  # just launched: EC2 does not list it yet (only a progress message reads the words)
            return ("initializing", "initializing")  # pragma: no mutate
        return (str(statuses[0]["SystemStatus"]["Status"]), str(statuses[0]["InstanceStatus"]["Status"]))

    def terminate_instance(self, instance_id: str) -> None:
        """Terminate; an instance already gone is fine (a retried clean-up)."""
        with translated_errors("TerminateInstances"):
            try:
                self._ec2.terminate_instances(InstanceIds=[instance_id])
            except ClientError as error:
                if error_code(error) != "InvalidInstanceID.NotFound":
                    raise

    # --- images ------------------------------------------------------------------------------

    def find_image_by_name(self, name: str) -> ImageTypeDef | None:
        """Image names are unique per account and Region: the lookup that makes create idempotent."""
        with translated_errors("DescribeImages"):
            images = self._ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
        return images[0] if images else None

    def own_images(self, image_ids: list[str]) -> dict[str, ImageTypeDef]:
        """The account's own images among ``image_ids``, by id; ids that are gone are simply absent
        (filtered by ``image-id``: DescribeImages with ImageIds fails on the first missing one)."""
        found: dict[str, ImageTypeDef] = {}
        for start in range(0, len(image_ids), 100):
            filters: list[FilterTypeDef] = [{"Name": "image-id", "Values": image_ids[start : start + 100]}]
            with translated_errors("DescribeImages"):
                for image in self._ec2.describe_images(Owners=["self"], Filters=filters)["Images"]:
                    found[image["ImageId"]] = image
        return found

    def image_references(self, image_ids: list[str]) -> dict[str, list[str]]:
        """Launch templates, SSM parameters and instances that use each image (DescribeImageReferences)."""
        found: dict[str, list[str]] = {}
        for start in range(0, len(image_ids), 10):
            with translated_errors("DescribeImageReferences"):
                pages = self._ec2.get_paginator("describe_image_references").paginate(
                    ImageIds=image_ids[start : start + 10], IncludeAllResourceTypes=True
                )
                for page in pages:
                    for reference in page.get("ImageReferences", []):
                        found.setdefault(reference["ImageId"], []).append(
                            f"{reference['ResourceType']} {reference['Arn']}"
                        )
        return found

    def disable_image(self, image_id: str) -> None:
        with translated_errors("DisableImage"):
            self._ec2.disable_image(ImageId=image_id)

    def image_gib(self, image_id: str) -> int:
        return volume_gib(self.describe_image(image_id))

    def describe_image(self, image_id: str) -> ImageTypeDef:
        with translated_errors("DescribeImages"):
            images = self._ec2.describe_images(ImageIds=[image_id])["Images"]
        if not images:
            raise ImageNotVisibleYetError(f"image {image_id} is not visible in {self.region} yet")
        return images[0]

    def create_image(
        self,
        instance_id: str,
        name: str,
        description: str,
        no_reboot: bool,
        tags: Mapping[str, str],
        volumes: Sequence[VolumeChange] = (),
    ) -> str:
        request: CreateImageRequestTypeDef = {
            "InstanceId": instance_id,
            "Name": name,
            "Description": description,
            "NoReboot": no_reboot,
            "TagSpecifications": tag_specifications(tags),
        }
        if volumes:
            request["BlockDeviceMappings"] = [block_device_mapping(volume) for volume in volumes]
        with translated_errors("CreateImage"):
            response = self._ec2.create_image(**request)
        return str(response["ImageId"])

    def launch_template_default_version(self, launch_template_id: str) -> int:
        missing = f"launch template {launch_template_id} does not exist in {self.region}: check its id and Region"
        try:
            with translated_errors("DescribeLaunchTemplates"):
                found = self._ec2.describe_launch_templates(LaunchTemplateIds=[launch_template_id])["LaunchTemplates"]
        except ClientError as error:
            if error_code(error).startswith("InvalidLaunchTemplateId"):
                raise InvalidRequestError(missing) from error
            raise
        if not found:
            raise InvalidRequestError(missing)
        return int(found[0]["DefaultVersionNumber"])

    def create_launch_template_version(
        self, launch_template_id: str, source_version: int, image_id: str, client_token: str, description: str
    ) -> int:
        """A new version of the template: its ``source_version`` with the image; a repeated ClientToken
        answers with the version it made."""
        with translated_errors("CreateLaunchTemplateVersion"):
            response = self._ec2.create_launch_template_version(
                LaunchTemplateId=launch_template_id,
                SourceVersion=str(source_version),
                LaunchTemplateData={"ImageId": image_id},
                ClientToken=client_token,
                VersionDescription=description,
            )
        return int(response["LaunchTemplateVersion"]["VersionNumber"])

    def set_launch_template_default(self, launch_template_id: str, version: int) -> None:
        with translated_errors("ModifyLaunchTemplate"):
            self._ec2.modify_launch_template(LaunchTemplateId=launch_template_id, DefaultVersion=str(version))

    def delete_launch_template_version(self, launch_template_id: str, version: int) -> None:
        """EC2 answers refusals per version in a successful call: one that no longer exists is gone."""
        with translated_errors("DeleteLaunchTemplateVersions"):
            response = self._ec2.delete_launch_template_versions(
                LaunchTemplateId=launch_template_id, Versions=[str(version)]
            )
        for refused in response.get("UnsuccessfullyDeletedLaunchTemplateVersions", []):
            code = refused.get("ResponseError", {}).get("Code", "")
            if code != "launchTemplateVersionDoesNotExist":
                raise InvalidRequestError(
                    f"EC2 would not delete version {version} of launch template {launch_template_id} ({code}: "
                    f"{refused.get('ResponseError', {}).get('Message', '')})"
                )

    def enable_fast_launch(self, image_id: str, snapshot_count: int, max_parallel_launches: int) -> str:
        """Windows fast launch: EC2 pre-provisions ``snapshot_count`` snapshots; returns its state."""
        with translated_errors("EnableFastLaunch"):
            response = self._ec2.enable_fast_launch(
                ImageId=image_id,
                ResourceType="snapshot",
                SnapshotConfiguration={"TargetResourceCount": snapshot_count},
                MaxParallelLaunches=max_parallel_launches,
            )
        return str(response.get("State", "enabling"))

    def turn_off_fast_launch(self, image_id: str) -> None:
        """Before the image goes: EC2 removes its pre-provisioned snapshots (Force: whatever it meets)."""
        with translated_errors("DescribeFastLaunchImages"):
            found = self._ec2.describe_fast_launch_images(ImageIds=[image_id])["FastLaunchImages"]
        if any(image.get("State") in ("enabling", "enabled", "enabling-failed", "enabled-failed") for image in found):
            with translated_errors("DisableFastLaunch"):
                self._ec2.disable_fast_launch(ImageId=image_id, Force=True)

    def require_imds_support(self, image_id: str, version: str) -> None:
        """ImdsSupport: instances launched from the image get HttpTokens required. EC2 cannot unset it."""
        with translated_errors("ModifyImageAttribute"):
            self._ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": version})

    def copy_image(
        self,
        source_region: str,
        source_image_id: str,
        name: str,
        description: str,
        client_token: str,
        tags: Mapping[str, str],
        completion_minutes: int | None = None,
        kms_key_id: str | None = None,
        encrypted: bool = False,
    ) -> str:
        """``kms_key_id``: encrypted with that key; ``encrypted`` without one: with the account's default EBS key."""
        request: dict[str, Any] = {
            "SourceRegion": source_region,
            "SourceImageId": source_image_id,
            "Name": name,
            "Description": description,
            "ClientToken": client_token,
            # The tool's own tags and the user's, on the image and its snapshots (CopyImageTags would
            # copy the image's tags only, never the snapshots').
            "CopyImageTags": False,
            "TagSpecifications": tag_specifications(tags),
        }
        if completion_minutes:
            request["SnapshotCopyCompletionDurationMinutes"] = completion_minutes
        if kms_key_id or encrypted:
            request["Encrypted"] = True
        if kms_key_id:
            request["KmsKeyId"] = kms_key_id
        with translated_errors("CopyImage"), _copy_quota_full_is_a_busy_slot(self.region):
            response = self._ec2.copy_image(**request)
        return str(response["ImageId"])

    def add_launch_permissions(self, image_id: str, share: ShareTargets) -> None:
        permissions = launch_permissions(share)
        if not permissions:
            return
        with translated_errors("ModifyImageAttribute"):
            self._ec2.modify_image_attribute(
                ImageId=image_id, Attribute="launchPermission", LaunchPermission={"Add": permissions}
            )

    def add_snapshot_permissions(self, snapshot_ids: list[str], accounts: list[str], public: bool) -> None:
        """createVolumePermission: what recipients need to copy the image, not to launch it."""
        for snapshot_id in snapshot_ids:
            with translated_errors("ModifySnapshotAttribute"):
                self._ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot_id,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=accounts,
                    GroupNames=["all"] if public else [],
                )

    def image_block_public_access(self) -> str:
        """``unblocked``, or ``block-new-sharing`` (the default for new accounts)."""
        with translated_errors("GetImageBlockPublicAccessState"):
            return str(self._ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"])

    def public_image_count(self) -> int:
        with translated_errors("DescribeImages"):
            filters: list[FilterTypeDef] = [{"Name": "is-public", "Values": ["true"]}]
            return len(self._ec2.describe_images(Owners=["self"], Filters=filters)["Images"])

    def volumes_by_device(self, instance: InstanceTypeDef) -> dict[str, VolumeTypeDef]:
        """The instance's EBS volumes, by the device name it has them at (one DescribeVolumes)."""
        devices = {m["Ebs"]["VolumeId"]: m["DeviceName"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m}
        if not devices:
            return {}
        with translated_errors("DescribeVolumes"):
            volumes = self._ec2.describe_volumes(VolumeIds=list(devices))["Volumes"]
        return {devices[volume["VolumeId"]]: volume for volume in volumes if volume["VolumeId"] in devices}

    def encrypted_snapshots(self, image_id: str) -> dict[str, str]:
        """The image's encrypted snapshots and their keys: its copies are encrypted as they are."""
        snapshot_ids = snapshots_of(self.describe_image(image_id))
        if not snapshot_ids:
            return {}
        with translated_errors("DescribeSnapshots"):
            snapshots = self._ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
        return {s["SnapshotId"]: str(s.get("KmsKeyId", "")) for s in snapshots if s.get("Encrypted")}

    def enable_deprecation(self, image_id: str, deprecate_at: str) -> None:
        with translated_errors("EnableImageDeprecation"):
            self._ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=deprecate_at)

    def enable_deregistration_protection(self, image_id: str, cooldown: bool) -> None:
        with translated_errors("EnableImageDeregistrationProtection"):
            self._ec2.enable_image_deregistration_protection(ImageId=image_id, WithCooldown=cooldown)

    def disable_deregistration_protection(self, image_id: str) -> None:
        with translated_errors("DisableImageDeregistrationProtection"):
            self._ec2.disable_image_deregistration_protection(ImageId=image_id)

    def delete_image(self, image: ImageTypeDef) -> list[str]:
        """Deregister the image and delete its snapshots; returns the snapshot ids deleted."""
        left = self.deregister_image(image["ImageId"], snapshots_of(image))
        return self.delete_snapshots(left)

    def image(self, image_id: str) -> ImageTypeDef | None:
        """The image as EC2 describes it; none once it is gone (deregistered, or never visible)."""
        with translated_errors("DescribeImages"):
            try:
                images = self._ec2.describe_images(ImageIds=[image_id])["Images"]
            except ClientError as error:
                if not error_code(error).startswith("InvalidAMIID"):
                    raise
                images = []
        return images[0] if images else None

    def deregister_image(self, image_id: str, snapshot_ids: list[str]) -> list[str]:
        """Deregister with DeleteAssociatedSnapshots; an image already gone is fine (a retried clean-up).
        Returns the snapshots among ``snapshot_ids`` that EC2 did not report deleted (all of them when
        it reports nothing): the caller deletes those itself."""
        with translated_errors("DeregisterImage"):
            try:
                response = self._ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
            except ClientError as error:
                if not error_code(error).startswith("InvalidAMIID"):
                    raise
                return snapshot_ids
        deleted = {
            result.get("SnapshotId")
            for result in response.get("DeleteSnapshotResults", [])
            if result.get("ReturnCode") == "success"
        }
        return [snapshot for snapshot in snapshot_ids if snapshot not in deleted]

    def delete_snapshots(self, snapshot_ids: list[str]) -> list[str]:
        for snapshot_id in snapshot_ids:
            with translated_errors("DeleteSnapshot"):
                try:
                    self._ec2.delete_snapshot(SnapshotId=snapshot_id)
                except ClientError as error:
                    # DeleteAssociatedSnapshots may already have removed it.
                    if error_code(error) != "InvalidSnapshot.NotFound":
                        raise
        return snapshot_ids


class Ssm:
    def __init__(self, region: str, credentials: Credentials | None = None) -> None:
        self.region = region
        self._ssm = client("ssm", region) if credentials is None else client("ssm", region, credentials)

    def instance_information(self, instance_id: str) -> InstanceInformationTypeDef | None:
        """The SSM agent's registration for the instance (PingStatus, PlatformType), if it has one."""
        with translated_errors("DescribeInstanceInformation"):
            found = self._ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
        return found["InstanceInformationList"][0] if found["InstanceInformationList"] else None

    def send_command(self, instance_id: str, document: str, parameters: Mapping[str, list[str]], comment: str) -> str:
        with translated_errors("SendCommand"):
            response = self._ssm.send_command(
                InstanceIds=[instance_id], DocumentName=document, Parameters=dict(parameters), Comment=comment[:100]
            )
        return str(response["Command"]["CommandId"])

    def command_status(self, command_id: str, instance_id: str) -> str:
        """Pending, InProgress, Success, Failed, Cancelled, TimedOut, ... (Pending until SSM knows the invocation)."""
        try:
            with translated_errors("GetCommandInvocation"):
                return str(self._ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)["Status"])
        except ClientError as error:
            if error_code(error) == "InvocationDoesNotExist":  # right after SendCommand: eventual consistency
                return "Pending"
            raise

    def parameter_value(self, name: str) -> str | None:
        try:
            with translated_errors("GetParameter"):
                return str(self._ssm.get_parameter(Name=name)["Parameter"]["Value"])
        except ClientError as error:
            if error_code(error) == "ParameterNotFound":
                return None
            raise

    def delete_parameter(self, name: str) -> None:
        try:
            with translated_errors("DeleteParameter"):
                self._ssm.delete_parameter(Name=name)
        except ClientError as error:
            if error_code(error) != "ParameterNotFound":
                raise

    def put_image_parameter(self, name: str, image_id: str, description: str) -> int:
        """``aws:ec2:image`` makes SSM check the id, and CloudFormation resolve it as an AMI id."""
        with translated_errors("PutParameter"):
            response = self._ssm.put_parameter(
                Name=name,
                Value=image_id,
                Type="String",
                DataType="aws:ec2:image",
                Description=description[:1024],
                Overwrite=True,
            )
        return int(response["Version"])


class Sts:
    def __init__(self, region: str) -> None:
        self.region = region
        self._sts = client("sts", region)

    def assume_role(
        self, role_arn: str, external_id: str, session_name: str, tags: Mapping[str, str] | None = None
    ) -> Credentials:
        """A role in another account, for one step: a Lambda's AssumeRole is role chaining, whose
        sessions last an hour at most, so every step assumes it again. ``tags``: session tags."""
        with translated_errors("AssumeRole"):
            answer = self._sts.assume_role(
                RoleArn=role_arn,
                ExternalId=external_id,
                RoleSessionName=session_name[:64],
                DurationSeconds=900,
                Tags=[{"Key": key, "Value": value} for key, value in (tags or {}).items()],
            )["Credentials"]
        return Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])


class Kms:
    def __init__(self, region: str) -> None:
        self._kms = client("kms", region)

    def is_aws_managed(self, key_id: str) -> bool:
        """``aws/ebs`` and its kind: keys AWS manages, which no other account can ever be allowed to use.
        An encrypted volume without a key id uses the Region's default, ``aws/ebs``."""
        with translated_errors("DescribeKey"):
            metadata = self._kms.describe_key(KeyId=key_id or "alias/aws/ebs")["KeyMetadata"]
        return metadata.get("KeyManager") == "AWS"

    def key_arn(self, key: str) -> str:
        """The key's ARN from any of its names: GetKeyPolicy and ListGrants take no alias."""
        with translated_errors("DescribeKey"):
            return str(self._kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"])

    def policy(self, key: str) -> dict[str, Any]:
        with translated_errors("GetKeyPolicy"):
            return dict(json.loads(self._kms.get_key_policy(KeyId=self.key_arn(key), PolicyName="default")["Policy"]))

    def grantees(self, key: str) -> list[str]:
        with translated_errors("ListGrants"):
            pages = self._kms.get_paginator("list_grants").paginate(KeyId=self.key_arn(key))
            return [str(grant.get("GranteePrincipal", "")) for page in pages for grant in page["Grants"]]


class Notifications:
    """Where a finished run is announced: the SNS topic (people) and EventBridge (automation)."""

    def __init__(self, region: str) -> None:
        self._sns = client("sns", region)
        self._events = client("events", region)

    def publish(self, topic_arn: str, subject: str, message: str) -> None:
        with translated_errors("Publish"):
            self._sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=message)

    def put_event(self, bus: str, source: str, detail_type: str, detail: str, resources: list[str]) -> None:
        with translated_errors("PutEvents"):
            response = self._events.put_events(
                Entries=[
                    {
                        "EventBusName": bus,
                        "Source": source,
                        "DetailType": detail_type,
                        "Detail": detail,
                        "Resources": resources,
                    }
                ]
            )
        if response.get("FailedEntryCount"):
            raise RuntimeError(f"EventBridge refused the event: {response['Entries']}")


class StepFunctions:
    def __init__(self, region: str) -> None:
        self._sfn = client("stepfunctions", region)

    def is_running(self, execution_arn: str) -> bool:
        """Whether the execution is still going (a lock held by one that is not can be taken over)."""
        found = self.execution(execution_arn)
        return found is not None and found[0] == "RUNNING"

    def execution(self, execution_arn: str) -> tuple[str, datetime] | None:
        """(status, start date) of the execution, or None when there is none."""
        try:
            with translated_errors("DescribeExecution"):
                described = self._sfn.describe_execution(executionArn=execution_arn)
        except ClientError as error:
            if error_code(error) == "ExecutionDoesNotExist":
                return None
            raise
        return str(described["status"]), described["startDate"]

    def start_execution(self, state_machine_arn: str, name: str, payload: Mapping[str, Any]) -> bool:
        """Start a run; False when an execution of that name exists already (a redelivered trigger)."""
        try:
            with translated_errors("StartExecution"):
                self._sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
        except ClientError as error:
            if error_code(error) == "ExecutionAlreadyExists":
                return False
            raise
        return True

    def end_task(self, token: str, output: str | None = None, error: str = "", cause: str = "") -> bool:
        """End a waiting task: with ``output`` (SendTaskSuccess) or with ``error`` and ``cause``
        (SendTaskFailure). False when the task is over already (a duplicate or late event, or the
        fallback sweep got there first): Step Functions answers TaskTimedOut, TaskDoesNotExist or
        InvalidToken, and none of them is a failure here."""
        try:
            if output is not None:
                with translated_errors("SendTaskSuccess"):
                    self._sfn.send_task_success(taskToken=token, output=output)
            else:
                with translated_errors("SendTaskFailure"):
                    self._sfn.send_task_failure(taskToken=token, error=error, cause=cause)
        except ClientError as error_:
            if error_code(error_) in ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken"):
                return False
            raise
        return True


class EventRules:
    """EventBridge rules on a Region's default bus (the forwarding of AWS's events to the home Region)."""

    def __init__(self, region: str) -> None:
        self._events = client("events", region)

    def forward(self, rule: str, pattern: Mapping[str, Any], bus_arn: str, role_arn: str, description: str) -> None:
        """The rule sends what ``pattern`` matches to ``bus_arn`` as ``role_arn`` (made or replaced)."""
        with translated_errors("PutRule"):
            self._events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED", Description=description)
        with translated_errors("PutTargets"):
            answer = self._events.put_targets(Rule=rule, Targets=[{"Id": "home", "Arn": bus_arn, "RoleArn": role_arn}])
        if answer.get("FailedEntryCount"):
            raise RuntimeError(f"EventBridge refused the target of {rule}: {answer['FailedEntries']}")

    def remove(self, rule: str) -> None:
        """The rule and its target, if they exist."""
        try:
            with translated_errors("RemoveTargets"):
                self._events.remove_targets(Rule=rule, Ids=["home"])
            with translated_errors("DeleteRule"):
                self._events.delete_rule(Name=rule)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
