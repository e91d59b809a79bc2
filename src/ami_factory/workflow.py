"""What each step of the state machine does. Handlers parse input, call one function here, and
return its model; everything they need to agree on lives in this package."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from .aws import Ec2, Ssm, StepFunctions, tags_of
from .commands import cleanup_command
from .errors import (
    CommandFailedError,
    ImageFailedError,
    InstanceNotManagedError,
    InstanceStateConflictError,
    RunInProgressError,
    UnsupportedInstanceError,
    WaitTimeoutError,
)
from .models import (
    CheckCommandInput,
    CheckImageInput,
    CheckInstanceInput,
    CommandRef,
    CopyImageInput,
    FinalizeInput,
    HandleFailureInput,
    ImageRef,
    InstanceRef,
    Plan,
    Platform,
    PublishParameterInput,
    PublishParameterOutput,
    RegionResult,
    ResolveRequestInput,
    RestoreInstanceInput,
    ShareImageInput,
    ShareImageOutput,
    Summary,
)
from .rules import (
    TAG_PREFIX,
    check_share_targets,
    family_name,
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
IMAGEABLE_INSTANCE_STATES = frozenset({"running", "stopped", "stopping", "pending"})


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
    if request.cleanup:
        _require_ssm(request.instance_id, platform, region, "clean-up")
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
        description=request.description or f"AMI Factory image of {request.instance_id} ({family}), run {event.run_id}",
        mode=request.mode,
        regions=regions,
        share=request.share,
        parameter_name=parameter_name(settings.parameter_prefix, family),
        tags=image_tags(event.run_id, family, request.instance_id, region, {"Name": name, **request.tags}),
        poll_seconds=settings.poll_seconds,
        max_polls=settings.max_polls,
    )


def _require_ssm(instance_id: str, platform: Platform, region: str, purpose: str) -> None:
    """Steps that run commands on the instance fail here, before anything is touched, if SSM cannot reach it."""
    info = Ssm(region).instance_information(instance_id)
    fix = (
        "make sure the instance is running, its SSM agent is installed and started, and its instance profile "
        "allows SSM (the AmazonSSMManagedInstanceCore policy)"
    )
    if info is None or info.get("PingStatus") != "Online":
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


def prepare_instance(plan: Plan) -> InstanceRef:
    """Remember how the instance was, and stop it when the mode asks for a consistent image."""
    ec2 = Ec2(plan.source_region)
    state = ec2.instance_state(plan.instance_id)
    instance = InstanceRef(instance_id=plan.instance_id, region=plan.source_region, original_state=state, state=state)
    if plan.mode == "stop" and state in ("running", "pending"):
        ec2.stop_instance(plan.instance_id)
        instance.stopped_by_us = True
        instance.state = ec2.instance_state(plan.instance_id)
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


def _give_up_after(max_polls: int, polls: int, state: str, wanted: str, what: str, advice: str) -> None:
    """The bound on every wait loop: the state machine only loops while this does not raise."""
    if state != wanted and polls >= max_polls:
        raise WaitTimeoutError(f"{what} is still {state} after {polls} checks; raise MaxWaitSeconds or {advice}")


def create_image(plan: Plan) -> ImageRef:
    ec2 = Ec2(plan.source_region)
    existing = ec2.find_image_by_name(plan.image_name)
    if existing:
        logger.info("image %s already exists for this run; not creating another", existing["ImageId"])
        return ImageRef(region=plan.source_region, image_id=existing["ImageId"], state=existing["State"])
    image_id = ec2.create_image(
        plan.instance_id, plan.image_name, plan.description, no_reboot=(plan.mode == "no-reboot"), tags=plan.tags
    )
    return ImageRef(region=plan.source_region, image_id=image_id)


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


def copy_client_token(run_id: str, region: str) -> str:
    """CopyImage's idempotency token: the same run copying to the same Region gets the same token."""
    return hashlib.sha256(f"{run_id}/{region}".encode()).hexdigest()[:64]


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
        client_token=copy_client_token(event.run_id, region),
        tags={**event.tags, f"{TAG_PREFIX}source-image": event.source_image.image_id},
    )
    return ImageRef(region=region, image_id=image_id)


def share_image(event: ShareImageInput, settings: Settings | None = None) -> ShareImageOutput:
    # Checked again here, not only in ResolveRequest: the state is data anyone with
    # StartExecution can shape, and sharing is the step that must never overreach.
    check_share_targets(event.share, settings or load_settings())
    Ec2(event.image.region).add_launch_permissions(event.image.image_id, event.share)
    return ShareImageOutput(shared_with=event.share.describe())


def publish_parameter(event: PublishParameterInput) -> PublishParameterOutput:
    version = Ssm(event.image.region).put_image_parameter(
        event.parameter_name, event.image.image_id, f"Latest AMI Factory image ({event.image.image_id})"
    )
    return PublishParameterOutput(parameter_name=event.parameter_name, version=version)


def restore_instance(event: RestoreInstanceInput) -> InstanceRef:
    """Start the instance again if this run stopped it. Safe to repeat: a started instance is left alone."""
    instance = event.instance.model_copy()
    ec2 = Ec2(instance.region)
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
        for image in ec2.find_images_by_tag(f"{TAG_PREFIX}run", run_id):
            if tags_of(image).get(f"{TAG_PREFIX}managed") != "true":
                continue
            ec2.delete_image(image)
            removed.append(f"{region}:{image['ImageId']}")
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
    cleaned = remove_run_images(plan.run_id, [result.region for result in failed])
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
    cleaned = remove_run_images(plan.run_id, [region.name for region in plan.regions])
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
