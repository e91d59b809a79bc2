"""Every error the workflow can raise.

Lambda reports an exception's class name as ``errorType`` and the state machine matches on it, so
the names here are part of the contract with ``statemachine/imaging.asl.json``: rename one and the
ASL lint test fails.
"""

from __future__ import annotations

import json


class AmiFactoryError(Exception):
    """Base class: the message always says what is wrong and how to fix it."""


# --- the request is wrong: fail fast, touch nothing -------------------------------------------


class InvalidRequestError(AmiFactoryError):
    """The ImagingRequest does not parse (missing or malformed field)."""


class UnknownRegionError(AmiFactoryError):
    """A target Region is not an AWS Region, or not in the deploy-time allow-list."""


class ShareTargetNotAllowedError(AmiFactoryError):
    """An account, organization or OU is outside the deploy-time allow-list."""


class ApprovalMissingError(AmiFactoryError):
    """A run that needs approval reached a step that gives its images to someone, without one."""


class LaunchTemplateNotAllowedError(AmiFactoryError):
    """A request names a launch template outside the deploy-time allow-list."""


class CloneProfileNotAllowedError(AmiFactoryError):
    """A request names a clone instance profile outside the deploy-time allow-list."""


class PublicSharingBlockedError(AmiFactoryError):
    """Public sharing was asked for while the deployment does not allow it."""


class PublicImageLimitError(AmiFactoryError):
    """A Region already holds as many public images as EC2 allows."""


class EncryptionKeyError(AmiFactoryError):
    """The image's encryption keeps it from being used where it is shared (aws/ebs, no key for a Region)."""


class KeyAccessError(AmiFactoryError):
    """A customer managed key does not let a share target use it (key policy or grant)."""


class InstanceNotFoundError(AmiFactoryError):
    """The instance id does not exist in the stack's Region."""


class UnsupportedInstanceError(AmiFactoryError):
    """The instance cannot be imaged (instance-store root, terminated, ...)."""


class InstanceNotManagedError(AmiFactoryError):
    """A step needs SSM Run Command on the instance, and SSM does not manage it (with its platform)."""


class RunInProgressError(AmiFactoryError):
    """Another run already holds the instance; this one stops before touching anything."""

    def __init__(self, message: str, run_id: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id  # the holder's


class FamilyOwnedError(AmiFactoryError):
    """The image family belongs to another instance (or was first asked for by another name)."""


class PrivilegedSettingError(AmiFactoryError):
    """A tag asked for what only a StartExecution request may ask for (unless the operator opened it to tags)."""


class NotMadeByRunError(AmiFactoryError):
    """A step was asked to act on a resource its run's ledger does not record: it refuses."""


class RunNameTakenError(AmiFactoryError):
    """The execution's name is an earlier run's (Step Functions allows it again 90 days on): the ledger
    keeps that run's records, which this one must never act on."""


class RunEndedError(AmiFactoryError):
    """The run's execution has ended and the janitor has ended the run: a late step does nothing."""


class DeploymentError(AmiFactoryError):
    """The function lacks what the stack gives it (the ledger table, its SSM documents) or the ledger
    holds what the code cannot read: a deployment problem, not a request's."""


# --- the world said no, for good ----------------------------------------------------------


class ImageFailedError(AmiFactoryError):
    """EC2 reports the image as failed, invalid, error or deregistered."""


class CloneLaunchError(AmiFactoryError):
    """EC2 refused to launch the generalize clone (instance type, subnet, security groups, profile)."""


class CommandFailedError(AmiFactoryError):
    """An SSM Run Command invocation on the instance failed, was cancelled or timed out."""


class LaunchCheckFailedError(AmiFactoryError):
    """An instance launched from the new image did not run and pass its status checks."""


class WaitTimeoutError(AmiFactoryError):
    """A bounded wait (instance stopped, image available) ran out of polls."""


class RegionNotDeliveredError(AmiFactoryError):
    """copy_to_accounts: the Region has no image of the run to copy into the account (the Region failed)."""


class AllRegionsFailedError(AmiFactoryError):
    """No Region ended with a usable image."""


# --- transient: the ASL retries these with backoff and jitter ----------------------------------


class ThrottledError(AmiFactoryError):
    """EC2/SSM throttled the call (RequestLimitExceeded and friends)."""


class CopySlotBusyError(AmiFactoryError):
    """Every copy slot of the destination Region is held (CopySlotsPerRegion), or EC2's copy quota there
    is full (other tools copying): the copy waits. Retried apart from the transient errors, every 6
    minutes for up to 4 hours."""


class ImageNotVisibleYetError(AmiFactoryError):
    """InvalidAMIID.NotFound just after CreateImage/CopyImage: eventual consistency."""


class InstanceStateConflictError(AmiFactoryError):
    """The instance is mid-transition (stopping, pending); retry once it settles."""


RETRYABLE_ERRORS: tuple[type[AmiFactoryError], ...] = (
    ThrottledError,
    ImageNotVisibleYetError,
    InstanceStateConflictError,
)


def all_error_names() -> set[str]:
    """Names the ASL may legitimately match on (checked by the static tests)."""
    found: set[str] = set()
    pending: list[type[AmiFactoryError]] = [AmiFactoryError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return found


def error_message(cause: str | None) -> str | None:
    """A failed Lambda's cause is its error body (type, message, stack trace): people need the message."""
    try:
        return str(json.loads(cause or "")["errorMessage"])
    except (ValueError, KeyError, TypeError):
        return cause
