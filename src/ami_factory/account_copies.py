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

from botocore.exceptions import ClientError

from .aws import FAILED_IMAGE_STATES, Ec2, Ssm, Sts, error_text, snapshots_of
from .contracts import AccountCell, AccountCopyRef, AccountCopyResult, DeliverToAccountInput, RemoveAccountCopyInput
from .errors import (
    AmiFactoryError,
    DeploymentError,
    ImageFailedError,
    ImageNotVisibleYetError,
    RegionNotDeliveredError,
    WaitTimeoutError,
)
from .ledger import AccountCopy, Ledger
from .observability import logger
from .polling import polls_within, wait_after
from .rules import check_copy_accounts
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
    credentials = Sts(settings.region).assume_role(
        settings.copy_account_role_arn(cell.account_id), settings.copy_account_external_id, f"ami-factory-{run_id}"
    )
    return Ec2(cell.region, credentials), Ssm(cell.region, credentials)


def deliver_to_account(event: DeliverToAccountInput) -> AccountCopyRef:
    """One look at the cell: copy (the first call), then wait until the copy is available, then publish."""
    cell, poll_seconds = event.cell, max(event.poll_seconds, ACCOUNT_POLL_SECONDS)
    source = next(
        (r.image_id for r in event.distribution if r.region == cell.region and r.status == "AVAILABLE" and r.image_id),
        None,
    )
    if source is None:
        raise RegionNotDeliveredError(
            f"{cell.region} has no image of this run to copy into account {cell.account_id}: the Region failed "
            f"(see its error in the summary)"
        )
    ec2, ssm = _in_account(cell, event.run_id)
    copied = event.account_copy
    if copied is None:
        image_id = ec2.copy_image(
            cell.region,
            source,
            event.image_name,
            event.description,
            client_token(event.run_id, f"account/{cell.account_id}/{cell.region}"),
            event.tags,
            kms_key_id=cell.kms_key_id,
            encrypted=True,
        )
        recorded = Ledger().record_account_copy(event.run_id, AccountCopy(cell.account_id, cell.region, image_id))
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
    ssm.put_image_parameter(
        event.parameter_name, copied.image_id, f"AMI Factory: {event.image_name} (run {event.run_id})"
    )
    Ledger().account_copy_delivered(event.run_id, AccountCopy(cell.account_id, cell.region, copied.image_id))
    return copied.model_copy(update={"polls": polls, "state": state, "published": True})


def remove_account_copy(event: RemoveAccountCopyInput) -> AccountCopyResult:
    """A failed cell: its copy goes (what the ledger recorded from CopyImage's answer, nothing else);
    what could not be removed is said in the result, and the other cells go on."""
    cell, error = event.cell, event.error
    copy = Ledger().account_copy(event.run_id, cell.account_id, cell.region)
    if copy is not None and not copy.removed and (left := remove_copy(event.run_id, copy)):
        error = error.model_copy(update={"Cause": f"{error.Cause or ''} ({left})".strip()})
    return AccountCopyResult(account_id=cell.account_id, region=cell.region, status="FAILED", error=error)


def remove_copy(run_id: str, copy: AccountCopy) -> str | None:
    """Deregister the run's copy in its account (and its snapshots), as the account's role; None when
    it is gone, else what was left and why (a failed cell's result, a run's ending)."""
    try:
        ec2, _ = _in_account(AccountCell(account_id=copy.account, region=copy.region), run_id)
        try:
            snapshots = snapshots_of(ec2.describe_image(copy.image_id))
        except ImageNotVisibleYetError:  # not listed yet, or gone: DeleteAssociatedSnapshots has the rest
            snapshots = []
        ec2.delete_snapshots(ec2.deregister_image(copy.image_id, snapshots))
        Ledger().account_copy_removed(run_id, copy)
    except (ClientError, AmiFactoryError) as failure:
        text = error_text(failure) if isinstance(failure, ClientError) else str(failure)
        logger.warning("could not remove the account's copy", extra={"image": copy.image_id, "error": text})
        return f"its copy {copy.image_id} is left in account {copy.account} ({copy.region}): {text}"
    return None
