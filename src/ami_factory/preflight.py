"""ResolveRequest: everything checked before anything changes. A request that cannot succeed
(bad fields, allow-lists, the instance, public sharing, encryption keys, SSM) fails here, having
touched nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

from .aws import Ec2, Kms, Ssm, encrypted_keys, tags_of
from .contracts import Plan, Platform, RegionTarget, ResolveRequestInput
from .errors import (
    EncryptionKeyError,
    InstanceNotManagedError,
    InvalidRequestError,
    KeyAccessError,
    PublicImageLimitError,
    PublicSharingBlockedError,
    RunNameTakenError,
    UnsupportedInstanceError,
)
from .ledger import FamilyImage, FamilyOwner, Holder, Ledger, RunRecord
from .observability import MetricUnit, metrics
from .request import ImagingRequest, WindowsOptions
from .rules import (
    MAX_PUBLIC_IMAGES_PER_REGION,
    account_cells,
    account_of,
    check_clone_profile,
    check_copy_accounts,
    check_launch_templates,
    check_share_targets,
    execution_arn,
    family_asked_as,
    family_name,
    image_name,
    image_tags,
    parameter_name,
    parse_request,
    platform_of,
    principals_without_key_access,
    retention_tags,
    target_regions,
    volume_limits_broken,
)
from .settings import Settings, load_settings
from .steps import check_family, hold_instance

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import InstanceTypeDef, VolumeTypeDef

EncryptedVolumes = Callable[[], dict[str, str]]  # the instance's encrypted volumes and their keys, described once

IMAGEABLE_INSTANCE_STATES = frozenset({"running", "stopped", "stopping", "pending"})


def resolve_request(event: ResolveRequestInput) -> Plan:
    """Validate everything before anything changes: a bad request fails here, having touched nothing."""
    settings = load_settings()
    region = settings.region
    request = parse_request(event.request)
    check_share_targets(request.share, settings)
    check_clone_profile(request.clone, settings)
    check_copy_accounts(
        [target.account_id for target in request.copy_to_accounts], settings, account_of(event.state_machine_arn)
    )
    regions = target_regions(request, region, settings)
    check_launch_templates(request.launch_templates, [target.name for target in regions], settings)
    cells = account_cells(request.copy_to_accounts, [target.name for target in regions])
    started_at = datetime.now(UTC).isoformat()
    instance = Ec2(region).describe_instance(request.instance_id)
    distributing = request.source_image_id is not None  # an existing image: the instance is only read
    if not distributing:
        _require_imageable(request.instance_id, instance)
    state = instance["State"]["Name"]
    platform = platform_of(instance)
    family = family_name(request, tags_of(instance))
    asking = FamilyOwner(
        account=account_of(event.state_machine_arn),
        region=region,
        instance_id=request.instance_id,
        name=family_asked_as(request, tags_of(instance)),
        run_id=event.run_id,
    )
    check_family(family, asking, request.adopt_family)
    source = _require_delivered_image(request.source_image_id, family, region) if request.source_image_id else None
    described = cache(lambda: Ec2(region).volumes_by_device(instance))  # one DescribeVolumes, if any check needs it
    # What is copied is encrypted as its snapshots are: the instance's volumes, or the delivered image's.
    volumes = cache(lambda: Ec2(region).encrypted_snapshots(source.image_id) if source else encrypted_keys(described()))
    if request.volumes:
        _require_possible_volume_changes(request, instance, described())
    if request.fast_launch:
        _require_fast_launch_possible(request, platform, [target.name for target in regions])
    if request.share.public:
        _require_public_sharing_possible(regions, volumes, request.encrypt)
    _require_listed_source_keys(request, volumes, regions, settings)
    # The accounts that copy the image must be able to use its keys too.
    copying = sorted({cell.account_id for cell in cells} - set(request.share.accounts))
    recipients = request.share.model_copy(update={"accounts": [*request.share.accounts, *copying]})
    _require_usable_encryption(request.model_copy(update={"share": recipients}), volumes, regions, settings)
    if request.cleanup:
        _require_ssm(request.instance_id, platform, region, "clean-up")
    if request.mode == "generalize-in-place":
        _require_ssm(request.instance_id, platform, region, "generalize-in-place")
    if request.mode == "generalize":
        # The clone boots from the instance's disk with its agent; a stopped instance cannot be online.
        _require_ssm(request.instance_id, platform, region, "generalize (on a clone)", online=(state == "running"))
    if platform == "linux" and request.windows != WindowsOptions():
        raise InvalidRequestError(
            f"instance {request.instance_id} runs Linux: the windows options (administrator password) do not apply; "
            f"drop them from the request"
        )
    for template in request.launch_templates:  # exists, before anything changes
        Ec2(template.region).launch_template_default_version(template.launch_template_id)
    _require_new_run_name(event.run_id, event.execution_started_at)
    if not distributing:  # last: a run that holds the instance has passed every check
        hold_instance(
            region, request.instance_id, Holder(event.run_id, execution_arn(event.state_machine_arn, event.run_id))
        )
    name = image_name(settings.image_name_prefix, family, event.run_id)
    # From here the run has something to end, however its execution ends (the janitor reads this).
    record = RunRecord(
        run_id=event.run_id,
        instance_id=request.instance_id,
        region=region,
        image_name=name,
        started=event.execution_started_at,
        distributing=distributing,
        account_cells=tuple(f"{cell.account_id}/{cell.region}" for cell in cells),
        parameter_name=parameter_name(settings.parameter_prefix, family) if cells else "",
    )
    opened = Ledger().open_run(record)
    if opened.started != record.started:  # another execution of the name, just now
        raise _run_name_taken(event.run_id, opened.started)
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
    return Plan(
        run_id=event.run_id,
        started_at=started_at,
        account_id=asking.account,
        instance_id=request.instance_id,
        platform=platform,
        cleanup=request.cleanup,
        source_region=region,
        family=family,
        family_asked_as=asking.name,
        adopt_family=request.adopt_family,
        retention=request.retention,
        image_name=name,
        seed_image_name=image_name(settings.image_name_prefix, family, f"{event.run_id}-seed"),
        capture_image_name=image_name(settings.image_name_prefix, family, f"{event.run_id}-capture")
        if request.encrypt
        else name,
        encrypt=request.encrypt,
        launch_check=request.launch_check,
        launch_check_max_polls=settings.launch_check_max_polls,
        description=request.description or f"AMI Factory image of {request.instance_id} ({family}), run {event.run_id}",
        mode=request.mode,
        regions=regions,
        share=request.share,
        parameter_name=parameter_name(settings.parameter_prefix, family),
        tags={
            **image_tags(event.run_id, family, request.instance_id, region, {"Name": name, **request.tags}),
            **retention_tags(request.retention),
        },
        protection=request.protection,
        copy_completion_minutes=request.copy_completion_minutes,
        poll_seconds=settings.poll_seconds,
        generalize_max_polls=settings.generalize_max_polls,
        max_wait_seconds=settings.max_wait_seconds,
        generalize_max_wait_seconds=settings.generalize_max_wait_seconds,
        windows=request.windows,
        clone_overrides=request.clone,
        imds_support=request.imds_support,
        launch_templates=request.launch_templates,
        approval=request.approval or settings.require_approval,
        approval_timeout_seconds=settings.approval_timeout_seconds,
        volumes=request.volumes,
        fast_launch=request.fast_launch,
        copy_to_accounts=request.copy_to_accounts,
        account_cells=cells,
        copies_into_accounts=bool(cells),
        source_image_id=source.image_id if source else None,
        source_run_id=source.run_id if source else None,
    )


def _require_imageable(instance_id: str, instance: InstanceTypeDef) -> None:
    if instance.get("RootDeviceType") != "ebs":
        raise UnsupportedInstanceError(
            f"instance {instance_id} has an {instance.get('RootDeviceType')} root device; only EBS-backed "
            f"instances can be imaged with CreateImage. Move the instance to an EBS root volume first"
        )
    state = instance["State"]["Name"]
    if state not in IMAGEABLE_INSTANCE_STATES:
        raise UnsupportedInstanceError(
            f"instance {instance_id} is {state}; only running or stopped instances can be imaged"
        )


def _require_fast_launch_possible(request: ImagingRequest, platform: Platform, regions: list[str]) -> None:
    if platform != "windows":
        raise InvalidRequestError(
            f"fast_launch is Windows fast launch, and instance {request.instance_id} runs {platform}: drop fast_launch"
        )
    elsewhere = sorted(target.region for target in request.fast_launch if target.region not in regions)
    if elsewhere:
        raise InvalidRequestError(
            f"fast_launch names {elsewhere}, which this run does not distribute to: add them to regions, or drop them"
        )


THROUGHPUT_TYPES = ("gp3",)
IOPS_TYPES = ("gp3", "io1", "io2")


def _require_possible_volume_changes(
    request: ImagingRequest, instance: InstanceTypeDef, volumes: dict[str, VolumeTypeDef]
) -> None:
    """What EC2 would refuse at CreateImage (after the instance stopped), refused here by name: a device
    the instance does not have, the root left out, a volume shrunk, IOPS or throughput its type does
    not take."""
    root = instance.get("RootDeviceName")
    for change in request.volumes:
        device = change.device_name
        volume = volumes.get(device)
        if volume is None:
            raise InvalidRequestError(
                f"volumes: instance {request.instance_id} has no EBS volume at {device} (it has {sorted(volumes)}): "
                f"use one of those device names"
            )
        if change.exclude and device == root:
            raise InvalidRequestError(
                f"volumes: {device} is instance {request.instance_id}'s root volume, which an image cannot leave out"
            )
        if change.size_gib is not None and change.size_gib < volume["Size"]:
            raise InvalidRequestError(
                f"volumes: {device} is {volume['Size']} GiB and EC2 cannot shrink a volume below its snapshot: "
                f"size_gib must be at least {volume['Size']} (or leave size_gib out)"
            )
        kind = change.volume_type or volume["VolumeType"]  # EC2 always says a volume's type
        if change.throughput is not None and kind not in THROUGHPUT_TYPES:
            raise InvalidRequestError(f"volumes: {device} would be {kind}, which takes no throughput (gp3 does)")
        if change.iops is not None and kind not in IOPS_TYPES:
            raise InvalidRequestError(f"volumes: {device} would be {kind}, which takes no iops (gp3, io1, io2 do)")
        size = change.size_gib or volume["Size"]
        if problem := volume_limits_broken(device, kind, size, change.iops, change.throughput, device == root):
            raise InvalidRequestError(f"volumes: {problem}")


def _require_delivered_image(image_id: str, family: str, region: str) -> FamilyImage:
    """Only an image the ledger records as delivered for this family here is distributed again: a tag,
    a name or a description can be set by anyone, and an image of another family would move this
    family's latest to it in every Region."""
    delivered = Ledger().family_image(family, region, image_id)
    if delivered is None or delivered.removed:
        raise InvalidRequestError(
            f"image {image_id} is not an image AMI Factory delivered for family {family} in {region} (or retention has "
            f"removed it): give the image_id of a run's summary for {region}, e.g. with ami_factory_cli redrive "
            f"EXECUTION"
        )
    image = Ec2(region).image(image_id)
    state = image.get("State") if image else None
    if state != "available":
        raise InvalidRequestError(
            f"image {image_id} in {region} is {state or 'gone'}, not available: only an available image can be "
            f"distributed; start a new run to image the instance again"
        )
    return delivered


def _require_new_run_name(run_id: str, started: str) -> None:
    """Run ids are execution names, and Step Functions allows a name again 90 days after its execution
    ended: a new execution must never inherit an earlier run's ledger (its images, its parameters,
    the instances it stopped)."""
    earlier = Ledger().run(run_id)
    if earlier is not None and earlier.started != started:
        raise _run_name_taken(run_id, earlier.started)


def _run_name_taken(run_id: str, earlier_started: str) -> RunNameTakenError:
    return RunNameTakenError(
        f"execution name {run_id} was the name of an earlier run (started {earlier_started or 'before'}), whose "
        f"records AMI Factory keeps: start this run under another name"
    )


def _require_public_sharing_possible(regions: list[RegionTarget], volumes: EncryptedVolumes, encrypt: bool) -> None:
    """Public sharing fails late and half-done on AWS; here it fails before anything is changed."""
    encrypted = sorted(volumes())
    if encrypt or encrypted:
        why = "encrypt is set" if encrypt else f"the instance's volumes {encrypted} are encrypted"
        raise InvalidRequestError(
            f"an image with encrypted snapshots cannot be public, and {why}: drop share.public, or share with "
            f"accounts, organizations or OUs instead"
        )
    blocked = [region.name for region in regions if Ec2(region.name).image_block_public_access() != "unblocked"]
    if blocked:
        raise PublicSharingBlockedError(
            f"image block public access is on in {blocked}, so the image cannot be made public there: turn it off "
            f"(aws ec2 disable-image-block-public-access --region REGION) if public images are intended, or drop "
            f"share.public"
        )
    for region in regions:
        count = Ec2(region.name).public_image_count()
        if count >= MAX_PUBLIC_IMAGES_PER_REGION:
            raise PublicImageLimitError(
                f"{region.name} already has {count} public images, the limit is {MAX_PUBLIC_IMAGES_PER_REGION}: make "
                f"one private, request a quota increase, or drop share.public"
            )


def _require_usable_encryption(
    request: ImagingRequest, encrypted_volumes: EncryptedVolumes, regions: list[RegionTarget], settings: Settings
) -> None:
    """Every Region's image must be encrypted with a key its recipients can use, or they see an image
    they cannot launch. Checked before any copy: which keys, and whether each target may use them."""
    source = settings.region
    if request.encrypt:
        without_key = [region.name for region in regions if region.name not in settings.kms_keys]
        if without_key:
            raise EncryptionKeyError(
                f"encrypt needs a customer managed key in every Region, and the deployment's KmsKeyIds has none for "
                f"{without_key}: add a key ARN of each to KmsKeyIds, or leave those Regions out"
            )
        keys = [(region.name, settings.kms_keys[region.name]) for region in regions]
    else:
        # Nothing shared needs no key; a public request was already checked to have no encrypted volume
        # (so `and` here would change nothing: the second half is an early exit, not a decision).
        if not request.share.describe() or request.share.public:  # pragma: no mutate
            return
        volumes = encrypted_volumes()
        if not volumes:
            return
        aws_managed = sorted(volume for volume, key in volumes.items() if Kms(source).is_aws_managed(key))
        if aws_managed:
            raise EncryptionKeyError(
                f"volumes {aws_managed} of instance {request.instance_id} are encrypted with the AWS managed key "
                f"aws/ebs, which no other account can use: set encrypt to true to re-encrypt every Region's image "
                f"with the deployment's KmsKeyIds keys (in {source} through a same-Region copy), or share it with nobody"
            )
        if _copies(regions):
            raise EncryptionKeyError(
                f"volumes {sorted(volumes)} of instance {request.instance_id} are encrypted, and a copy to another "
                f"Region without a key uses that Region's aws/ebs key, which recipients cannot use: set encrypt to "
                f"true to use the deployment's KmsKeyIds keys"
            )
        keys = [(source, key) for key in sorted(set(volumes.values()))]
    if not request.share.describe():
        return
    for region, key in keys:
        kms = Kms(region)
        missing = principals_without_key_access(kms.policy(key), kms.grantees(key), request.share)
        if missing:
            raise KeyAccessError(
                f"key {key} ({region}) does not let {missing} use it, so they would see the image but could not "
                f"launch it: allow kms:Decrypt, kms:DescribeKey, kms:CreateGrant, kms:ReEncrypt* and "
                f"kms:GenerateDataKey* to them in the key policy (an organization or OU: Principal * with "
                f"aws:PrincipalOrgID or aws:PrincipalOrgPaths), or create grants"
            )


def _copies(regions: list[RegionTarget]) -> bool:
    return any(not region.is_source for region in regions)


def _require_listed_source_keys(
    request: ImagingRequest, encrypted_volumes: EncryptedVolumes, regions: list[RegionTarget], settings: Settings
) -> None:
    """AMI Factory's roles may use only the KmsKeyIds keys (through EC2). A run that launches from the
    instance's image (the clone, a launch check) or copies it (to other Regions, or to re-encrypt)
    uses the key of its volumes: a customer managed key outside KmsKeyIds would fail half-way on AWS."""
    needs_the_key = request.encrypt or request.mode == "generalize" or request.launch_check or _copies(regions)
    if not needs_the_key:
        return
    source = settings.region
    volumes = encrypted_volumes()
    unlisted = sorted(
        {key for key in volumes.values() if key not in settings.kms_key_arns and not Kms(source).is_aws_managed(key)}
    )
    if unlisted:
        raise EncryptionKeyError(
            f"instance {request.instance_id}'s volumes are encrypted with {unlisted}, which AMI Factory may not use: "
            f"its roles may use only the KmsKeyIds keys. Add them to KmsKeyIds, or image it without copies, a clone "
            f"or a launch check"
        )


def _require_ssm(instance_id: str, platform: Platform, region: str, purpose: str, online: bool = True) -> None:
    """Steps that run commands on the instance fail here, before anything is touched, if SSM cannot reach it."""
    info = Ssm(region).instance_information(instance_id)
    fix = (
        "make sure the instance is running, its SSM agent is installed and started, and its instance profile "
        "allows SSM (the AmazonSSMManagedInstanceCore policy)"
    )
    if info is None or (online and info.get("PingStatus") != "Online"):
        status = "not registered with SSM" if info is None else f"SSM ping status {info.get('PingStatus')}"
        raise InstanceNotManagedError(f"{purpose} needs SSM Run Command, and instance {instance_id} is {status}: {fix}")
    reported = info.get("PlatformType")
    if reported is None or reported.lower() != platform:
        raise InstanceNotManagedError(
            f"{purpose}: EC2 says instance {instance_id} runs {platform}, SSM says {reported}; "
            f"check that the instance id is right"
        )
