"""Copy slots: one semaphore per destination Region in the run ledger, shared by every run, so that
many runs at once never ask EC2 for more copies into a Region than CopySlotsPerRegion.

A copy first waits for its slot (``await_copy_slot``, a ``.waitForTaskToken`` task): it joins the
Region's queue (a wait in the ledger, since when it began) and then hands slots on itself, so a
free slot goes to the copy that has waited longest, which may be this one. Whoever gives a slot back
(the copy's own wait when the copy settles, a copy EC2 refused, the run's ending) hands it on the
same way: the slot is taken for the oldest waiting copy, and its task ends with it. So a wait costs
its run six history events and no polling, however long it lasts. A hand-off that is lost (its
Lambda died between giving back and handing on) is made by the fallback sweep, which also gives back
the slots of runs that ended without giving theirs back, in every Region with a queue.

Taking a slot is idempotent per run and Region (a run copies once into a Region), so two hand-offs
racing for the same copy take one slot, and the second's SendTaskSuccess finds the task over. A
slot is never given back on an answer from Step Functions: a slot taken for a copy whose task has
gone (its run stopped) is given back when the run ends, or by the sweep once its run has ended.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .aws import StepFunctions
from .contracts import AwaitCopySlotInput, CopySlot
from .errors import NotMadeByRunError
from .ledger import COPY_SLOT_WAIT, Ledger, Wait
from .observability import MetricUnit, logger, metrics, region_gauge
from .settings import load_settings

# How long a copy waits for its slot: one firing over 100 instances with 20 slots copies in five
# waves, and the last waits three hours for its slot when copies take 45 minutes.
COPY_SLOT_MAX_WAIT_SECONDS = 4 * 3600


def await_copy_slot(event: AwaitCopySlotInput) -> CopySlot:
    """Join the Region's queue, then hand slots on (to this copy, if it is the oldest waiting and a
    slot is free). What it returns says whether the copy still waits; the task ends by its token."""
    ledger = Ledger()
    run = ledger.run(event.run_id)
    if run is None or run.ended:  # a slot is for a run's copy: an invented or ended run queues for none
        raise NotMadeByRunError(f"run {event.run_id} is not an open run of this stack: it may not wait for a copy slot")
    slot = CopySlot(region=event.region, run_id=event.run_id)
    ledger.may_hold_copy_slot(event.run_id, event.region)
    wait = ledger.await_settling(
        Wait(
            run_id=event.run_id,
            region=event.region,
            resource_id=COPY_SLOT_WAIT + event.run_id,
            token=event.task_token,
            ref=slot.model_dump_json(),
            kind="copy-slot",
        )
    )
    if (run := ledger.run(event.run_id)) is None or run.ended:  # ended while this queued: the sweep's
        ledger.end_wait(wait)
        raise NotMadeByRunError(f"run {event.run_id} ended while its copy queued for a slot in {event.region}")
    if wait.run_id in hand_on(event.region, ledger):
        return slot
    limit = load_settings().copy_slots_per_region
    message = (
        f"waiting for a copy slot in {event.region}: {limit} copies of AMI Factory runs are in flight there "
        f"(CopySlotsPerRegion); the copy starts when one settles"
    )
    logger.info(message)
    return slot.model_copy(update={"waiting": True, "message": message})


def take(region: str, run_id: str, ledger: Ledger | None = None) -> bool:
    """A slot in ``region`` for ``run_id``'s copy, if one is free (True also when it holds one already)."""
    held = (ledger or Ledger()).take_copy_slot(region, run_id, load_settings().copy_slots_per_region)
    if held is not None:
        region_gauge("CopySlotsInUse", region, held)  # the dashboard's: slots in use, as the write says
    return held is not None


def sweep(regions: set[str]) -> list[str]:
    """The fallback for a lost hand-off, in each Region where copies wait: slots held by runs that have
    ended (a run that crashed holding one) given back, then free slots handed on. The runs whose copies
    got one."""
    ledger = Ledger()
    handed: list[str] = []
    for region in sorted(regions):
        for holder in ledger.copy_slot_holders(region):
            if (run := ledger.run(holder)) is None or run.ended:
                ledger.release_copy_slot(region, holder)
        handed += hand_on(region, ledger)
    return handed


def give_back(region: str, run_id: str, ledger: Ledger | None = None) -> None:
    """The run's slot in ``region`` back (a run that holds none changes nothing), handed on at once."""
    ledger = ledger or Ledger()
    left = ledger.release_copy_slot(region, run_id)
    if left is not None:
        region_gauge("CopySlotsInUse", region, left)
    try:
        hand_on(region, ledger)
    except Exception:  # another run's hand-off must not fail this step: the fallback sweep makes it
        logger.exception("could not hand the copy slot in %s on; the fallback sweep will", region)
        metrics.add_metric(name="CopySlotHandOffsFailed", unit=MetricUnit.Count, value=1)


def hand_on(region: str, ledger: Ledger | None = None) -> list[str]:
    """Free slots in ``region`` to the copies that have waited longest, each wait ended with its slot;
    the runs whose copies got one. A wait older than its bound is dropped: its task has timed out."""
    ledger, steps = ledger or Ledger(), StepFunctions(load_settings().region)
    now = datetime.now(UTC)
    oldest_alive = now - timedelta(seconds=COPY_SLOT_MAX_WAIT_SECONDS)
    handed: list[str] = []
    for wait in ledger.copy_slot_waits(region):
        if datetime.fromisoformat(wait.since) < oldest_alive:
            ledger.end_wait(wait)
            continue
        if not take(region, wait.run_id, ledger):
            break
        if steps.end_task(wait.token, output=wait.ref):
            waited = max(0.0, (now - datetime.fromisoformat(wait.since)).total_seconds())
            metrics.add_metric(name="CopySlotWaitSeconds", unit=MetricUnit.Seconds, value=waited)
        ledger.end_wait(wait)
        handed.append(wait.run_id)
    return handed
