"""Waits that end on AWS's own events instead of polling.

A step that waits for something to settle is a ``.waitForTaskToken`` task: an image (the seed, the
image, each copy: ``EC2 AMI State Change``), the instance stopping in mode stop (``EC2 Instance
State-change Notification``), the clean-up command (``EC2 Command Status-change Notification``) and
generalizing (the instance shutting itself down, or the command failing: either event). Its Lambda
(``watch_image``, ``watch_instance``) records the task token in the ledger under the resource's id
(only for what the run's own ledger holds, and never over another run's wait) and only then looks
once, so an event that comes after the look finds the token; what has settled already ends the task
at once. Otherwise the event (forwarded to the home Region from a copy's own) reaches
``settle_wait``, which finds the wait by the resource's id, looks (the event is a reason to look,
not the answer: it could be forged by whoever may invoke the function) and ends the task with what
AWS says: the step's reference, or the step's error (ImageFailedError, CommandFailedError, ...).

What can go wrong is harmless by construction: a duplicate or late event finds no wait, or a task
that is over (Step Functions answers TaskTimedOut); an event about anything no run waits for finds
no wait. Events are best effort, so a lost one is covered by the fallback sweep: every
EventFallbackMinutes a schedule runs ``sweep_waits``, which looks at everything some run still waits
for (one DescribeImages per Region for the images) and settles what settled. The sweep is one per
deployment, not one per wait: a run's cost does not grow with how long AWS takes. The task's own
timeout is the bound on the wait (MaxWaitSeconds, GeneralizeMaxWaitSeconds). The rules pass only
``aws.ec2`` and ``aws.ssm`` events of the stack's account.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from . import copy_slots
from .aws import FAILED_IMAGE_STATES, Ec2, StepFunctions
from .contracts import (
    AmiStateChange,
    AwsEvent,
    CommandRef,
    CommandStatusChange,
    GeneralizeRef,
    ImageRef,
    InstanceRef,
    InstanceStateChange,
    WaitSettled,
    WaitSweep,
    WatchImageInput,
    WatchInstanceInput,
)
from .errors import (
    RETRYABLE_ERRORS,
    AmiFactoryError,
    ImageFailedError,
    ImageNotVisibleYetError,
    InvalidRequestError,
)
from .generalize import look_at_command, look_at_generalize
from .ledger import Ledger, Role, Wait, WaitKind
from .observability import MetricUnit, logger, metrics
from .settings import load_settings
from .steps import require_made
from .workflow import look_at_stop

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import ImageTypeDef

AVAILABLE = "available"
EXPIRY_MARGIN_SECONDS = 3600
AMI_STATE_CHANGE = "EC2 AMI State Change"
INSTANCE_STATE_CHANGE = "EC2 Instance State-change Notification"
COMMAND_STATUS_CHANGE = "EC2 Command Status-change Notification"


@dataclass(frozen=True)
class Look:
    """What one look at a waited-for resource found: its state as AWS gave it (None: not visible
    yet), and, once the wait is over, the task's output (the step's reference) or its error."""

    state: str | None
    output: BaseModel | None = None
    error: AmiFactoryError | None = None


def watch_image(event: WatchImageInput) -> ImageRef:
    """The first thing an image's wait does: record the token, then look once. Only for an image the
    run's ledger holds as its ``role`` (a wait is the run's: no one else's token or copy slot is
    touched). The state machine ignores what this returns; the task ends by its token."""
    image = event.image
    _require_awaited_image(event.run_id, image, event.role)
    wait = Ledger().await_settling(
        Wait(
            run_id=event.run_id,
            region=image.region,
            resource_id=image.image_id,
            token=event.task_token,
            ref=image.model_copy(update={"fresh": False}).model_dump_json(),
            copy_slot=event.copy_slot,
        )
    )
    if image.fresh and event.attempt == 0 and wait.first_round:  # made a moment ago: its event is still to come
        return image
    state = _first_look(wait)
    return image.model_copy(update={"state": state or image.state})


def watch_instance(event: WatchInstanceInput) -> BaseModel:
    """The first thing a wait on the run's instance (or its clone) does: record the token under the
    instance (mode stop), the command (clean-up) or both (generalize), then look once. Only for an
    instance the run holds (its lock) or made (its clone)."""
    kind, ref, instance_id, (resource_id, also) = _watched_on_instance(event)
    _require_runs_instance(event.run_id, ref.region, instance_id)
    wait = Ledger().await_settling(
        Wait(
            run_id=event.run_id,
            region=ref.region,
            resource_id=resource_id,
            token=event.task_token,
            ref=ref.model_copy(update={"fresh": False}).model_dump_json(),
            kind=kind,
            also=also,
        )
    )
    if not (ref.fresh and event.attempt == 0 and wait.first_round):  # told to stop a moment ago: no event yet
        _first_look(wait)
    return ref


def _first_look(wait: Wait) -> str | None:
    """The look a wait begins with, once its token is recorded. Throttled, it is not retried: the
    wait is covered already (its event, or the fallback sweep, ends it), and retrying the look is what
    a hundred runs starting at once cannot afford."""
    try:
        return look_and_settle(wait, datetime.now(UTC))[0]
    except RETRYABLE_ERRORS:
        logger.warning("the first look was throttled; the event or the fallback sweep ends the wait")
        metrics.add_metric(name="WaitLooksThrottled", unit=MetricUnit.Count, value=1)
        return None


def _watched_on_instance(
    event: WatchInstanceInput,
) -> tuple[WaitKind, InstanceRef | CommandRef, str, tuple[str, str]]:
    """(kind, reference, the instance concerned, the resources whose events end the wait)."""
    if event.instance is not None:
        return "stop", event.instance, event.instance.instance_id, (event.instance.instance_id, "")
    if event.generalize is not None:
        command = event.generalize
        return "generalize", command, command.instance_id, (command.instance_id, command.command_id)
    if event.command is not None:
        return "command", event.command, event.command.instance_id, (event.command.command_id, "")
    raise InvalidRequestError("WatchInstance needs one of instance, command or generalize: nothing to wait for")


def _require_awaited_image(run_id: str, image: ImageRef, role: Literal["seed", "image"]) -> None:
    """The run's ledger holds the image as its seed, or as its image (with encrypt, the capture the
    Regions copy from is the image the run waits for)."""
    roles: tuple[Role, ...] = ("image", "capture") if role == "image" else ("seed",)
    made = {(made.region, made.resource_id, made.role) for made in Ledger().made_by(run_id)}
    if not any((image.region, image.image_id, each) in made for each in roles):
        require_made(run_id, image.region, image.image_id, role)  # refused, with its message


def _require_runs_instance(run_id: str, region: str, instance_id: str) -> None:
    """The run holds the instance (the lock every run takes on its own) or made it (its clone)."""
    holder = Ledger().lock_holder(region, instance_id)
    if holder is None or holder.run_id != run_id:
        require_made(run_id, region, instance_id, "clone")  # refused, with its message, unless it is


def settle_waits(raw: dict[str, object]) -> WaitSettled | WaitSweep:
    """SettleWait's two callers: AWS's events about what runs wait for, and the fallback sweep's schedule."""
    if raw.get("sweep") is True:
        return sweep_waits()
    return settle_wait(raw)


def sweep_waits() -> WaitSweep:
    """The fallback for lost events: every open wait looked at (the images with one DescribeImages per
    Region for all of them); those that settled are settled as their event would have. A wait older
    than its bound (MaxWaitSeconds, and an hour's margin) is over whatever happened: its task timed
    out, so its record is dropped rather than looked at forever. One wait (or Region) that cannot be
    looked at or settled holds up no other: it is logged and reported as failed."""
    ledger = Ledger()
    now = datetime.now(UTC)
    settings = load_settings()
    longest = max(settings.max_wait_seconds, settings.generalize_max_wait_seconds)
    expired_before = now - timedelta(seconds=longest + EXPIRY_MARGIN_SECONDS)
    images: dict[str, list[Wait]] = {}
    others: list[Wait] = []
    expired: list[str] = []
    slot_waits: list[Wait] = []
    for wait in ledger.open_waits():
        if wait.kind == "copy-slot":  # handed on below, and dropped there once past its bound
            slot_waits.append(wait)
        elif datetime.fromisoformat(wait.since) < expired_before:
            ledger.end_wait(wait)
            expired.append(wait.resource_id)
        elif wait.kind == "image":
            images.setdefault(wait.region, []).append(wait)
        else:
            others.append(wait)
    settled: list[str] = []
    failed: list[str] = []
    for region, waits in sorted(images.items()):
        with _each_failure_logged(failed, [wait.resource_id for wait in waits]):
            found = Ec2(region).own_images([wait.resource_id for wait in waits])
            for wait in waits:
                # An image not listed is not taken as gone: a new one may not be visible yet, and a
                # deregistration has its own event (and the wait its bound).
                if wait.resource_id in found:
                    with _each_failure_logged(failed, [wait.resource_id]):
                        if settle(wait, _image_look(wait, found[wait.resource_id]), now):
                            settled.append(wait.resource_id)
    for wait in others:
        with _each_failure_logged(failed, [wait.resource_id]):
            if look_and_settle(wait, now)[1]:
                settled.append(wait.resource_id)
    with _each_failure_logged(failed, [wait.resource_id for wait in slot_waits]):
        handed = copy_slots.sweep({wait.region for wait in slot_waits})
        settled += [wait.resource_id for wait in slot_waits if wait.run_id in handed]
    opened = sum(len(waits) for waits in images.values()) + len(others) + len(slot_waits)
    return WaitSweep(open=opened, settled=settled, expired=expired, failed=failed)


@contextmanager
def _each_failure_logged(failed: list[str], resource_ids: list[str]) -> Iterator[None]:
    """The sweep goes on past a failure (throttled, a Region turned off, a task Step Functions refuses):
    logged with what it was about, counted, and tried again at the next sweep."""
    try:
        yield
    except Exception:  # any failure: the other waits must still be swept
        logger.exception("the fallback sweep could not settle these waits", extra={"resources": resource_ids})
        metrics.add_metric(name="WaitSweepFailures", unit=MetricUnit.Count, value=len(resource_ids))
        failed.extend(resource_id for resource_id in resource_ids if resource_id not in failed)


def settle_wait(raw: dict[str, object]) -> WaitSettled:
    """The handler of AWS's events about what runs wait for: if a run waits for the resource the event
    names, look at it and end the wait if it settled. Whoever can invoke this function could write
    any event, but not what AWS answers."""
    event = AwsEvent.model_validate(raw)
    resource_id, claimed = _named_in(event)
    logger.append_keys(resource=resource_id, region=event.region)
    wait = Ledger().waiting_on(event.region, resource_id)
    if wait is None or wait.kind == "copy-slot":  # a slot is handed on, never settled by an event
        logger.info("no run waits for this resource", extra={"state": claimed})
        return WaitSettled(region=event.region, resource_id=resource_id, state=claimed, ended=False)
    at = datetime.fromisoformat(event.time) if event.time else datetime.now(UTC)
    state, ended = look_and_settle(wait, at)
    return WaitSettled(region=event.region, resource_id=resource_id, state=state or claimed, ended=ended)


def _named_in(event: AwsEvent) -> tuple[str, str]:
    """The resource an event is about, and the state it claims."""
    if event.detail_type == INSTANCE_STATE_CHANGE:
        instance = InstanceStateChange.model_validate(event.detail)
        return instance.instance_id, instance.state
    if event.detail_type == COMMAND_STATUS_CHANGE:
        command = CommandStatusChange.model_validate(event.detail)
        return command.command_id, command.status
    change = AmiStateChange.model_validate(event.detail)
    return change.ImageId, change.State


def look_and_settle(wait: Wait, at: datetime) -> tuple[str | None, bool]:
    """Look at what the wait is for and settle it if it has settled: the state AWS gave (None: an
    image not visible yet, right after CreateImage or CopyImage: its event, or the sweep, will come),
    and whether this ended the task."""
    found = LOOKS[wait.kind](wait)
    return found.state, settle(wait, found, at)


def _look_at_image(wait: Wait) -> Look:
    try:
        described = Ec2(wait.region).describe_image(wait.resource_id)
    except ImageNotVisibleYetError:
        return Look(state=None)
    return _image_look(wait, described)


def _image_look(wait: Wait, described: ImageTypeDef) -> Look:
    image = ImageRef.model_validate_json(wait.ref).model_copy(update={"state": described["State"]})
    if image.state == AVAILABLE:
        return Look(image.state, output=image)
    if image.state in FAILED_IMAGE_STATES:
        reason = described.get("StateReason", {}).get("Message", "") or "no reason given"
        error = ImageFailedError(f"image {image.image_id} in {image.region} is {image.state}: {reason}")
        return Look(image.state, error=error)
    return Look(image.state)


def _looking_with(
    model: type[InstanceRef] | type[CommandRef] | type[GeneralizeRef],
    look: Callable[..., InstanceRef | CommandRef | GeneralizeRef],
    state_of: Callable[..., str],
    done: str,
) -> Callable[[Wait], Look]:
    """A look at an instance or a command: the step's own look (which raises the step's error when it
    failed), done when ``state_of`` its answer is ``done``."""

    def looking(wait: Wait) -> Look:
        try:
            found = look(model.model_validate_json(wait.ref))
        except RETRYABLE_ERRORS:
            raise  # throttled, mid-transition: not an answer about the step; looked at again
        except AmiFactoryError as error:
            return Look("failed", error=error)
        state = state_of(found)
        return Look(state, output=found if state == done else None)

    return looking


LOOKS: dict[WaitKind, Callable[[Wait], Look]] = {
    "image": _look_at_image,
    "stop": _looking_with(InstanceRef, look_at_stop, lambda instance: instance.state, "stopped"),
    "command": _looking_with(CommandRef, look_at_command, lambda command: command.status, "Success"),
    "generalize": _looking_with(GeneralizeRef, look_at_generalize, lambda command: command.instance_state, "stopped"),
}


def settle(wait: Wait, found: Look, at: datetime) -> bool:
    """End the wait if what it waits for has settled: its copy slot back first (a settled copy holds
    none), then the task (with the step's reference, or its error), then the ledger's record of the
    wait. Whether this ended the task (False: not settled yet, or the task was over already)."""
    output, error = found.output, found.error
    if output is None and error is None:
        return False
    ledger = Ledger()
    if wait.copy_slot:
        copy_slots.give_back(wait.region, wait.run_id, ledger)
    steps = StepFunctions(load_settings().region)
    ended = False
    if error is not None:
        # The Cause a Lambda error has (its error body), so the run's failure reads the same either way.
        cause = json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)})
        ended = steps.end_task(wait.token, error=type(error).__name__, cause=cause)
    elif output is not None:
        if wait.kind == "image":
            waited = max(0.0, (at - datetime.fromisoformat(wait.since)).total_seconds())
            metrics.add_metric(name="ImageWaitSeconds", unit=MetricUnit.Seconds, value=waited)
        ended = steps.end_task(wait.token, output=output.model_dump_json())
    ledger.end_wait(wait)
    return ended
