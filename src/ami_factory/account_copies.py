"""Copies owned by other accounts (the request's ``copy_to_accounts``).

After a Region's image is shared and published, each account of copy_to_accounts copies it into
itself in that Region: AMI Factory assumes the role the account deployed for it
(``examples/target-account-role.yaml``, with the deployment's external id), sends CopyImage there
(a ClientToken per run, account and Region), encrypted with the account's key, tagged as AMI
Factory's, then waits for the copy and moves the account's own ``latest`` parameter to it. The
account owns its copy: it outlives the factory's image, and the factory's retention never touches it.

Each account and Region is one cell of the DeliverToAccounts map, and a cell that fails removes its
copy (the run's ledger records it from CopyImage's answer) and is reported FAILED without stopping
the others. The account's AMI events go to its own bus, where nothing of the stack's listens, so a
cell looks every ACCOUNT_POLL_SECONDS at least, backing off as the other wait loops do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from botocore.exceptions import ClientError

from .aws import FAILED_IMAGE_STATES, Ec2, Ssm, Sts, error_text, snapshots_of
from .contracts import AccountCell, AccountCopyRef, AccountCopyResult, DeliverToAccountInput, RemoveAccountCopyInput
from .errors import (
    AmiFactoryError,
    DeploymentError,
    ImageFailedError,
    ImageNotVisibleYetError,
    NotMadeByRunError,
    RegionNotDeliveredError,
    RunEndedError,
    WaitTimeoutError,
)
from .ledger import AccountCopy, Ledger
from .observability import logger
from .polling import polls_within, wait_after
from .rules import RUN_TAG, check_copy_accounts
from .settings import load_settings
from .steps import client_token

ACCOUNT_POLL_SECONDS = 300  # a look costs 9 history events: a 45-minute copy takes 9 looks, not 45


def _in_account(cell: AccountCell, run_id: str) -> tuple[Ec2, Ssm]:
    """EC2 and SSM in the cell's account and Region, as the role it deployed for the stack; the
    allow-list is checked again here: the state is data anyone with StartExecution can shape."""
    settings = load_settings()
    check_copy_accounts([cell.account_id], settings, own_account="")
    if not settings.copy_account_external_id:  # the template's rule makes a deployment without it fail
        raise DeploymentError(
            "copy_to_accounts needs the deployment's CopyAccountExternalId (the ExternalId of the accounts' "
            "target-account-role stacks): redeploy with it set"
        )
    # A role session's name takes fewer characters than an execution's. The session is tagged with the
    # run: the account's role removes only copies whose run tag is its session's (the IAM fence).
    session = re.sub(r"[^\w+=,.@-]", "-", f"ami-factory-{run_id}")
    credentials = Sts(settings.region).assume_role(
        settings.copy_account_role_arn(cell.account_id),
        settings.copy_account_external_id,
        session,
        tags={RUN_TAG: session_run_tag(run_id)},
    )
    return Ec2(cell.region, credentials), Ssm(cell.region, credentials)


def session_run_tag(run_id: str) -> str:
    """The run's id as a session tag may hold it (and so as the account's copy is tagged)."""
    return re.sub(r"[^\w .:/=+@-]", "-", run_id)


def deliver_to_account(event: DeliverToAccountInput) -> AccountCopyRef:
    """One look at the cell: copy (the first call), then wait until the copy is available, then publish."""
    cell, poll_seconds = event.cell, max(event.poll_seconds, ACCOUNT_POLL_SECONDS)
    source = _delivered_source(event)
    ledger = Ledger()
    recorded = ledger.account_copy(event.run_id, cell.account_id, cell.region)
    copied = event.account_copy
    if copied is not None and (recorded is None or recorded.image_id != copied.image_id or recorded.removed):
        raise NotMadeByRunError(
            f"image {copied.image_id} is not the copy run {event.run_id} made in account {cell.account_id} "
            f"({cell.region}), as its ledger records it: nothing is looked at or published"
        )
    ec2, ssm = _in_account(cell, event.run_id)
    if copied is None:
        image_id = ec2.copy_image(
            cell.region,
            source,
            event.image_name,
            event.description,
            client_token(event.run_id, f"account/{cell.account_id}/{cell.region}"),
            {**event.tags, RUN_TAG: session_run_tag(event.run_id)},
            kms_key_id=cell.kms_key_id,
            encrypted=True,
        )
        recorded = ledger.record_account_copy(event.run_id, AccountCopy(cell.account_id, cell.region, image_id))
        return AccountCopyRef(
            account_id=cell.account_id,
            region=cell.region,
            source_image_id=source,
            image_id=recorded.image_id,
            wait_seconds=wait_after(0, poll_seconds),
            fresh=True,
        )
    image = ec2.describe_image(copied.image_id)
    state, polls = str(image["State"]), copied.polls + 1
    if state in FAILED_IMAGE_STATES:
        reason = image.get("StateReason", {}).get("Message", "EC2 gave no reason")
        raise ImageFailedError(
            f"the copy {copied.image_id} in account {cell.account_id} ({cell.region}) is {state}: {reason} (if the "
            f"image is encrypted, the account's role and the key policies must let it use the keys)"
        )
    if state != "available":
        if polls >= polls_within(event.max_wait_seconds, poll_seconds):
            raise WaitTimeoutError(
                f"the copy {copied.image_id} in account {cell.account_id} ({cell.region}) is still {state} after "
                f"{event.max_wait_seconds} s (MaxWaitSeconds)"
            )
        return copied.model_copy(
            update={"polls": polls, "wait_seconds": wait_after(polls, poll_seconds), "state": state}
        )
    copy = AccountCopy(cell.account_id, cell.region, copied.image_id)
    moved = any(
        (write.region, write.name) == (cell.region, event.parameter_name) and not write.rolled_back
        for write in ledger.parameter_writes(event.run_id)
    )
    if not moved:  # the stack's latest kept a newer image (forward only): the account's keeps its own too
        ledger.account_copy_delivered(event.run_id, copy)
        note = f"latest not moved: this run did not move {event.parameter_name} in {cell.region} either"
        return copied.model_copy(update={"polls": polls, "state": state, "published": True, "note": note})
    ledger.account_copy_publishing(event.run_id, copy)  # a removal after this looks at the parameter first
    ssm.put_image_parameter(
        event.parameter_name, copied.image_id, f"AMI Factory: {event.image_name} (run {event.run_id})"
    )
    ledger.account_copy_delivered(event.run_id, copy)
    return copied.model_copy(update={"polls": polls, "state": state, "published": True})


def _delivered_source(event: DeliverToAccountInput) -> str:
    """The image the run delivered in the cell's Region, as its ledger records it (KeepDelivered): the
    state says which, the ledger says whether; and the cell and its latest must be the run's own."""
    cell = event.cell
    run = Ledger().run(event.run_id)
    if run is None or run.ended or not run.finalizing:
        raise RunEndedError(
            f"run {event.run_id} is not delivering (it has ended, or never kept its images): no account is asked"
        )
    if f"{cell.account_id}/{cell.region}" not in run.account_cells or event.parameter_name != run.parameter_name:
        raise NotMadeByRunError(
            f"run {event.run_id} never asked for a copy in account {cell.account_id} ({cell.region}) published as "
            f"{event.parameter_name}: ResolveRequest recorded {list(run.account_cells)}, {run.parameter_name}"
        )
    source = dict(run.delivered).get(cell.region)
    if source is None:
        raise RegionNotDeliveredError(
            f"{cell.region} has no image of this run to copy into account {cell.account_id}: the Region failed "
            f"(see its error in the summary)"
        )
    return source


def remove_account_copy(event: RemoveAccountCopyInput) -> AccountCopyResult:
    """A failed cell: its copy goes (what the ledger recorded from CopyImage's answer, nothing else);
    what could not be removed is said in the result, and the other cells go on. A copy the account's
    latest already names (the cell failed after moving it) is delivered, and stays."""
    cell, error = event.cell, event.error
    copy = Ledger().account_copy(event.run_id, cell.account_id, cell.region)
    failed = AccountCopyResult(account_id=cell.account_id, region=cell.region, status="FAILED", error=error)
    if copy is None or copy.removed:
        return failed
    removal = remove_copy(event.run_id, copy)
    if removal.delivered:
        run = Ledger().run(event.run_id)
        return AccountCopyResult(
            account_id=cell.account_id,
            region=cell.region,
            status="DELIVERED",
            image_id=copy.image_id,
            parameter_name=run.parameter_name if run else None,
        )
    if removal.left:
        failed.error = error.model_copy(update={"Cause": f"{error.Cause or ''} ({removal.left})".strip()})
    return failed


@dataclass(frozen=True)
class CopyRemoval:
    left: str | None = None  # why the copy is still there
    delivered: bool = False  # it is the account's after all: its latest names it


def remove_copy(run_id: str, copy: AccountCopy) -> CopyRemoval:
    """Deregister the run's copy in its account (and its snapshots), as the account's role, unless it
    is delivered: the ledger says so, or (a move of latest under way when the step failed) the
    account's latest names it."""
    if copy.delivered:
        return CopyRemoval(delivered=True)
    ledger = Ledger()
    try:
        ec2, ssm = _in_account(AccountCell(account_id=copy.account, region=copy.region), run_id)
        run = ledger.run(run_id)
        if copy.publishing and run is not None and ssm.parameter_value(run.parameter_name) == copy.image_id:
            ledger.account_copy_delivered(run_id, copy)
            return CopyRemoval(delivered=True)
        try:
            snapshots = snapshots_of(ec2.describe_image(copy.image_id))
        except ImageNotVisibleYetError:  # not listed yet, or gone: DeleteAssociatedSnapshots has the rest
            snapshots = []
        ec2.delete_snapshots(ec2.deregister_image(copy.image_id, snapshots))
        ledger.account_copy_removed(run_id, copy)
    except (ClientError, AmiFactoryError) as failure:
        text = error_text(failure) if isinstance(failure, ClientError) else str(failure)
        logger.warning("could not remove the account's copy", extra={"image": copy.image_id, "error": text})
        return CopyRemoval(left=f"its copy {copy.image_id} is left in account {copy.account} ({copy.region}): {text}")
    return CopyRemoval()
