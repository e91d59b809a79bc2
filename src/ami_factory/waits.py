"""Waits that end on AWS's own events instead of polling.

A step that waits for an image (the seed, the image, each copy) is a ``.waitForTaskToken`` task. Its
Lambda (``watch_image``) records the task token in the ledger under the image's id (only for an
image the run's own ledger holds, and never over another run's wait) and only then looks at the
image once, so an event that comes after the look finds the token; an image that has settled
already ends the task at once. Otherwise EC2's ``EC2 AMI State Change`` event (forwarded to the home
Region from the image's own) reaches ``settle_wait``, which finds the wait by the image's id, asks
EC2 about the image (the event is a reason to look, not the answer: it could be forged by whoever
may invoke the function) and ends the task with the state EC2 gives.

What can go wrong is harmless by construction: a duplicate or late event finds no wait, or a task
that is over (Step Functions answers TaskTimedOut); an event about an image no run waits for finds
no wait. Events are best effort, so a lost one is covered by the fallback sweep: every
EventFallbackMinutes a schedule runs ``sweep_waits``, which looks at every image some run still waits
for (one DescribeImages per Region) and settles those that settled. The sweep is one per deployment,
not one per wait: a run's cost does not grow with how long EC2 takes. The task's own timeout is the
bound on the wait (MaxWaitSeconds). An event cannot end a wait for anything but the image it names,
and the rule passes only events from ``aws.ec2`` in the stack's account.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal

from .aws import Ec2, StepFunctions
from .contracts import AmiStateChange, AwsEvent, ImageRef, WaitSettled, WaitSweep, WatchImageInput
from .errors import ImageFailedError, ImageNotVisibleYetError
from .ledger import Ledger, Role, Wait
from .observability import MetricUnit, logger, metrics
from .settings import load_settings
from .steps import require_made

AVAILABLE = "available"
# The states in which an image will never become available: its wait ends with ImageFailedError.
FAILED_IMAGE_STATES = frozenset({"failed", "invalid", "error", "deregistered", "disabled"})
EXPIRY_MARGIN_SECONDS = 3600


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
            ref=image.model_dump_json(),
            copy_slot=event.copy_slot,
        )
    )
    state, _ = look(wait, datetime.now(UTC))
    return image.model_copy(update={"state": state or image.state})


def _require_awaited_image(run_id: str, image: ImageRef, role: Literal["seed", "image"]) -> None:
    """The run's ledger holds the image as its seed, or as its image (with encrypt, the capture the
    Regions copy from is the image the run waits for)."""
    roles: tuple[Role, ...] = ("image", "capture") if role == "image" else ("seed",)
    made = {(made.region, made.resource_id, made.role) for made in Ledger().made_by(run_id)}
    if not any((image.region, image.image_id, each) in made for each in roles):
        require_made(run_id, image.region, image.image_id, role)  # refused, with its message


def settle_waits(raw: dict[str, object]) -> WaitSettled | WaitSweep:
    """SettleWait's two callers: EC2's event about an image, and the fallback sweep's schedule."""
    if raw.get("sweep") is True:
        return sweep_waits()
    return settle_wait(raw)


def sweep_waits() -> WaitSweep:
    """The fallback for lost events: every open wait's image, looked at (one DescribeImages per Region
    for all of them); those that settled are settled as their event would have. A wait older than its
    bound (MaxWaitSeconds, and an hour's margin) is over whatever happened: its task timed out and its
    image was removed, so its record is dropped rather than looked at forever. One wait (or Region)
    that cannot be looked at or settled holds up no other: it is logged and reported as failed."""
    ledger = Ledger()
    now = datetime.now(UTC)
    expired_before = now - timedelta(seconds=load_settings().max_wait_seconds + EXPIRY_MARGIN_SECONDS)
    by_region: dict[str, list[Wait]] = {}
    expired: list[str] = []
    for wait in ledger.open_waits():
        if datetime.fromisoformat(wait.since) < expired_before:
            ledger.end_wait(wait)
            expired.append(wait.resource_id)
        else:
            by_region.setdefault(wait.region, []).append(wait)
    settled: list[str] = []
    failed: list[str] = []
    for region, waits in sorted(by_region.items()):
        with _each_failure_logged(failed, [wait.resource_id for wait in waits]):
            found = Ec2(region).own_images([wait.resource_id for wait in waits])
            for wait in waits:
                # An image not listed is not taken as gone: a new one may not be visible yet, and a
                # deregistration has its own event (and the wait its bound).
                if (image := found.get(wait.resource_id)) is None:
                    continue
                with _each_failure_logged(failed, [wait.resource_id]):
                    if settle(wait, image["State"], image.get("StateReason", {}).get("Message", ""), now):
                        settled.append(wait.resource_id)
    return WaitSweep(
        open=sum(len(waits) for waits in by_region.values()), settled=settled, expired=expired, failed=failed
    )


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
    """The handler of EC2's ``EC2 AMI State Change``: if a run waits for the image, look at it and end
    the wait if EC2 says it settled. The event is a reason to look, never the answer: whoever can
    invoke this function could write any event, but not what EC2 answers."""
    event = AwsEvent.model_validate(raw)
    change = AmiStateChange.model_validate(event.detail)
    logger.append_keys(image=change.ImageId, region=event.region)
    wait = Ledger().waiting_on(event.region, change.ImageId)
    if wait is None:
        logger.info("no run waits for this image", extra={"state": change.State})
        return WaitSettled(region=event.region, resource_id=change.ImageId, state=change.State, ended=False)
    at = datetime.fromisoformat(event.time) if event.time else datetime.now(UTC)
    state, ended = look(wait, at)
    return WaitSettled(region=event.region, resource_id=change.ImageId, state=state or change.State, ended=ended)


def look(wait: Wait, at: datetime) -> tuple[str | None, bool]:
    """Ask EC2 about the wait's image and settle the wait if it has settled: the state EC2 gave (None:
    not visible yet, right after CreateImage or CopyImage: its event, or the sweep, will come), and
    whether this ended the task."""
    try:
        described = Ec2(wait.region).describe_image(wait.resource_id)
    except ImageNotVisibleYetError:
        return None, False
    reason = described.get("StateReason", {}).get("Message", "")
    return described["State"], settle(wait, described["State"], reason, at)


def settle(wait: Wait, state: str, reason: str, at: datetime) -> bool:
    """End the wait if the image has settled: its copy slot back first (a settled copy holds none),
    then the task (with the image, or with ImageFailedError), then the ledger's record of the wait.
    Whether this ended the task (False: not settled yet, or the task was over already)."""
    if state != AVAILABLE and state not in FAILED_IMAGE_STATES:
        return False
    ledger = Ledger()
    if wait.copy_slot:
        ledger.release_copy_slot(wait.region, wait.run_id)
    image = ImageRef.model_validate_json(wait.ref).model_copy(update={"state": state})
    steps = StepFunctions(load_settings().region)
    if state == AVAILABLE:
        waited = max(0.0, (at - datetime.fromisoformat(wait.since)).total_seconds())
        metrics.add_metric(name="ImageWaitSeconds", unit=MetricUnit.Seconds, value=waited)
        ended = steps.end_task(wait.token, output=image.model_dump_json())
    else:
        message = f"image {image.image_id} in {image.region} is {state}: {reason or 'no reason given'}"
        # The Cause a Lambda error has (its error body), so the run's failure reads the same either way.
        cause = json.dumps({"errorType": ImageFailedError.__name__, "errorMessage": message})
        ended = steps.end_task(wait.token, error=ImageFailedError.__name__, cause=cause)
    ledger.end_wait(wait)
    return ended
