"""The imaging steps themselves: stop and restore the instance, create and wait for the image,
remove what a run made, finalize or fail the run. Handlers parse their input, call one step, and
return its model; the steps before imaging are in ``preflight`` and ``generalize``, a Region's
distribution in ``distribution``, and what all of them share in ``steps``."""

from __future__ import annotations

from datetime import UTC, datetime

from botocore.exceptions import ClientError

from .aws import Ec2, Notifications
from .contracts import (
    CheckImageInput,
    CheckInstanceInput,
    CreateImageInput,
    FinalizeInput,
    HandleFailureInput,
    ImageRef,
    InstanceRef,
    Plan,
    RestoreInstanceInput,
    RunStatus,
    Summary,
)
from .errors import (
    AmiFactoryError,
    ImageFailedError,
    InstanceStateConflictError,
    ThrottledError,
    UnsupportedInstanceError,
    error_message,
)
from .ledger import FamilyImage, Ledger
from .observability import MetricUnit, logger, metrics
from .pricing import CostEstimate, Prices, estimate_images, load_prices
from .rules import ROLE_TAG, TAG_PREFIX
from .settings import load_settings
from .steps import create_image_once, give_up_after, remove_made, require_made

FAILED_IMAGE_STATES = frozenset({"failed", "invalid", "error", "deregistered"})


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
        raise UnsupportedInstanceError(
            f"instance {instance.instance_id} is {instance.state}: there is nothing left to image"
        )
    give_up_after(
        event.max_polls,
        instance.polls,
        instance.state,
        "stopped",
        f"instance {instance.instance_id}",
        "find out why it does not stop",
    )
    return instance


def create_image(event: CreateImageInput) -> ImageRef:
    """The final image: of the clone in mode generalize, of the instance otherwise."""
    if event.clone:
        require_made(event.run_id, event.source_region, event.clone.instance_id, "clone")
    instance_id = event.clone.instance_id if event.clone else event.instance_id
    # Only stop mode lets EC2 reboot: a generalized machine must not boot before it is imaged.
    no_reboot = event.mode != "stop"
    # With encrypt, this is the capture every Region copies from (re-encrypting), removed by Finalize.
    tags = {**event.tags, "Name": event.capture_image_name, ROLE_TAG: "capture"} if event.encrypt else event.tags
    return create_image_once(
        event.source_region,
        instance_id,
        event.capture_image_name,
        event.description,
        no_reboot,
        tags,
        made_for=(event.run_id, event.started_at, "capture" if event.encrypt else "image"),
    )


def check_image(event: CheckImageInput) -> ImageRef:
    image = event.image.model_copy()
    described = Ec2(image.region).describe_image(image.image_id)
    image.state = described["State"]
    image.polls += 1
    if image.state in FAILED_IMAGE_STATES:
        reason = described.get("StateReason", {}).get("Message") or "no reason given"
        raise ImageFailedError(f"image {image.image_id} in {image.region} is {image.state}: {reason}")
    give_up_after(
        event.max_polls,
        image.polls,
        image.state,
        "available",
        f"image {image.image_id} in {image.region}",
        "check the image in the EC2 console",
    )
    if image.state == "available":
        metrics.add_metric(name="ImageWaitSeconds", unit=MetricUnit.Seconds, value=image.polls * event.poll_seconds)
    return image


def restore_instance(event: RestoreInstanceInput) -> InstanceRef:
    """Start the instance again if this run stopped it, and remove the run's scaffolding (the clone and
    its seed image) once the image no longer needs it. Safe to repeat: a started instance is left alone."""
    instance = event.instance.model_copy()
    ec2 = Ec2(instance.region)
    if event.run_id and event.mode == "generalize":
        remove_made(event.run_id, lambda made: made.role in ("clone", "seed"))
    instance.state = ec2.instance_state(instance.instance_id)
    should_run = instance.stopped_by_us and instance.original_state in ("running", "pending")
    if should_run and instance.state == "stopping":
        # A stopping instance cannot be started yet; the state machine retries this with backoff.
        raise InstanceStateConflictError(
            f"instance {instance.instance_id} is still stopping; starting it once it has stopped"
        )
    if should_run and instance.state == "stopped":
        ec2.start_instance(instance.instance_id)
        instance.state = ec2.instance_state(instance.instance_id)
    return instance


def _record_result_on_instance(plan: Plan, status: str, image_id: str | None, error: str | None) -> None:
    tags = {
        f"{TAG_PREFIX}last-run": plan.run_id,
        f"{TAG_PREFIX}last-run-at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
    failed_regions = {result.region for result in failed}
    # Instances left (a failed launch check's), the scaffolding images, and every image of a failed Region.
    cleaned = remove_made(
        plan.run_id,
        lambda made: made.kind == "instance" or made.role in ("seed", "capture") or made.region in failed_regions,
    )
    status: RunStatus = (
        "SUCCEEDED" if not failed else ("FAILED" if len(failed) == len(plan.distribution) else "PARTIAL")
    )
    instance = restore_instance(RestoreInstanceInput(instance=plan.instance))
    # The source Region's image, unless that Region failed and its image was just removed.
    source_image = next(
        (r.image_id for r in plan.distribution if r.region == plan.source_region and r.status == "AVAILABLE"), None
    )
    errors = (
        "; ".join(f"{result.region}: {result.error.Error if result.error else 'failed'}" for result in failed) or None
    )
    _record_result_on_instance(plan, status, source_image, errors)
    Ledger().release_lock(plan.source_region, plan.instance_id, plan.run_id)
    kept = {
        result.region: result.image_id
        for result in plan.distribution
        if result.status == "AVAILABLE" and result.image_id
    }
    ledger = Ledger()
    for region, image_id in kept.items():  # what retention will judge, with the request's own rules
        ledger.record_family_image(
            FamilyImage(
                family=plan.family,
                region=region,
                image_id=image_id,
                run_id=plan.run_id,
                keep_newest=plan.retention.keep_newest or 0,
                max_age_days=plan.retention.max_age_days or 0,
            )
        )
    metrics.add_metric(name=f"Runs{status.title()}", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ImagesAvailable", unit=MetricUnit.Count, value=len(kept))
    metrics.add_metric(name="RegionsFailed", unit=MetricUnit.Count, value=len(failed))
    return announced(
        Summary(
            status=status,
            run_id=plan.run_id,
            instance_id=plan.instance_id,
            image_name=plan.image_name,
            instance_state=instance.state,
            regions=plan.distribution,
            failed_regions=[result.region for result in failed],
            cleaned_up=cleaned,
            cost=image_cost(kept, plan.source_region, load_prices(load_settings().price_overrides)),
            error="AllRegionsFailedError" if status == "FAILED" else None,
            cause=errors,
        ),
        plan.source_region,
    )


def image_cost(images: dict[str, str], source_region: str, prices: Prices) -> CostEstimate:
    """What the images (one per Region) cost to keep, and what copying them cost once."""
    sizes = {region: float(Ec2(region).image_gib(image_id)) for region, image_id in images.items()}
    return estimate_images(sizes, source_region, prices)


def handle_failure(plan: HandleFailureInput) -> Summary:
    """Undo what this run made and put the instance back; the state machine then fails with the error."""
    cleaned = remove_made(plan.run_id, lambda made: True)
    instance = restore_instance(RestoreInstanceInput(instance=plan.instance)) if plan.instance else None
    _record_result_on_instance(plan, "FAILED", None, plan.error.Error)
    Ledger().release_lock(plan.source_region, plan.instance_id, plan.run_id)
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
    return announced(
        Summary(
            status="FAILED",
            run_id=plan.run_id,
            instance_id=plan.instance_id,
            image_name=plan.image_name,
            instance_state=instance.state if instance else None,
            cleaned_up=cleaned,
            error=plan.error.Error,
            cause=error_message(plan.error.Cause),
        ),
        plan.source_region,
    )


EVENT_SOURCE = "ami-factory"
DETAIL_TYPES = {
    "SUCCEEDED": "AMI Factory Image Ready",
    "PARTIAL": "AMI Factory Image Partially Ready",
    "FAILED": "AMI Factory Run Failed",
}


def announced(summary: Summary, region: str) -> Summary:
    """Tell people (SNS) and automation (EventBridge, source ``ami-factory``) how the run ended, with
    the summary. Best effort: the images and the clean-up stand even if telling about them fails."""
    settings = load_settings()
    detail = summary.model_dump_json(exclude={"notification_error"})
    images = [f"arn:aws:ec2:{r.region}::image/{r.image_id}" for r in summary.regions if r.image_id]
    try:
        notifications = Notifications(region)
        if settings.notification_topic_arn:
            notifications.publish(settings.notification_topic_arn, _subject(summary), _message(summary))
        notifications.put_event(settings.event_bus_name, EVENT_SOURCE, DETAIL_TYPES[summary.status], detail, images)
    except ThrottledError:
        raise  # the state machine retries the step with backoff
    except (ClientError, AmiFactoryError, RuntimeError) as error:
        logger.error("could not announce the run's end: %s", error)
        summary.notification_error = str(error)[:500]
    return summary


def _subject(summary: Summary) -> str:
    what = {"SUCCEEDED": "image ready", "PARTIAL": "image ready in some Regions", "FAILED": "run failed"}[
        summary.status
    ]
    return f"AMI Factory: {summary.image_name or summary.instance_id} {what}"


def _message(summary: Summary) -> str:
    lines = [f"Run {summary.run_id} for instance {summary.instance_id}: {summary.status}."]
    lines += [
        f"  {r.region}: {r.image_id} ({r.parameter_name})"
        if r.status == "AVAILABLE"
        else f"  {r.region}: FAILED ({r.error.Error if r.error else ''})"
        for r in summary.regions
    ]
    if summary.cost:
        lines.append(
            f"Keeping the images: ${summary.cost.monthly_standard:.2f}/month at most; copying them: ${summary.cost.copy_transfer_once:.2f} once."
        )
    if summary.error:
        lines.append(f"Error: {summary.error}: {summary.cause or ''}")
    lines.append("")
    lines.append(summary.model_dump_json(indent=2, exclude={"notification_error"}))
    return "\n".join(lines)
