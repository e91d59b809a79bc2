"""What each step of the state machine does. Handlers parse input, call one function here, and
return its model; everything they need to agree on lives in this package."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from botocore.exceptions import ClientError

from .aws import Ec2, Kms, Ssm, StepFunctions, error_code, snapshots_of, tags_of
from .commands import GENERALIZE_COMMENT, cleanup_command, generalize_command
from .errors import (
    CloneLaunchError,
    CommandFailedError,
    EncryptionKeyError,
    ImageFailedError,
    InstanceNotManagedError,
    InstanceStateConflictError,
    InvalidRequestError,
    KeyAccessError,
    LaunchCheckFailedError,
    PublicImageLimitError,
    PublicSharingBlockedError,
    RunInProgressError,
    UnsupportedInstanceError,
    WaitTimeoutError,
)
from .models import (
    CheckCloneInput,
    CheckCommandInput,
    CheckGeneralizeInput,
    CheckImageInput,
    CheckInstanceInput,
    CommandRef,
    CopyImageInput,
    CreateImageInput,
    FinalizeInput,
    GeneralizeInput,
    GeneralizeRef,
    HandleFailureInput,
    ImageRef,
    ImagingRequest,
    InstanceRef,
    CheckLaunchInput,
    LaunchCheckInput,
    LaunchedInstance,
    LaunchCloneInput,
    Plan,
    Platform,
    ProtectImageInput,
    ProtectImageOutput,
    PublishParameterInput,
    PublishParameterOutput,
    RegionResult,
    RegionTarget,
    ResolveRequestInput,
    RestoreInstanceInput,
    ShareImageInput,
    ShareImageOutput,
    WindowsOptions,
    Summary,
)
from .rules import (
    MAX_PUBLIC_IMAGES_PER_REGION,
    ROLE_TAG,
    RUN_TAG,
    TAG_PREFIX,
    check_share_targets,
    family_name,
    principals_without_key_access,
    holder_of,
    image_name,
    image_tags,
    parameter_name,
    parse_request,
    target_regions,
)
from .observability import logger
from .settings import Settings, load_settings


FAILED_IMAGE_STATES = frozenset({"failed", "invalid", "error", "deregistered"})
FAILED_COMMAND_STATES = frozenset({"Failed", "Cancelled", "TimedOut", "Cancelling", "DeliveryTimedOut", "ExecutionTimedOut"})
# Script failures; a command that timed out once its instance shut down is what sysprep looks like.
SCRIPT_FAILED_STATES = frozenset({"Failed", "Cancelled", "Cancelling"})
IMAGEABLE_INSTANCE_STATES = frozenset({"running", "stopped", "stopping", "pending"})
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


def resolve_request(event: ResolveRequestInput, settings: Settings | None = None) -> Plan:
    """Validate everything before anything changes: a bad request fails here, having touched nothing."""
    settings = settings or load_settings()
    region = settings.region
    request = parse_request(event.request)
    check_share_targets(request.share, settings)
    regions = target_regions(request, region, settings)
    holder = holder_of(request.instance_id, StepFunctions(region).running_executions(event.state_machine_arn))
    if holder and holder != event.run_id:
        # Two triggers can pass the start function's check at the same moment; the older run wins here.
        raise RunInProgressError(
            f"instance {request.instance_id} is being imaged by run {holder}; this run stops before touching "
            f"anything. Start again when that run has finished"
        )
    instance = Ec2(region).describe_instance(request.instance_id)
    if instance.get("RootDeviceType") != "ebs":
        raise UnsupportedInstanceError(
            f"instance {request.instance_id} has an {instance.get('RootDeviceType')} root device; only EBS-backed "
            f"instances can be imaged with CreateImage. Move the instance to an EBS root volume first"
        )
    state = instance["State"]["Name"]
    if state not in IMAGEABLE_INSTANCE_STATES:
        raise UnsupportedInstanceError(
            f"instance {request.instance_id} is {state}; only running or stopped instances can be imaged"
        )
    platform: Platform = "windows" if str(instance.get("Platform", "")).lower() == "windows" else "linux"
    if request.share.public:
        _require_public_sharing_possible(regions, instance, request.encrypt)
    _require_usable_encryption(request, instance, regions, settings)
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
    family = family_name(request, tags_of(instance))
    name = image_name(settings.image_name_prefix, family, event.run_id)
    return Plan(
        run_id=event.run_id,
        instance_id=request.instance_id,
        platform=platform,
        cleanup=request.cleanup,
        source_region=region,
        family=family,
        image_name=name,
        seed_image_name=image_name(settings.image_name_prefix, family, f"{event.run_id}-seed"),
        capture_image_name=image_name(settings.image_name_prefix, family, f"{event.run_id}-capture") if request.encrypt else name,
        encrypt=request.encrypt,
        launch_check=request.launch_check,
        launch_check_max_polls=settings.launch_check_max_polls,
        description=request.description or f"AMI Factory image of {request.instance_id} ({family}), run {event.run_id}",
        mode=request.mode,
        regions=regions,
        share=request.share,
        parameter_name=parameter_name(settings.parameter_prefix, family),
        tags=image_tags(event.run_id, family, request.instance_id, region, {"Name": name, **request.tags}),
        protection=request.protection,
        copy_completion_minutes=request.copy_completion_minutes,
        poll_seconds=settings.poll_seconds,
        max_polls=settings.max_polls,
        generalize_max_polls=settings.generalize_max_polls,
        windows=request.windows,
        clone_overrides=request.clone,
    )


def _require_public_sharing_possible(regions: list[RegionTarget], instance: dict, encrypt: bool) -> None:
    """Public sharing fails late and half-done on AWS; here it fails before anything is changed."""
    encrypted = sorted(Ec2(regions[0].name).encrypted_volumes(instance))
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
    request: ImagingRequest, instance: dict, regions: list[RegionTarget], settings: Settings
) -> None:
    """Every Region's image must be encrypted with a key its recipients can use, or they see an image
    they cannot launch. Checked before any copy: which keys, and whether each target may use them."""
    source = regions[0].name
    if request.encrypt:
        without_key = [region.name for region in regions if region.name not in settings.kms_keys]
        if without_key:
            raise EncryptionKeyError(
                f"encrypt needs a customer managed key in every Region, and the deployment's KmsKeyIds has none for "
                f"{without_key}: add REGION=KEY_ARN pairs to KmsKeyIds, or leave those Regions out"
            )
        keys = [(region.name, settings.kms_keys[region.name]) for region in regions]
    else:
        if not request.share.describe():
            return
        volumes = Ec2(source).encrypted_volumes(instance)
        if not volumes:
            return
        aws_managed = sorted(volume for volume, key in volumes.items() if Kms(source).is_aws_managed(key))
        if aws_managed:
            raise EncryptionKeyError(
                f"volumes {aws_managed} of instance {request.instance_id} are encrypted with the AWS managed key "
                f"aws/ebs, which no other account can use: set encrypt to true to re-encrypt every Region's image "
                f"with the deployment's KmsKeyIds keys (in {source} through a same-Region copy), or share it with nobody"
            )
        if len(regions) > 1:
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
    if str(info.get("PlatformType", "")).lower() != platform:
        raise InstanceNotManagedError(
            f"{purpose}: EC2 says instance {instance_id} runs {platform}, SSM says {info.get('PlatformType')}; "
            f"check that the instance id is right"
        )


def run_cleanup(plan: Plan) -> CommandRef:
    """Temp files and caches go before the image is taken, for specialized images too."""
    command = cleanup_command(plan.platform)
    command_id = Ssm(plan.source_region).send_command(
        plan.instance_id, command.document, command.parameters, f"ami-factory clean-up, run {plan.run_id}"
    )
    return CommandRef(command_id=command_id, instance_id=plan.instance_id, region=plan.source_region)


def check_command(event: CheckCommandInput) -> CommandRef:
    command = event.command.model_copy()
    command.status = Ssm(command.region).command_status(command.command_id, command.instance_id)
    command.polls += 1
    if command.status in FAILED_COMMAND_STATES:
        raise CommandFailedError(
            f"command {command.command_id} on instance {command.instance_id} ended {command.status}; its output is "
            f"in SSM Run Command history. Nothing was imaged"
        )
    _give_up_after(event.max_polls, command.polls, command.status, "Success",
                   f"command {command.command_id} on instance {command.instance_id}", "check the command in SSM")
    return command


def create_seed_image(plan: Plan) -> ImageRef:
    """Mode generalize: a no-reboot image of the instance, only to launch the clone from; removed when the run ends."""
    tags = {**plan.tags, "Name": plan.seed_image_name, ROLE_TAG: "seed"}
    description = f"AMI Factory seed for the clone of run {plan.run_id}; removed when the run ends"
    return _create_image_once(plan.source_region, plan.instance_id, plan.seed_image_name, description, True, tags)


def launch_clone(event: LaunchCloneInput) -> LaunchedInstance:
    """The clone the generalize command runs on: the instance's type, subnet, groups and profile unless overridden."""
    ec2 = Ec2(event.source_region)
    existing = ec2.instances_with_tags({RUN_TAG: [event.run_id], ROLE_TAG: ["clone"]}, LIVE_INSTANCE_STATES)
    if existing:  # a retried step finds the clone it launched
        return LaunchedInstance(instance_id=existing[0]["InstanceId"], region=event.source_region, state=existing[0]["State"]["Name"])
    source = ec2.describe_instance(event.instance_id)
    overrides = event.clone_overrides
    try:
        instance_id = ec2.launch_instance(
            image_id=event.seed.image_id,
            instance_type=overrides.instance_type or source["InstanceType"],
            subnet_id=overrides.subnet_id or source.get("SubnetId"),
            security_group_ids=overrides.security_group_ids or [group["GroupId"] for group in source.get("SecurityGroups", [])],
            instance_profile=overrides.instance_profile or source.get("IamInstanceProfile", {}).get("Arn"),
            client_token=client_token(event.run_id, "clone"),
            tags={**event.tags, "Name": f"{event.family} clone (AMI Factory run {event.run_id})", ROLE_TAG: "clone"},
        )
    except ClientError as error:
        raise CloneLaunchError(
            f"EC2 refused to launch the clone of {event.instance_id} ({error_code(error)}: "
            f"{error.response.get('Error', {}).get('Message', '')}). The clone takes the instance's type, subnet, "
            f"security groups and instance profile unless clone.instance_type, clone.subnet_id, "
            f"clone.security_group_ids or clone.instance_profile say otherwise (groups must be in the subnet's VPC)"
        ) from error
    return LaunchedInstance(instance_id=instance_id, region=event.source_region, state=ec2.instance_state(instance_id))


def check_clone(event: CheckCloneInput) -> LaunchedInstance:
    clone = event.clone.model_copy()
    clone.state = Ec2(clone.region).instance_state(clone.instance_id)
    clone.polls += 1
    if clone.state in ("stopping", "stopped", "shutting-down", "terminated"):
        raise UnsupportedInstanceError(
            f"the clone {clone.instance_id} is {clone.state} before it was generalized: see its system log in the EC2 "
            f"console. It is terminated and nothing is imaged"
        )
    if clone.state == "running":
        info = Ssm(clone.region).instance_information(clone.instance_id)
        clone.ready = info is not None and info.get("PingStatus") == "Online"
    progress = "ready" if clone.ready else f"{clone.state} and not yet reachable through SSM"
    _give_up_after(event.max_polls, clone.polls, progress, "ready", f"clone {clone.instance_id}",
                   "check that its instance profile allows SSM and its subnet reaches the SSM endpoints (NAT or VPC "
                   "endpoints); the clone.instance_profile and clone.subnet_id request fields override the source's",
                   limit="GeneralizeMaxWaitSeconds")
    return clone


def generalize(event: GeneralizeInput) -> GeneralizeRef:
    """Send sysprep (Windows) or sanitize (Linux) to the clone, or to the instance itself in place."""
    target = event.clone.instance_id if event.clone else event.instance_id
    command = generalize_command(event.platform, event.windows)
    command_id = Ssm(event.source_region).send_command(
        target, command.document, command.parameters, f"{GENERALIZE_COMMENT}, run {event.run_id}"
    )
    return GeneralizeRef(command_id=command_id, instance_id=target, region=event.source_region)


def check_generalize(event: CheckGeneralizeInput) -> GeneralizeRef:
    """Done when the instance has shut itself down, and the command did not fail on the way: the
    command's own status may never say Success, because the shutdown stops the agent reporting it."""
    command = event.command.model_copy()
    command.instance_state = Ec2(command.region).instance_state(command.instance_id)
    command.status = Ssm(command.region).command_status(command.command_id, command.instance_id)
    command.polls += 1
    stopped = command.instance_state == "stopped"
    if command.status in SCRIPT_FAILED_STATES or (command.status in FAILED_COMMAND_STATES and not stopped):
        raise CommandFailedError(
            f"the generalize command {command.command_id} on instance {command.instance_id} ended {command.status}"
            f"{' and the instance shut down anyway' if stopped else ''}: it did not complete, so nothing is imaged. "
            f"Its output is in SSM Run Command history"
        )
    if command.instance_state in ("shutting-down", "terminated"):
        raise UnsupportedInstanceError(f"instance {command.instance_id} is {command.instance_state} while generalizing")
    _give_up_after(event.max_polls, command.polls, command.instance_state, "stopped",
                   f"instance {command.instance_id} (generalizing)",
                   "read the command's output in SSM Run Command history: sysprep/sanitize did not shut it down",
                   limit="GeneralizeMaxWaitSeconds")
    return command


def prepare_instance(plan: Plan) -> InstanceRef:
    """Remember how the instance was, and stop it when the mode asks for a consistent image."""
    ec2 = Ec2(plan.source_region)
    state = ec2.instance_state(plan.instance_id)
    instance = InstanceRef(instance_id=plan.instance_id, region=plan.source_region, original_state=state, state=state)
    if plan.mode == "stop" and state in ("running", "pending"):
        ec2.stop_instance(plan.instance_id)
        instance.stopped_by_us = True
        instance.state = ec2.instance_state(plan.instance_id)
    if plan.mode == "generalize-in-place" and state in ("running", "pending"):
        instance.stopped_by_us = True  # the generalize command shuts it down; it is started again afterwards
    return instance


def check_instance(event: CheckInstanceInput) -> InstanceRef:
    instance = event.instance.model_copy()
    instance.state = Ec2(instance.region).instance_state(instance.instance_id)
    instance.polls += 1
    if instance.state in ("shutting-down", "terminated"):
        raise UnsupportedInstanceError(f"instance {instance.instance_id} is {instance.state}: there is nothing left to image")
    _give_up_after(event.max_polls, instance.polls, instance.state, "stopped",
                   f"instance {instance.instance_id}", "find out why it does not stop")
    return instance


def _give_up_after(
    max_polls: int, polls: int, state: str, wanted: str, what: str, advice: str, limit: str = "MaxWaitSeconds"
) -> None:
    """The bound on every wait loop: the state machine only loops while this does not raise."""
    if state != wanted and polls >= max_polls:
        raise WaitTimeoutError(f"{what} is still {state} after {polls} checks; raise {limit} or {advice}")


def create_image(event: CreateImageInput) -> ImageRef:
    """The final image: of the clone in mode generalize, of the instance otherwise."""
    instance_id = event.clone.instance_id if event.clone else event.instance_id
    # Only stop mode lets EC2 reboot: a generalized machine must not boot before it is imaged.
    no_reboot = event.mode != "stop"
    # With encrypt, this is the capture every Region copies from (re-encrypting), removed by Finalize.
    tags = {**event.tags, "Name": event.capture_image_name, ROLE_TAG: "capture"} if event.encrypt else event.tags
    return _create_image_once(event.source_region, instance_id, event.capture_image_name, event.description, no_reboot, tags)


def _create_image_once(
    region: str, instance_id: str, name: str, description: str, no_reboot: bool, tags: dict[str, str]
) -> ImageRef:
    ec2 = Ec2(region)
    existing = ec2.find_image_by_name(name)
    if existing:
        logger.info("image %s already exists for this run; not creating another", existing["ImageId"])
        return ImageRef(region=region, image_id=existing["ImageId"], state=existing["State"])
    image_id = ec2.create_image(instance_id, name, description, no_reboot=no_reboot, tags=tags)
    return ImageRef(region=region, image_id=image_id)


def check_image(event: CheckImageInput) -> ImageRef:
    image = event.image.model_copy()
    described = Ec2(image.region).describe_image(image.image_id)
    image.state = described["State"]
    image.polls += 1
    if image.state in FAILED_IMAGE_STATES:
        reason = described.get("StateReason", {}).get("Message") or "no reason given"
        raise ImageFailedError(f"image {image.image_id} in {image.region} is {image.state}: {reason}")
    _give_up_after(event.max_polls, image.polls, image.state, "available",
                   f"image {image.image_id} in {image.region}", "check the image in the EC2 console")
    return image


def client_token(run_id: str, scope: str) -> str:
    """An idempotency token (CopyImage per Region, RunInstances for the clone): a retry sends the same one."""
    return hashlib.sha256(f"{run_id}/{scope}".encode()).hexdigest()[:64]


def copy_image(event: CopyImageInput) -> ImageRef:
    """Copy into the item's Region; the source Region's item never gets here (the ASL skips it)."""
    region = event.region.name
    ec2 = Ec2(region)
    existing = ec2.find_image_by_name(event.image_name)
    if existing:
        return ImageRef(region=region, image_id=existing["ImageId"], state=existing["State"])
    image_id = ec2.copy_image(
        source_region=event.source_image.region,
        source_image_id=event.source_image.image_id,
        name=event.image_name,
        description=event.description,
        client_token=client_token(event.run_id, region),
        tags={**event.tags, f"{TAG_PREFIX}source-image": event.source_image.image_id},
        completion_minutes=event.copy_completion_minutes,
        kms_key_id=_region_key(region) if event.encrypt else None,
    )
    return ImageRef(region=region, image_id=image_id)


def start_launch_check(event: LaunchCheckInput) -> LaunchedInstance:
    """A small instance from the new image (tagged role=launch-check), in the Region's configured subnet
    or its default VPC. Found again, not launched twice, when the step is retried."""
    region = event.image.region
    ec2 = Ec2(region)
    existing = ec2.instances_with_tags({RUN_TAG: [event.run_id], ROLE_TAG: ["launch-check"]}, LIVE_INSTANCE_STATES)
    if existing:
        return LaunchedInstance(instance_id=existing[0]["InstanceId"], region=region, state=existing[0]["State"]["Name"])
    settings = load_settings()
    try:
        instance_id = ec2.launch_instance(
            image_id=event.image.image_id,
            instance_type=settings.launch_check_instance_type,
            subnet_id=settings.launch_check_subnets.get(region),
            security_group_ids=[],
            instance_profile=None,
            client_token=client_token(event.run_id, f"launch-check/{region}"),
            tags={"Name": f"AMI Factory launch check, run {event.run_id}", f"{TAG_PREFIX}managed": "true",
                  RUN_TAG: event.run_id, ROLE_TAG: "launch-check"},
        )
    except ClientError as error:
        raise LaunchCheckFailedError(
            f"could not launch an instance from {event.image.image_id} in {region} ({error_code(error)}: "
            f"{error.response.get('Error', {}).get('Message', '')}); set LaunchCheckSubnets for Regions without a "
            f"default VPC"
        ) from error
    return LaunchedInstance(instance_id=instance_id, region=region)


def check_launch(event: CheckLaunchInput) -> LaunchedInstance:
    launched = event.launched.model_copy()
    ec2 = Ec2(launched.region)
    launched.state = ec2.instance_state(launched.instance_id)
    launched.polls += 1
    if launched.state in ("stopping", "stopped", "shutting-down", "terminated"):
        raise LaunchCheckFailedError(
            f"the instance launched from the new image in {launched.region} ({launched.instance_id}) is "
            f"{launched.state}: the image does not boot. See the instance's system log"
        )
    system, instance = ec2.status_checks(launched.instance_id) if launched.state == "running" else ("", "")
    if "impaired" in (system, instance):
        raise LaunchCheckFailedError(
            f"the instance launched from the new image in {launched.region} ({launched.instance_id}) fails its "
            f"status checks (system {system}, instance {instance}): see its system log and screenshot"
        )
    launched.ready = (system, instance) == ("ok", "ok")
    _give_up_after(event.max_polls, launched.polls, "healthy" if launched.ready else f"{launched.state}, checks {system or 'pending'}/{instance or 'pending'}",
                   "healthy", f"the launch check instance {launched.instance_id} in {launched.region}",
                   "look at its system log", limit="LaunchCheckMaxWaitSeconds")
    return launched


def end_launch_check(event: CheckLaunchInput) -> LaunchedInstance:
    launched = event.launched.model_copy()
    Ec2(launched.region).terminate_instance(launched.instance_id)
    return launched


def _region_key(region: str) -> str:
    key = load_settings().kms_keys.get(region)
    if not key:  # ResolveRequest checked this; the deployment may have changed since
        raise EncryptionKeyError(f"the deployment's KmsKeyIds has no key for {region}: add {region}=KEY_ARN to KmsKeyIds")
    return key


def share_image(event: ShareImageInput, settings: Settings | None = None) -> ShareImageOutput:
    # Checked again here, not only in ResolveRequest: the state is data anyone with
    # StartExecution can shape, and sharing is the step that must never overreach.
    check_share_targets(event.share, settings or load_settings())
    ec2 = Ec2(event.image.region)
    ec2.add_launch_permissions(event.image.image_id, event.share)
    if event.share.snapshot_permissions:
        image = ec2.describe_image(event.image.image_id)
        encrypted = any(m.get("Ebs", {}).get("Encrypted") for m in image.get("BlockDeviceMappings", []))
        if event.share.public and encrypted:
            raise InvalidRequestError(f"image {event.image.image_id} has encrypted snapshots: they are never made public")
        ec2.add_snapshot_permissions(snapshots_of(image), event.share.accounts, event.share.public)
    return ShareImageOutput(shared_with=event.share.describe())


def protect_image(event: ProtectImageInput) -> ProtectImageOutput:
    """Deprecation, then deregistration protection: the last calls of a Region, so nothing after them
    can fail and leave a protected image that the clean-up cannot remove."""
    ec2 = Ec2(event.image.region)
    deprecate_at = None
    if event.protection.deprecate_after_days:
        when = datetime.now(timezone.utc) + timedelta(days=event.protection.deprecate_after_days)
        deprecate_at = when.strftime("%Y-%m-%dT%H:%M:00Z")
        ec2.enable_deprecation(event.image.image_id, deprecate_at)
    if event.protection.deregistration_protection:
        ec2.enable_deregistration_protection(event.image.image_id, event.protection.cooldown)
    return ProtectImageOutput(deprecate_at=deprecate_at, deregistration_protection=event.protection.deregistration_protection)


def publish_parameter(event: PublishParameterInput) -> PublishParameterOutput:
    version = Ssm(event.image.region).put_image_parameter(
        event.parameter_name, event.image.image_id, f"Latest AMI Factory image ({event.image.image_id})"
    )
    return PublishParameterOutput(parameter_name=event.parameter_name, version=version)


def restore_instance(event: RestoreInstanceInput) -> InstanceRef:
    """Start the instance again if this run stopped it, and remove the run's scaffolding (the clone and
    its seed image) once the image no longer needs it. Safe to repeat: a started instance is left alone."""
    instance = event.instance.model_copy()
    ec2 = Ec2(instance.region)
    if event.run_id and event.mode == "generalize":
        remove_scaffolding(event.run_id, instance.region, images={"seed"}, instances={"clone"})
    instance.state = ec2.instance_state(instance.instance_id)
    should_run = instance.stopped_by_us and instance.original_state in ("running", "pending")
    if should_run and instance.state == "stopping":
        # A stopping instance cannot be started yet; the state machine retries this with backoff.
        raise InstanceStateConflictError(f"instance {instance.instance_id} is still stopping; starting it once it has stopped")
    if should_run and instance.state == "stopped":
        ec2.start_instance(instance.instance_id)
        instance.state = ec2.instance_state(instance.instance_id)
    return instance


def remove_run_images(run_id: str, regions: list[str]) -> list[str]:
    """Deregister every image this run made in ``regions`` (found by tag, never by name) and its snapshots."""
    removed: list[str] = []
    for region in regions:
        ec2 = Ec2(region)
        for image in ec2.find_images_by_tag(RUN_TAG, run_id):
            if tags_of(image).get(f"{TAG_PREFIX}managed") != "true":
                continue
            ec2.delete_image(image)
            removed.append(f"{region}:{image['ImageId']}")
    return removed


def remove_scaffolding(run_id: str, region: str, images: set[str], instances: set[str]) -> list[str]:
    """Terminate the run's instances whose role is in ``instances`` (the generalize clone, launch checks)
    and remove its images whose role is in ``images`` (the generalize seed, the capture an encrypted run
    copied from) with their snapshots; all found by tag, never by name."""
    ec2 = Ec2(region)
    removed: list[str] = []
    found = ec2.instances_with_tags(
        {RUN_TAG: [run_id], ROLE_TAG: sorted(instances), f"{TAG_PREFIX}managed": ["true"]}, LIVE_INSTANCE_STATES
    ) if instances else []
    for instance in found:
        ec2.terminate_instance(instance["InstanceId"])
        removed.append(f"{region}:{instance['InstanceId']}")
    for image in ec2.find_images_by_tag(RUN_TAG, run_id) if images else []:
        tags = tags_of(image)
        if tags.get(f"{TAG_PREFIX}managed") == "true" and tags.get(ROLE_TAG) in images:
            ec2.delete_image(image)
            removed.append(f"{region}:{image['ImageId']}")
    if removed:
        logger.info("removed the run's scaffolding: %s", removed)
    return removed


def _record_result_on_instance(plan: Plan, status: str, image_id: str | None, error: str | None) -> None:
    tags = {
        f"{TAG_PREFIX}last-run": plan.run_id,
        f"{TAG_PREFIX}last-run-at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{TAG_PREFIX}last-status": status,
    }
    if image_id:
        tags[f"{TAG_PREFIX}last-image-id"] = image_id
    # Always written, so a success clears the error a previous run left behind.
    tags[f"{TAG_PREFIX}last-error"] = (error or "")[:256]
    ec2 = Ec2(plan.source_region)
    ec2.tag_resource(plan.instance_id, tags)
    # Cleared after every run, so setting the trigger tag again starts the next one.
    ec2.untag_resource(plan.instance_id, [load_settings().trigger_tag_key])


def finalize(plan: FinalizeInput) -> Summary:
    failed = [result for result in plan.distribution if result.status == "FAILED"]
    generalized = plan.mode == "generalize"
    cleaned = remove_scaffolding(
        plan.run_id, plan.source_region, images={"seed", "capture"}, instances={"clone"} if generalized else set()
    ) if generalized or plan.encrypt else []
    for result in failed if plan.launch_check else []:  # a failed check may have left its instance
        cleaned += remove_scaffolding(plan.run_id, result.region, images=set(), instances={"launch-check"})
    cleaned += remove_run_images(plan.run_id, [result.region for result in failed])
    status = "SUCCEEDED" if not failed else ("FAILED" if len(failed) == len(plan.distribution) else "PARTIAL")
    instance = restore_instance(RestoreInstanceInput(instance=plan.instance))
    # The source Region's image, unless that Region failed and its image was just removed.
    source_image = next(
        (r.image_id for r in plan.distribution if r.region == plan.source_region and r.status == "AVAILABLE"), None
    )
    errors = "; ".join(f"{result.region}: {result.error.Error if result.error else 'failed'}" for result in failed) or None
    _record_result_on_instance(plan, status, source_image, errors)
    return Summary(
        status=status,
        run_id=plan.run_id,
        instance_id=plan.instance_id,
        image_name=plan.image_name,
        instance_state=instance.state,
        regions=plan.distribution,
        failed_regions=[result.region for result in failed],
        cleaned_up=cleaned,
        error="AllRegionsFailedError" if status == "FAILED" else None,
        cause=errors,
    )


def handle_failure(plan: HandleFailureInput) -> Summary:
    """Undo what this run made and put the instance back; the state machine then fails with the error."""
    # Every image of the run goes below; only its instances are left to find here.
    cleaned = []
    for region in plan.regions:
        roles = ({"clone"} if plan.mode == "generalize" and region.is_source else set()) | (
            {"launch-check"} if plan.launch_check else set())
        cleaned += remove_scaffolding(plan.run_id, region.name, images=set(), instances=roles) if roles else []
    cleaned += remove_run_images(plan.run_id, [region.name for region in plan.regions])
    instance = restore_instance(RestoreInstanceInput(instance=plan.instance)) if plan.instance else None
    _record_result_on_instance(plan, "FAILED", None, plan.error.Error)
    return Summary(
        status="FAILED",
        run_id=plan.run_id,
        instance_id=plan.instance_id,
        image_name=plan.image_name,
        instance_state=instance.state if instance else None,
        cleaned_up=cleaned,
        error=plan.error.Error,
        cause=plan.error.Cause,
    )
