"""Waits that end on AWS's own events instead of polling.

A step that waits for an image (the seed, the image, each copy) is a ``.waitForTaskToken`` task. Its
Lambda (``watch_image``) records the task token in the ledger under the image's id and only then
looks at the image once, so an event that comes after the look finds the token; an image that has
settled already ends the task at once. Otherwise EC2's ``EC2 AMI State Change`` event (forwarded to
the home Region from the image's own) reaches ``settle_wait``, which finds the token by the image's
id and ends the task with the image's state.

What can go wrong is harmless by construction: a duplicate or late event finds no wait, or a task
that is over (Step Functions answers TaskTimedOut); an event about an image no run waits for finds
no wait. Events are best effort, so a lost one is covered by the fallback sweep: every
EventFallbackMinutes a schedule runs ``sweep_waits``, which looks at every image some run still waits
for (one DescribeImages per Region) and settles those that settled. The sweep is one per deployment,
not one per wait: a run's cost does not grow with how long EC2 takes. The task's own timeout is the
bound on the wait (MaxWaitSeconds). An event cannot end a wait for anything but the image it names,
and only events from ``aws.ec2`` reach the handler (no one else may send them).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from .aws import Ec2, StepFunctions
from .contracts import AmiStateChange, AwsEvent, ImageRef, WaitSettled, WaitSweep, WatchImageInput
from .errors import ImageFailedError
from .ledger import Ledger, Wait
from .observability import MetricUnit, logger, metrics
from .settings import load_settings

AVAILABLE = "available"
# The states in which an image will never become available: its wait ends with ImageFailedError.
FAILED_IMAGE_STATES = frozenset({"failed", "invalid", "error", "deregistered", "disabled"})
EXPIRY_MARGIN_SECONDS = 3600


def watch_image(event: WatchImageInput) -> ImageRef:
    """The first thing an image's wait does (and each round after a fallback check): record the token,
    then look once. The state machine ignores what this returns; the task ends by its token."""
    image = event.image
    wait = Ledger().await_settling(
        Wait(
            region=image.region,
            resource_id=image.image_id,
            token=event.task_token,
            ref=image.model_dump_json(),
            copy_slot_of=event.copy_slot_of,
        )
    )
    described = Ec2(image.region).describe_image(image.image_id)
    reason = described.get("StateReason", {}).get("Message", "")
    settle(wait, described["State"], reason, datetime.now(UTC))
    return image.model_copy(update={"state": described["State"]})


def settle_waits(raw: dict[str, object]) -> WaitSettled | WaitSweep:
    """SettleWait's two callers: EC2's event about an image, and the fallback sweep's schedule."""
    if raw.get("sweep") is True:
        return sweep_waits()
    return settle_wait(raw)


def sweep_waits() -> WaitSweep:
    """The fallback for lost events: every open wait's image, looked at (one DescribeImages per Region
    for all of them); those that settled are settled as their event would have. A wait older than its
    bound (MaxWaitSeconds, and an hour's margin) is over whatever happened: its task timed out and its
    image was removed, so its record is dropped rather than looked at forever."""
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
    for region, waits in sorted(by_region.items()):
        found = Ec2(region).own_images([wait.resource_id for wait in waits])
        for wait in waits:
            # An image not listed is not taken as gone: a new one may not be visible yet, and a
            # deregistration has its own event (and the wait its bound).
            if (image := found.get(wait.resource_id)) is None:
                continue
            if settle(wait, image["State"], image.get("StateReason", {}).get("Message", ""), now):
                settled.append(wait.resource_id)
    return WaitSweep(open=sum(len(waits) for waits in by_region.values()), settled=settled, expired=expired)


def settle_wait(raw: dict[str, object]) -> WaitSettled:
    """The handler of EC2's ``EC2 AMI State Change``: end the wait for the image, if a run waits for it."""
    event = AwsEvent.model_validate(raw)
    change = AmiStateChange.model_validate(event.detail)
    logger.append_keys(image=change.ImageId, region=event.region)
    wait = Ledger().waiting_on(event.region, change.ImageId)
    at = datetime.fromisoformat(event.time) if event.time else datetime.now(UTC)
    ended = wait is not None and settle(wait, change.State, change.ErrorMessage, at)
    if wait is None:
        logger.info("no run waits for this image", extra={"state": change.State})
    return WaitSettled(region=event.region, resource_id=change.ImageId, state=change.State, ended=ended)


def settle(wait: Wait, state: str, reason: str, at: datetime) -> bool:
    """End the wait if the image has settled: its copy slot back first (a settled copy holds none),
    then the task (with the image, or with ImageFailedError), then the ledger's record of the wait.
    Whether this ended the task (False: not settled yet, or the task was over already)."""
    if state != AVAILABLE and state not in FAILED_IMAGE_STATES:
        return False
    ledger = Ledger()
    if wait.copy_slot_of:
        ledger.release_copy_slot(wait.region, wait.copy_slot_of)
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
