"""How a run ends, however it ends: the instance put back first; then the parameters the run moved
rolled back and what it made removed, except what it delivered; then its lock released; then the
instance tagged and people told. Each duty on its own: one that fails is recorded and the rest still
happen. Finalize, HandleFailure and the janitor (for runs whose execution ended where no Catch runs:
StopExecution, a runtime error, the history quota, a crashed Finalize) all end runs here, from the
run's ledger, never from the execution's state, which whoever starts a run shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from botocore.exceptions import ClientError

from . import copy_slots
from .account_copies import remove_copy
from .aws import Ec2, Notifications, Ssm, StepFunctions, refusal_text, tags_of
from .contracts import EndedRuns, ExecutionStatusChange, ExecutionStatusChangeEvent, RegionResult, RunStatus, Summary
from .errors import RETRYABLE_ERRORS, AmiFactoryError, InstanceStateConflictError, ThrottledError
from .ledger import Ledger, RunRecord
from .observability import MetricUnit, logger, metrics
from .rules import TAG_PREFIX, execution_arn, tag_value_keeping_advice
from .settings import load_settings
from .steps import ask_for_template_version, remove_made

RUNNING_STATES = ("running", "pending")


@dataclass
class Ending:
    """What ending a run did: the instance's state afterwards, what was removed, and what was left (why)."""

    instance_state: str | None = None
    instance_tags: dict[str, str] | None = None  # as EC2 described them at the end (None: not described)
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def put_back(run_id: str) -> dict[str, str]:
    """Start every instance the run recorded stopping (it was running) that is stopped now; returns
    the state each is in after. Transient refusals (still stopping, throttled) are raised: the state
    machine retries the step patiently, and nothing else has happened yet."""
    states = {}
    ledger = Ledger()
    for stop in ledger.stops(run_id):
        if stop.original_state not in RUNNING_STATES:
            continue
        ec2 = Ec2(stop.region)
        try:  # EC2's answer says the state it is in now: starting one that runs changes nothing
            state = ec2.start_instance(stop.instance_id)
        except InstanceStateConflictError:  # stopping (started once it has stopped), or going away
            state = ec2.instance_state(stop.instance_id)
            if state in ("stopping", "stopped"):
                raise InstanceStateConflictError(
                    f"instance {stop.instance_id} is still stopping; starting it once it has stopped"
                ) from None
        # Put back once: a later ending never starts an instance its owner has stopped since.
        ledger.put_back(run_id, stop)
        states[stop.instance_id] = state
    return states


def state_of(region: str, instance_id: str, known: dict[str, str]) -> str:
    """The instance's state: as putting it back left it, or as EC2 says."""
    return known.get(instance_id) or Ec2(region).instance_state(instance_id)


def roll_back_parameters(run_id: str, delivered_regions: set[str]) -> tuple[list[str], set[str]]:
    """Put back what the run's parameters held before it, in every Region it did not deliver, unless a
    later run has written them since (then they are that run's). A previous image that is gone is
    not put back: the parameter is deleted rather than left naming nothing. Returns what could not be
    rolled back, and the Regions where a parameter may still name the run's image."""
    ledger = Ledger()
    ours = {(made.region, made.resource_id) for made in ledger.made_by(run_id) if made.kind == "image"}
    left: list[str] = []
    blocked: set[str] = set()
    for write in ledger.parameter_writes(run_id):
        if write.rolled_back or write.region in delivered_regions:
            continue
        try:
            ssm = Ssm(write.region)
            current = ssm.parameter_value(write.name)
            if current is not None and (write.region, current) in ours:
                previous = write.previous
                if previous is not None and Ec2(write.region).image(previous) is None:
                    logger.warning("%s held %s before, which is gone: deleting it", write.name, previous)
                    previous = None
                if previous is None:
                    ssm.delete_parameter(write.name)
                else:
                    ssm.put_image_parameter(write.name, previous, f"Latest AMI Factory image ({previous}), put back")
            ledger.parameter_rolled_back(run_id, write)
        except (ClientError, AmiFactoryError) as error:
            logger.warning("could not roll back %s in %s: %s", write.name, write.region, refusal_text(error))
            left.append(f"{write.region}:{write.name} (parameter): {refusal_text(error)}")
            blocked.add(write.region)
    return left, blocked


def roll_back_launch_templates(run_id: str, delivered_regions: set[str]) -> tuple[list[str], set[str]]:
    """In every Region the run did not deliver, its launch template versions go: the default it
    replaced is put back if its own version is still the default (one made default since is another
    run's or a person's), then its version is deleted. Only versions EC2 answered the run with (one
    whose answer was lost is asked for again, with the run's ClientToken, and EC2 names it). Returns
    what could not be taken back, and the Regions where a template may still name the run's image."""
    ledger = Ledger()
    left: list[str] = []
    blocked: set[str] = set()
    for version in ledger.template_versions(run_id):
        if version.rolled_back or version.region in delivered_regions:
            continue
        try:
            ec2 = Ec2(version.region)
            number = version.version
            if number is None and version.image_id:  # asked for, answer lost: asking again answers it
                number = ask_for_template_version(ec2, run_id, version)
            if number is not None:
                if ec2.launch_template_default_version(version.launch_template_id) == number:
                    ec2.set_launch_template_default(version.launch_template_id, version.previous_default)
                ec2.delete_launch_template_version(version.launch_template_id, number)
            ledger.template_version_rolled_back(run_id, version)
        except (ClientError, AmiFactoryError) as error:
            what = f"{version.region}:{version.launch_template_id} version {version.version} (launch template)"
            logger.warning("could not take back %s: %s", what, refusal_text(error))
            left.append(f"{what}: {refusal_text(error)}")
            blocked.add(version.region)
    return left, blocked


def end_run(run: RunRecord, delivered: dict[str, str]) -> Ending:
    """Put the instance back, roll back and remove everything but ``delivered`` (Region -> image),
    release the lock. Safe to repeat: what is done is recorded done."""
    ending = Ending()
    known: dict[str, str] = {}
    try:
        known = put_back(run.run_id)
    except RETRYABLE_ERRORS:
        raise
    except (ClientError, AmiFactoryError) as error:
        ending.left.append(f"{run.region}:{run.instance_id} (instance): not started again: {refusal_text(error)}")
    not_rolled_back, blocked = roll_back_parameters(run.run_id, set(delivered))
    try:  # latest's forward-only claim goes back where the run did not deliver, as the parameter did
        Ledger().give_back_latest(run.run_id, set(delivered))
    except (ClientError, AmiFactoryError) as error:
        logger.warning("could not give back the run's claims on latest: %s", refusal_text(error))
        ending.left.append(f"claims on latest: {refusal_text(error)}")
    templates_left, templates_blocked = roll_back_launch_templates(run.run_id, set(delivered))
    ending.left += not_rolled_back + templates_left
    blocked |= templates_blocked
    # An image a parameter that could not be rolled back may still name stays until it can be.
    removal = remove_made(
        run.run_id,
        lambda made: (
            not (made.kind == "image" and (delivered.get(made.region) == made.resource_id or made.region in blocked))
        ),
    )
    ending.removed, ending.left = removal.removed, ending.left + removal.left
    ending.left += [
        f"{made.region}:{made.resource_id} ({made.role}): kept while latest or a launch template may still name it"
        for made in Ledger().made_by(run.run_id)
        if made.kind == "image"
        and not made.removed
        and made.region in blocked
        and delivered.get(made.region) != made.resource_id
    ]
    ledger = Ledger()
    # copy_to_accounts: a copy not delivered yet (the run ended mid-copy) goes; a delivered one is the account's.
    for copy in ledger.account_copies(run.run_id):
        if not copy.removed and not copy.delivered:
            gone = remove_copy(run.run_id, copy)
            if gone.left:
                ending.left.append(gone.left)
            elif not gone.delivered:
                ending.removed.append(f"{copy.region}:{copy.image_id} (copy in account {copy.account})")
    try:
        ledger.release_lock(run.region, run.instance_id, run.run_id)
    except (ClientError, AmiFactoryError) as error:  # a stale lock is taken over by the next run
        logger.warning("could not release the lock on %s: %s", run.instance_id, refusal_text(error))
    try:  # the run's tasks are over: the sweep need not look at what they waited for
        ledger.end_waits_of(run.run_id)
    except (ClientError, AmiFactoryError) as error:  # the sweep drops them once older than any wait
        logger.warning("could not forget the run's waits: %s", refusal_text(error))
    # A slot is held from the hand-off to the copy's settling, whatever became of the copy: given back
    # in every Region where the run asked for one (a hand-off racing this ending is the sweep's).
    for region in sorted(ledger.copy_slot_regions(run.run_id)):
        try:
            copy_slots.give_back(region, run.run_id, ledger)
        except (ClientError, AmiFactoryError) as error:  # the fallback sweep gives back an ended run's
            logger.warning("could not give back the copy slot in %s: %s", region, refusal_text(error))
    try:
        if run.instance_id in known:
            ending.instance_state = known[run.instance_id]
        else:
            described = Ec2(run.region).describe_instance(run.instance_id)
            ending.instance_state, ending.instance_tags = str(described["State"]["Name"]), tags_of(described)
    except (ClientError, AmiFactoryError) as error:
        logger.warning("could not read the state of %s: %s", run.instance_id, refusal_text(error))
    if ending.left:
        metrics.add_metric(name="ResourcesLeft", unit=MetricUnit.Count, value=len(ending.left))
    return ending


def tag_result(
    run: RunRecord, status: str, image_id: str | None, error: str | None, tags: dict[str, str] | None
) -> list[str]:
    """The run's result on the instance, and the trigger tag cleared (so setting it again starts the
    next run) unless ``tags``, the instance's as the run's ending found them, have none. Returns what
    could not be done."""
    result = {
        f"{TAG_PREFIX}last-run": run.run_id,
        f"{TAG_PREFIX}last-run-at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{TAG_PREFIX}last-status": status,
    }
    if image_id:
        result[f"{TAG_PREFIX}last-image-id"] = image_id
    # Always written, so a success clears the error a previous run left behind.
    result[f"{TAG_PREFIX}last-error"] = tag_value_keeping_advice(error or "")
    ec2 = Ec2(run.region)
    try:
        ec2.tag_resource(run.instance_id, result)
        trigger = load_settings().trigger_tag_key
        if tags is None or trigger in tags:
            ec2.untag_resource(run.instance_id, [trigger])
    except (ClientError, AmiFactoryError) as failure:
        logger.warning("could not tag %s with the result: %s", run.instance_id, refusal_text(failure))
        return [f"{run.region}:{run.instance_id} (tags): {refusal_text(failure)}"]
    return []


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
    if summary.left_over:
        lines.append("Left over (the janitor tries again): " + "; ".join(summary.left_over))
    lines.append("")
    lines.append(summary.model_dump_json(indent=2, exclude={"notification_error"}))
    return "\n".join(lines)


# --- the janitor -----------------------------------------------------------------------------------

JANITOR, FINALIZE = "janitor", "finalize"  # who claims a run's ending
ENDED_BADLY = {"FAILED": "ExecutionFailed", "TIMED_OUT": "ExecutionTimedOut", "ABORTED": "ExecutionAborted"}


def clean_up_after(change: ExecutionStatusChange) -> Summary | None:
    """The janitor, on a run's execution ending FAILED, TIMED_OUT or ABORTED: do what the run's own
    ending did not (all of it when no Catch ran; what was left when one did). Idempotent."""
    settings = load_settings()
    if change.stateMachineArn != settings.state_machine_arn:
        logger.warning("not this deployment's state machine: %s", change.stateMachineArn)
        return None
    return end_ended_run(change.name, ending_error(change), change.cause)


def ending_error(change: ExecutionStatusChange) -> str:
    """The error a run that ended without its own ending is tagged and told with: the execution's own
    (a Fail state's, States.Runtime), else what its status says."""
    # The rule sends only the statuses in ENDED_BADLY: the default is for a status AWS may add.
    return change.error or ENDED_BADLY.get(change.status, "ExecutionFailed")  # pragma: no mutate


def end_ended_run(run_id: str, error: str, cause: str | None) -> Summary | None:
    """End a run whose execution is over, from its ledger: a run that never passed ResolveRequest has
    no record and nothing to end; a run with nothing unsettled is done; a running one is left alone
    (whatever the event claimed). Tags the instance and tells people only when the run's own ending
    never ran."""
    settings = load_settings()
    ledger = Ledger()
    run = ledger.run(run_id)
    if run is None or not ledger.unsettled(run_id):
        return None
    execution = StepFunctions(settings.region).execution(execution_arn(settings.state_machine_arn, run_id))
    if execution is None or execution[0] == "RUNNING":
        return None
    # Start times agree to the millisecond: any tolerance of a second or two, `>` or `>=`, is the same.
    apart = abs((datetime.fromisoformat(run.started) - execution[1]).total_seconds()) if run.started else 0.0
    if apart > 1:  # pragma: no mutate
        # The name's execution now is a later one (names are reusable 90 days on): not this run's to end.
        logger.warning("run %s's records belong to an earlier execution of its name; not ending it", run_id)
        return None
    # Finalize and the janitor may both be at it (an execution stopped during Finalize): one wins.
    # A Finalize that recorded what it delivered is completed, keeping it and saying how it went;
    # any other ending undoes the whole run.
    if not run.ended and ledger.claim_ending(run_id, JANITOR) != JANITOR:
        run = ledger.run(run_id) or run
    finalized = run.finalizing  # recorded with its status, in one write
    delivered = dict(run.delivered) if finalized else {}
    status: RunStatus = "FAILED"
    if finalized:
        status = cast("RunStatus", run.status)  # pragma: no mutate (the cast's type is for mypy)
    ending = end_run(run, delivered)
    summary = Summary(
        status=status,
        run_id=run_id,
        instance_id=run.instance_id,
        image_name=run.image_name,
        instance_state=ending.instance_state,
        regions=[
            RegionResult(region=region, status="AVAILABLE", image_id=image) for region, image in delivered.items()
        ],
        cleaned_up=ending.removed,
        left_over=ending.left,
        error=None if status != "FAILED" else error,
        cause=None
        if status != "FAILED"
        else cause or "the run's execution ended before it could clean up after itself",
    )
    if not run.ended:
        if not run.distributing:  # a run that distributes an existing image never touches the instance
            summary.left_over += tag_result(run, status, delivered.get(run.region), summary.error, ending.instance_tags)
        metrics.add_metric(name="RunsEndedByJanitor", unit=MetricUnit.Count, value=1)
        summary = announced(summary, run.region)
    ledger.ended(run_id)
    logger.info("janitor", extra={"run": run_id, "removed": ending.removed, "left": summary.left_over})
    return summary


def sweep() -> list[Summary]:
    """The hourly sweep: every run whose ending left something (or never came) and whose execution is
    over, ended again."""
    swept = []
    for run_id in Ledger().runs_not_settled():
        try:
            summary = end_ended_run(run_id, "ExecutionFailed", None)
        except (ClientError, AmiFactoryError) as error:
            logger.warning("the sweep could not end run %s: %s", run_id, refusal_text(error))
            continue
        if summary is not None:
            swept.append(summary)
    return swept


def end_runs(event: dict[str, Any]) -> EndedRuns:
    """The janitor's entry point: ``{"sweep": true}`` from its daily schedule, else a status-change event."""
    if event.get("sweep") is True:
        return EndedRuns(ended=sweep())
    summary = clean_up_after(ExecutionStatusChangeEvent.model_validate(event).detail)
    return EndedRuns(ended=[summary] if summary else [])
