"""What the steps of every stage share: the bound on waits, idempotent creation recorded in the
run's ledger, and which instances still count. Stages (preflight, generalize, workflow, distribution) import from here,
never from one another."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import ClientError

from .aws import Ec2, StepFunctions, error_code, refusal_text, snapshots_of, tags_of
from .contracts import ImageRef, Polled
from .errors import (
    AmiFactoryError,
    FamilyOwnedError,
    ImageNotVisibleYetError,
    NotMadeByRunError,
    RunInProgressError,
    WaitTimeoutError,
)
from .ledger import FamilyOwner, Holder, Ledger, Made, Role, TemplateVersion
from .observability import logger
from .polling import wait_after
from .request import VolumeChange
from .rules import CREATE_TOKEN_TAG

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import ImageTypeDef

PolledT = TypeVar("PolledT", bound=Polled)

# Instances a run may still have to find or terminate (not shutting-down or terminated).
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


def give_up_after(
    max_polls: int, polls: int, state: str, wanted: str, what: str, advice: str, limit: str = "MaxWaitSeconds"
) -> None:
    """The bound on every wait loop: the state machine only loops while this does not raise."""
    if state != wanted and polls >= max_polls:
        raise WaitTimeoutError(f"{what} is still {state} after {polls} checks; raise {limit} or {advice}")


def counted(polled: PolledT, poll_seconds: int) -> PolledT:
    """One more check of a wait loop, and how long the loop waits before the next (``polling``)."""
    polled.polls += 1
    polled.wait_seconds = wait_after(polled.polls, poll_seconds)
    return polled


def client_token(run_id: str, scope: str) -> str:
    """An idempotency token (CopyImage per Region, RunInstances for the clone): a retry sends the same one."""
    return hashlib.sha256(f"{run_id}/{scope}".encode()).hexdigest()  # 64 characters, ClientToken's limit


def found_again(ec2: Ec2, name: str, made_of: tuple[str, str], token: str) -> ImageTypeDef | None:
    """The image an earlier attempt of this step made: owned by this account (the lookup asks only for
    its own), named for this run, made from ``made_of``'s instance (run, instance), and carrying the
    attempt's token (``CREATE_TOKEN_TAG``, a secret the ledger keeps: a name anyone may take, and a
    throttled CreateImage's request, token included, is in CloudTrail before any image exists)."""
    run_id, instance_id = made_of
    existing = ec2.find_image_by_name(name)
    if existing is None:
        return None
    ours = existing.get("SourceInstanceId") == instance_id and tags_of(existing).get(CREATE_TOKEN_TAG) == token
    if not token or not ours:
        raise NotMadeByRunError(
            f"{ec2.region} already has an image named {name}, this run's name ({existing['ImageId']}), and it was "
            f"not made by run {run_id}; it is not taken for the run's (it is not in the run's ledger). Rename or "
            f"deregister it, or start the run under another name"
        )
    logger.info("image %s already exists for this run; not creating another", existing["ImageId"])
    return existing


def create_image_once(
    region: str,
    instance_id: str,
    name: str,
    description: str,
    no_reboot: bool,
    tags: dict[str, str],
    made_for: tuple[str, Role],
    volumes: Sequence[VolumeChange] = (),
) -> ImageRef:
    """CreateImage has no ClientToken, so the run makes one: a secret token, kept in the ledger before
    the first attempt and put on the image as a tag. The first attempt looks nothing up; a retried one
    (or an SDK retry of a call whose answer was lost, refused for the name) adopts the image of the
    run's name only if it carries the token, and an image of that name without it is someone else's,
    never taken for the run's. Either way the image is in the run's ledger before the step returns.
    ``made_for``: (run, role)."""
    run_id, role = made_for
    ec2, ledger = Ec2(region), Ledger()
    token, first = ledger.attempt(run_id, f"create#{region}#{name}")
    tags = {**tags, CREATE_TOKEN_TAG: token}
    existing = None if first else found_again(ec2, name, (run_id, instance_id), token)
    if existing:
        image = ImageRef(region=region, image_id=existing["ImageId"], state=existing["State"])
    else:
        try:
            image = ImageRef(
                region=region,
                image_id=ec2.create_image(instance_id, name, description, no_reboot, tags, volumes),
                fresh=True,
            )
        except ClientError as error:
            if error_code(error) != "InvalidAMIName.Duplicate":
                raise
            found = found_again(
                ec2, name, (run_id, instance_id), token
            )  # the run's own, if an SDK retry lost the answer
            if found is None:  # taken, but not listed yet: the retried step looks again
                raise ImageNotVisibleYetError(
                    f"{region} refused the name {name} as taken, and no image of it is listed yet"
                ) from error
            image = ImageRef(region=region, image_id=found["ImageId"], state=found["State"])
    ledger.record(run_id, Made(region=region, kind="image", resource_id=image.image_id, role=role))
    return image


def ask_for_template_version(ec2: Ec2, run_id: str, version: TemplateVersion) -> int:
    """CreateLaunchTemplateVersion for the run's record: its default, with the image. The same record
    makes the same call (ClientToken, parameters), so asking again answers the version made."""
    return ec2.create_launch_template_version(
        version.launch_template_id,
        version.previous_default,
        version.image_id,
        client_token=client_token(run_id, f"launch-template/{version.region}/{version.launch_template_id}"),
        description=f"AMI Factory run {run_id}: {version.image_id}"[:255],
    )


def require_made(run_id: str, region: str, resource_id: str, role: Role) -> Made:
    """The ledger's record of what the run is about to act on; refused when there is none (the state
    is data: whoever starts a run shapes its input, and a tag can name anything)."""
    made = Ledger().made_as(run_id, region, resource_id, role)
    if made is None:
        raise NotMadeByRunError(
            f"{resource_id} in {region} is not recorded in run {run_id}'s ledger as its {role}: AMI Factory only "
            f"acts on what the run made itself"
        )
    return made


def check_family(family: str, asking: FamilyOwner, adopt: bool) -> None:
    """Fail fast (before a run starts, or before it touches anything) when the family is another's."""
    owner = Ledger().family_owner(family)
    if owner and not adopt and not (owner.same_instance(asking) and owner.name == asking.name):
        raise family_refusal(family, owner, asking)


def family_refusal(family: str, owner: FamilyOwner, asking: FamilyOwner) -> FamilyOwnedError:
    """Why a run may not move ``family``'s latest: another instance owns it, or the same normalised
    family was first asked for by another name (two names are two families, never merged)."""
    if owner.same_instance(asking):
        return FamilyOwnedError(
            f"image family {family} was first published as {owner.name!r}, and this run asks for it as "
            f"{asking.name!r}: names that normalise to the same family are not merged. Set image_name (or the "
            f"Name tag) to {owner.name!r}, or pick a name that makes another family"
        )
    # Short enough for the ami-factory:error tag (256 characters) a refused trigger leaves.
    return FamilyOwnedError(
        f"image family {family} belongs to instance {owner.instance_id} ({owner.region}, account {owner.account}); "
        f"{asking.instance_id} may not move its latest. Use another image_name, or a StartExecution request with "
        f"adopt_family true"
    )


def running_holder(region: str, instance_id: str) -> Holder | None:
    """The run that holds the instance, if its execution is still running (a lock left by a run that
    ended without releasing it holds nothing)."""
    holder = Ledger().lock_holder(region, instance_id)
    return holder if holder and StepFunctions(region).is_running(holder.execution_arn) else None


def hold_instance(region: str, instance_id: str, holder: Holder) -> None:
    """One run per instance, however each was started: a conditional write of the instance's lock.
    A lock whose execution is no longer running is taken over (conditionally, from that holder only)."""
    ledger = Ledger()
    current = ledger.take_lock(region, instance_id, holder)
    # Twice at most: a stale lock taken over, or released between the two writes.
    for _ in range(2):  # pragma: no mutate
        if current is None or StepFunctions(region).is_running(current.execution_arn):
            break
        current = ledger.take_lock(region, instance_id, holder, replacing=current)
    if current is not None:
        raise RunInProgressError(
            f"instance {instance_id} is being imaged by run {current.run_id} ({current.execution_arn}); this run "
            f"stops before touching anything. Start again when that run has finished",
            run_id=current.run_id,
        )


@dataclass
class Removal:
    """What removing a run's resources did: each one removed, or left with the reason."""

    removed: list[str] = field(default_factory=list)  # REGION:ID
    left: list[str] = field(default_factory=list)  # REGION:ID (role): why


def remove_made(run_id: str, which: Callable[[Made], bool]) -> Removal:
    """Terminate or deregister (with snapshots) what the run's ledger records and ``which`` selects:
    what the run made itself, never what a tag names. Instances go first, then the images. Each on
    its own: one that EC2 refuses (or keeps throttling) is left, recorded as not removed, and the
    rest still go; the janitor tries the ones left again."""
    ledger = Ledger()
    found = sorted(
        (made for made in ledger.made_by(run_id) if not made.removed and which(made)),
        key=lambda made: made.kind != "instance",
    )
    removal = Removal()
    for made in found:
        try:
            removal.removed.append(remove_one(ledger, run_id, made))
        except (ClientError, AmiFactoryError) as error:
            reason = refusal_text(error)
            logger.warning("could not remove %s %s in %s: %s", made.role, made.resource_id, made.region, reason)
            removal.left.append(f"{made.region}:{made.resource_id} ({made.role}): {reason}")
    if removal.removed:
        logger.info("removed what the run made: %s", removal.removed)
    return removal


def remove_one(ledger: Ledger, run_id: str, made: Made) -> str:
    """Terminate or deregister what the run made, and mark it removed. An image's snapshots are written
    to the ledger before it is deregistered, and deleted by those ids, so a retry deletes them even
    when the image is gone. Deregistration protection the run turned on (ProtectImage) is turned off
    first; with a cooldown EC2 refuses the deregistration for a day, and the image is left for the janitor."""
    ec2 = Ec2(made.region)
    if made.kind == "instance":
        ec2.terminate_instance(made.resource_id)
    else:
        image = ec2.image(made.resource_id)
        if image is not None and not made.snapshots:
            made = ledger.update(run_id, replace(made, snapshots=tuple(snapshots_of(image))))
        if image is not None and str(image.get("DeregistrationProtection")).startswith("enabled"):
            ec2.disable_deregistration_protection(made.resource_id)
        if image is not None and made.fast_launch:
            ec2.turn_off_fast_launch(made.resource_id)
        ec2.delete_snapshots(ec2.deregister_image(made.resource_id, list(made.snapshots)))
    ledger.removed(run_id, made)
    return f"{made.region}:{made.resource_id}"
