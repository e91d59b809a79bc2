"""The imaging steps themselves: stop and restore the instance, create and wait for the image,
remove what a run made, finalize or fail the run. Handlers parse their input, call one step, and
return its model; the steps before imaging are in ``preflight`` and ``generalize``, a Region's
distribution in ``distribution``, and what all of them share in ``steps``."""

from __future__ import annotations

from botocore.exceptions import ClientError

from .aws import Ec2
from .closing import FINALIZE, RUNNING_STATES, announced, end_run, put_back, state_of, tag_result
from .contracts import (
    CreateImageInput,
    FinalizeInput,
    HandleFailureInput,
    ImageRef,
    InstanceRef,
    KeptDelivered,
    Plan,
    RestoreInstanceInput,
    RunStatus,
    Summary,
)
from .errors import AmiFactoryError, RunEndedError, UnsupportedInstanceError, error_message
from .ledger import FamilyImage, Ledger, RunRecord, Stop
from .observability import MetricUnit, logger, metrics
from .pricing import CostEstimate, Prices, estimate_images, load_prices
from .rules import ROLE_TAG
from .settings import load_settings
from .steps import create_image_once, remove_made, require_made


def prepare_instance(plan: Plan) -> InstanceRef:
    """Remember how the instance was, and stop it when the mode asks for a consistent image. The intent
    to stop is in the ledger before StopInstances is sent: whatever happens next (a lost answer, a
    failure, a stopped execution) the run's ending starts the instance again. A retried step finds the
    first attempt's record, with the state the instance was in before anything was sent."""
    ec2 = Ec2(plan.source_region)
    ledger = Ledger()
    state = ec2.instance_state(plan.instance_id)
    recorded = ledger.stop_of(plan.run_id, plan.source_region, plan.instance_id)
    original = recorded.original_state if recorded else state
    instance = InstanceRef(
        instance_id=plan.instance_id,
        region=plan.source_region,
        original_state=original,
        state=state,
    )
    # The generalize command shuts the instance down in place; it is started again afterwards.
    if plan.mode in ("stop", "generalize-in-place") and original in RUNNING_STATES:
        ledger.record_stop(plan.run_id, Stop(plan.source_region, plan.instance_id, original))
        instance.stopped_by_us = True
        if plan.mode == "stop" and state in RUNNING_STATES:
            instance.state = ec2.stop_instance(plan.instance_id)
            instance.fresh = instance.state == "stopping"  # its stopped event is still to come
    return instance


def look_at_stop(instance: InstanceRef) -> InstanceRef:
    """Mode stop's wait, one look: the instance as EC2 describes it (``stopped`` ends the wait). An
    instance that is going away instead fails it: there is nothing left to image."""
    instance = instance.model_copy(update={"state": Ec2(instance.region).instance_state(instance.instance_id)})
    if instance.state in ("shutting-down", "terminated"):
        raise UnsupportedInstanceError(
            f"instance {instance.instance_id} is {instance.state}: there is nothing left to image"
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
        made_for=(event.run_id, "capture" if event.encrypt else "image"),
        volumes=event.volumes,
    )


def restore_instance(event: RestoreInstanceInput) -> InstanceRef:
    """The image is safe: start the instance again if this run's ledger says it stopped it, and (mode
    generalize) remove the clone and its seed image. A clone EC2 will not terminate is left to the run's
    ending and the janitor: it never costs the image. Safe to repeat."""
    instance = event.instance.model_copy()
    if event.mode == "generalize":
        remove_made(event.run_id, lambda made: made.role in ("clone", "seed"))
    instance.state = state_of(instance.region, instance.instance_id, put_back(event.run_id))
    return instance


def _run_of(plan: Plan) -> RunRecord:
    return RunRecord(
        run_id=plan.run_id, instance_id=plan.instance_id, region=plan.source_region, image_name=plan.image_name
    )


def keep_delivered(plan: FinalizeInput) -> RunStatus:
    """What the run delivered in its Regions is kept from here, however the run ends: recorded as the
    family's, and as Finalize's (a janitor ending the run later keeps it too). Run before copies into
    other accounts, which may take hours: a stop then must not undo what every Region published.
    Returns the run's status: the Regions', made PARTIAL by a copy into an account that failed."""
    failed = [result for result in plan.distribution if result.status == "FAILED"]
    failed_cells = [cell for cell in plan.accounts if cell.status == "FAILED"]  # copy_to_accounts
    delivered = delivered_images(plan)
    ledger = Ledger()
    for region, image_id in delivered.items():  # what retention will judge, with the request's own rules
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
    status: RunStatus = (
        "SUCCEEDED"
        if not failed and not failed_cells and plan.accounts_error is None
        else ("FAILED" if len(failed) == len(plan.distribution) else "PARTIAL")
    )
    if ledger.claim_ending(plan.run_id, FINALIZE) != FINALIZE:
        raise RunEndedError(
            f"run {plan.run_id}'s execution has ended and the janitor has ended the run; Finalize does nothing"
        )
    ledger.finalizing(plan.run_id, delivered, status)  # from here a janitor completes this, keeping the same
    return status


def delivered_images(plan: FinalizeInput) -> dict[str, str]:
    """Region -> the image the run delivered there."""
    return {
        result.region: result.image_id
        for result in plan.distribution
        if result.status == "AVAILABLE" and result.image_id
    }


def kept_delivered(plan: FinalizeInput) -> KeptDelivered:
    """The KeepDelivered step (before copies into accounts)."""
    return KeptDelivered(status=keep_delivered(plan), regions=sorted(delivered_images(plan)))


def finalize(plan: FinalizeInput) -> Summary:
    """Keep what the run delivered (every AVAILABLE Region's image); remove the rest (scaffolding, the
    encrypt capture, failed Regions' images, a launch check that was not terminated, a copy into an
    account not delivered) and roll back the failed Regions' parameters; put the instance back; tag
    it; tell. Each duty on its own."""
    failed = [result for result in plan.distribution if result.status == "FAILED"]
    failed_cells = [cell for cell in plan.accounts if cell.status == "FAILED"]
    delivered = delivered_images(plan)
    status = keep_delivered(plan)
    ledger = Ledger()
    run = _run_of(plan)
    ending = end_run(run, delivered)
    errors = (
        "; ".join(
            [f"{result.region}: {result.error.Error if result.error else 'failed'}" for result in failed]
            + [
                f"{cell.account_id} {cell.region}: {cell.error.Error if cell.error else 'failed'}"
                for cell in failed_cells
            ]
            + ([f"copies into accounts: {plan.accounts_error.Error}"] if plan.accounts_error else [])
        )
        or None
    )
    if plan.source_image_id is None:  # distributing an existing image never touches the instance, tags included
        ending.left += tag_result(run, status, delivered.get(plan.source_region), errors, ending.instance_tags)
    cost = None
    try:
        cost = image_cost(delivered, plan.source_region, load_prices(load_settings().price_overrides))
    except (ClientError, AmiFactoryError) as error:
        logger.warning("could not estimate the images' cost: %s", error)
    metrics.add_metric(name=f"Runs{status.title()}", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ImagesAvailable", unit=MetricUnit.Count, value=len(delivered))
    metrics.add_metric(name="RegionsFailed", unit=MetricUnit.Count, value=len(failed))
    summary = announced(
        Summary(
            status=status,
            run_id=plan.run_id,
            instance_id=plan.instance_id,
            image_name=plan.image_name,
            instance_state=ending.instance_state,
            regions=plan.distribution,
            failed_regions=[result.region for result in failed],
            accounts=plan.accounts,
            cleaned_up=ending.removed,
            left_over=ending.left,
            cost=cost,
            error="AllRegionsFailedError" if status == "FAILED" else None,
            cause=errors,
        ),
        plan.source_region,
    )
    ledger.ended(plan.run_id)
    return summary


def image_cost(images: dict[str, str], source_region: str, prices: Prices) -> CostEstimate:
    """What the images (one per Region) cost to keep, and what copying them cost once. A copy has its
    source's volumes, so one image's size is every Region's (one DescribeImages, not one per Region)."""
    if not images:
        return estimate_images({}, source_region, prices)
    looked_at = source_region if source_region in images else next(iter(images))
    size = float(Ec2(looked_at).image_gib(images[looked_at]))
    return estimate_images(dict.fromkeys(images, size), source_region, prices)


def handle_failure(plan: HandleFailureInput) -> Summary:
    """Put the instance back first, then undo everything this run made (each on its own), tag, tell;
    the state machine then fails with the run's own error. What could not be undone is listed, and
    left recorded in the ledger for the janitor."""
    run = _run_of(plan)
    ending = end_run(run, delivered={})
    if plan.source_image_id is None:
        ending.left += tag_result(run, "FAILED", None, plan.error.Error, ending.instance_tags)
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
    summary = announced(
        Summary(
            status="FAILED",
            run_id=plan.run_id,
            instance_id=plan.instance_id,
            image_name=plan.image_name,
            instance_state=ending.instance_state,
            cleaned_up=ending.removed,
            left_over=ending.left,
            error=plan.error.Error,
            cause=error_message(plan.error.Cause),
        ),
        plan.source_region,
    )
    Ledger().ended(plan.run_id)
    return summary
