"""The run ledger: what each run made, who holds each instance, who owns each family.

A DynamoDB table (``LedgerTable`` in template.yaml), in the stack's Region. Tags are labels anyone
with ``ec2:CreateTags`` can write; the ledger is written only by AMI Factory's functions, from AWS's
own answers (the ids RunInstances, CreateImage and CopyImage returned). Every destructive call a run
makes (terminate, deregister, delete a snapshot, send sysprep/sanitize to a clone) targets ids found
here, never ids found by tag.

Items (``pk``, ``sk``):

- ``run#RUN`` / ``run``: the run itself (its instance, its image name), whether it has ended its own
  way (Finalize or HandleFailure) and which images it delivered, for the janitor;
- ``run#RUN`` / ``made#REGION#ID``: an instance or image the run made, its role, the snapshots it
  had when it was removed, and whether it was;
- ``run#RUN`` / ``stop#REGION#ID``: the state an instance was in before the run stopped it, written
  before StopInstances is sent, so whatever happens next the instance is put back;
- ``run#RUN`` / ``parameter#REGION#NAME``: the value a parameter had before the run wrote it;
- ``run#RUN`` / ``slot#REGION``: the run may hold a copy slot in REGION (noted before it first asks);
- ``run#RUN`` / ``attempt#CALL``: a call (CreateImage, CopyImage) the run has attempted, noted before it;
- ``instance#REGION#ID`` / ``lock``: the run that holds the instance (one run per instance);
- ``family#FAMILY`` / ``owner``: the instance whose runs may move the family's ``latest``;
- ``family#FAMILY`` / ``image#REGION#ID``: an image a run published, with its request's retention;
- ``wait`` / ``REGION#ID``: the step of a run waiting for a resource to settle (its run, task token,
  the reference it waits with, since when), so that AWS's event about the resource ends that step;
  one partition, so the fallback sweep reads every open wait with one Query. A copy waiting for a
  copy slot in REGION is one too (``REGION#copy-slot/RUN``): the Region's queue, oldest first;
- ``copy-slots#REGION`` / ``slots``: the runs holding a copy slot in REGION (the semaphore).

Writes are conditional where two writers could race (locks, owners, first records), so a retried
step finds what it wrote instead of writing it twice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, cast, get_args

from botocore.exceptions import ClientError

from .aws import error_code, translated_errors
from .clients import client
from .errors import DeploymentError, NotMadeByRunError
from .settings import load_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, UniversalAttributeValueTypeDef

Kind = Literal["instance", "image"]
Role = Literal["seed", "clone", "capture", "image", "launch-check"]
WaitKind = Literal["image", "stop", "command", "generalize", "copy-slot"]
CONDITION_FAILED = "ConditionalCheckFailedException"
WAIT_PARTITION = "wait"  # every open wait, in one partition: the fallback sweep reads them with one Query
COPY_SLOT_WAIT = "copy-slot/"  # a wait for a copy slot is recorded under copy-slot/RUN, in its Region


@dataclass(frozen=True)
class Made:
    """Something a run made, as AWS answered when it was made."""

    region: str
    kind: Kind
    resource_id: str
    role: Role
    snapshots: tuple[str, ...] = ()  # an image's, recorded before it is deregistered
    removed: bool = False
    fast_launch: bool = False  # Windows fast launch asked for (before the call): turned off before removal

    def __post_init__(self) -> None:
        # Clean-up decides what to call by kind and role: a record it could not read is never written or read.
        if self.kind not in get_args(Kind) or self.role not in get_args(Role):
            raise DeploymentError(f"the ledger records an unknown kind or role: {self.kind!r} {self.role!r}")


@dataclass(frozen=True)
class AccountCopy:
    """A copy of the run's image that another account owns (copy_to_accounts), as CopyImage answered."""

    account: str
    region: str
    image_id: str
    removed: bool = False
    delivered: bool = False  # available, and the account's latest moved to it: the account's from then on
    publishing: bool = False  # the account's latest is being moved to it: a removal looks at latest first


@dataclass(frozen=True)
class Holder:
    """The run that holds an instance."""

    run_id: str
    execution_arn: str


@dataclass(frozen=True)
class FamilyOwner:
    """The instance whose runs publish a family, and the name the family was first asked for by."""

    account: str
    region: str
    instance_id: str
    name: str  # before normalising: two names that normalise alike are two families, refused
    # The run that claimed the family: read only where a claim is recorded (claim_family). A FamilyOwner
    # made only to ask (check_family, from ResolveRequest and the triggers) carries it unread, so a
    # mutant that empties it there changes nothing (the two survivors of `make mutation` that say so).
    run_id: str

    def same_instance(self, other: FamilyOwner) -> bool:
        return (self.account, self.region, self.instance_id) == (other.account, other.region, other.instance_id)


@dataclass(frozen=True)
class FamilyImage:
    """A published image of a family in one Region, with the retention its run's request asked for
    (0: the deployment's). What retention judges: never an image found by tag."""

    family: str
    region: str
    image_id: str
    run_id: str
    keep_newest: int = 0
    max_age_days: int = 0
    removed: bool = False


@dataclass(frozen=True)
class Stop:
    """An instance the run stops (or lets generalize shut down), and the state it was in before."""

    region: str
    instance_id: str
    original_state: str


@dataclass(frozen=True)
class ParameterWrite:
    """A parameter the run wrote, and what it held before (``None``: it did not exist)."""

    region: str
    name: str
    previous: str | None
    rolled_back: bool = False


@dataclass(frozen=True)
class TemplateVersion:
    """A launch template version the run creates (``version`` None: asked for, EC2's answer not yet
    recorded), the default it found, and whether it made its version the default."""

    region: str
    launch_template_id: str
    previous_default: int
    image_id: str = ""  # the version's image: asking again (same ClientToken) answers the same version
    version: int | None = None
    made_default: bool = False
    rolled_back: bool = False


@dataclass(frozen=True)
class Wait:
    """A step of ``run_id`` waiting for a resource to settle: AWS's event about the resource ends it
    with ``token``. ``kind`` says what settled means (see ``waits``); ``ref`` is the step's reference
    (JSON) that the event completes; ``also``: a second resource whose events end the same wait (the
    generalize command, besides the instance it shuts down); ``copy_slot``: a copy's wait, whose run
    gives its copy slot back when the copy settles."""

    run_id: str
    region: str
    resource_id: str
    token: str
    ref: str
    kind: WaitKind = "image"
    also: str = ""
    copy_slot: bool = False
    since: str = ""  # when the first round of the wait began (ISO 8601, UTC, to the microsecond)
    first_round: bool = False  # as recorded by await_settling: this round is the wait's first


@dataclass(frozen=True)
class RunRecord:
    """A run as its ledger knows it: enough to end it without its execution's state."""

    run_id: str
    instance_id: str
    region: str
    image_name: str
    started: str = ""  # the execution's start time: a later execution of the same name is another run
    distributing: bool = False  # an existing image (source_image_id): its ending never touches the instance
    ended: bool = False  # its own Finalize or HandleFailure ran (or the janitor ended it)
    delivered: tuple[tuple[str, str], ...] = ()  # (Region, image) Finalize kept; set before it removes anything
    finalizing: bool = False
    status: str = ""  # what Finalize found: SUCCEEDED, PARTIAL or FAILED
    # copy_to_accounts, as ResolveRequest resolved it: each ACCOUNT/REGION, and the latest they publish.
    account_cells: tuple[str, ...] = ()
    parameter_name: str = ""


Item = dict[str, str]


def _encode(item: Item) -> dict[str, UniversalAttributeValueTypeDef]:
    return {key: {"S": value} for key, value in item.items()}


def _decode(item: dict[str, AttributeValueTypeDef]) -> Item:
    return {key: str(value.get("S", "")) for key, value in item.items()}


def _now(precise: bool = False) -> str:
    now = datetime.now(UTC)
    return now.isoformat(timespec="microseconds") if precise else now.strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    def __init__(self) -> None:
        settings = load_settings()
        if not settings.ledger_table:
            raise DeploymentError("LEDGER_TABLE is not set: the function must be deployed with the stack's LedgerTable")
        self._table = settings.ledger_table
        self._db = client("dynamodb", settings.region)

    # --- what a run made ---------------------------------------------------------------------

    def record(self, run_id: str, made: Made) -> None:
        """Record ``made`` once: a retried step's record changes nothing already written (removed stays removed)."""
        item = {
            "pk": f"run#{run_id}",
            "sk": f"made#{made.region}#{made.resource_id}",
            "region": made.region,
            "kind": made.kind,
            "resource_id": made.resource_id,
            "role": made.role,
            "snapshots": "",
            "removed": "false",
            "settled": "false",
            "recorded_at": _now(),
        }
        self._put_once(item)

    def record_account_copy(self, run_id: str, copy: AccountCopy) -> AccountCopy:
        """Record the copy once (kept apart from what the run made here: the stack's own clean-up never
        acts on another account's images); a retried step gets the first record back."""
        self._put_once(
            {
                "pk": f"run#{run_id}",
                "sk": f"account-copy#{copy.account}#{copy.region}",
                "image_id": copy.image_id,
                "account": copy.account,
                "region": copy.region,
                "removed": "false",
                "delivered": "false",
                "settled": "false",  # until delivered or removed: what a run's ending (and the sweep) acts on
                "recorded_at": _now(),
            }
        )
        return self.account_copy(run_id, copy.account, copy.region) or copy

    def account_copy(self, run_id: str, account: str, region: str) -> AccountCopy | None:
        item = self._get(f"run#{run_id}", f"account-copy#{account}#{region}")
        return _account_copy(item) if item else None

    def account_copies(self, run_id: str) -> list[AccountCopy]:
        return [_account_copy(item) for item in self._query(f"run#{run_id}", "account-copy#")]

    def account_copy_removed(self, run_id: str, copy: AccountCopy) -> None:
        key = f"account-copy#{copy.account}#{copy.region}"
        self._set(f"run#{run_id}", key, {"removed": "true", "settled": "true"})

    def account_copy_publishing(self, run_id: str, copy: AccountCopy) -> None:
        self._set(f"run#{run_id}", f"account-copy#{copy.account}#{copy.region}", {"publishing": "true"})

    def account_copy_delivered(self, run_id: str, copy: AccountCopy) -> None:
        key = f"account-copy#{copy.account}#{copy.region}"
        self._set(f"run#{run_id}", key, {"delivered": "true", "settled": "true"})

    def attempt(self, run_id: str, call: str) -> tuple[str, bool]:
        """The run's secret token for ``call`` (e.g. ``create#REGION#NAME``), written before the first
        attempt at the call is made, and whether this is that first attempt: a retried step (or a
        redriven execution) finds the token, and knows an earlier attempt may have made the call."""
        token = secrets.token_hex(16)
        if self._put_once({"pk": f"run#{run_id}", "sk": f"attempt#{call}", "token": token, "recorded_at": _now()}):
            return token, True
        item = self._get(f"run#{run_id}", f"attempt#{call}")
        return (item or {}).get("token", ""), False

    def open_run(self, record: RunRecord) -> RunRecord:
        """Record the run (once: a retried ResolveRequest gets the first record back, and so does an
        execution that reuses an earlier run's name, which the caller must refuse)."""
        self._put_once(
            {
                "pk": f"run#{record.run_id}",
                "sk": "run",
                "instance_id": record.instance_id,
                "region": record.region,
                "image_name": record.image_name,
                "started": record.started,
                "distributing": "true" if record.distributing else "false",
                "ended": "false",
                "finalizing": "false",
                "delivered": "",
                "account_cells": ",".join(record.account_cells),
                "parameter_name": record.parameter_name,
                "settled": "false",
                "recorded_at": _now(),
            }
        )
        return self.run(record.run_id) or record

    def run(self, run_id: str) -> RunRecord | None:
        item = self._get(f"run#{run_id}", "run")
        if not item:
            return None
        return RunRecord(
            run_id=run_id,
            instance_id=item["instance_id"],
            region=item["region"],
            image_name=item["image_name"],
            started=item.get("started", ""),
            distributing=item.get("distributing") == "true",
            ended=item["ended"] == "true",
            finalizing=item["finalizing"] == "true",
            status=item.get("status", ""),
            delivered=tuple(
                cast("tuple[str, str]", tuple(pair.split(":", 1))) for pair in item["delivered"].split(",") if pair
            ),
            account_cells=tuple(cell for cell in item.get("account_cells", "").split(",") if cell),
            parameter_name=item.get("parameter_name", ""),
        )

    def claim_ending(self, run_id: str, by: str) -> str:
        """Who ends the run when Finalize and the janitor could both (an execution stopped during
        Finalize): the first to claim it; returns the winner. Conditional, so exactly one wins."""
        if self._update_if(
            f"run#{run_id}",
            "run",
            "SET ending_by = :by",
            "attribute_exists(pk) AND (attribute_not_exists(ending_by) OR ending_by = :by)",
            _encode({":by": by}),
        ):
            return by
        item = self._get(f"run#{run_id}", "run")
        return item.get("ending_by", "") if item else ""

    def finalizing(self, run_id: str, delivered: dict[str, str], status: str) -> None:
        """Finalize's first word: which Region images the run delivered and how it went (a janitor
        completing a crashed Finalize keeps them, removes the rest, and says the same). The delivered
        images and their Regions' parameters are settled: nothing will remove or roll them back."""
        pairs = ",".join(f"{region}:{image}" for region, image in sorted(delivered.items()))
        self._set(f"run#{run_id}", "run", {"finalizing": "true", "delivered": pairs, "status": status})
        for made in self.made_by(run_id):
            if made.kind == "image" and delivered.get(made.region) == made.resource_id:
                self._set(f"run#{run_id}", f"made#{made.region}#{made.resource_id}", {"settled": "true"})
        for write in self.parameter_writes(run_id):
            if write.region in delivered:
                self._set(f"run#{run_id}", f"parameter#{write.region}#{write.name}", {"settled": "true"})
        for version in self.template_versions(run_id):
            if version.region in delivered:
                self._set(f"run#{run_id}", _template_key(version), {"settled": "true"})

    def ended(self, run_id: str) -> None:
        """The run has ended, its own way or the janitor's (what it left stays unsettled)."""
        self._set(f"run#{run_id}", "run", {"ended": "true", "settled": "true"})

    def unsettled(self, run_id: str) -> list[Item]:
        """The run's records still to be acted on: what it made and has not removed or delivered,
        parameters not rolled back or kept, instances not put back, the run itself if it has not ended."""
        return [item for item in self._query(f"run#{run_id}") if item.get("settled") == "false"]

    def runs_not_settled(self) -> list[str]:
        """Runs with something unsettled: not ended, ended with something left, or with a record a
        late task wrote after the run ended. What the sweep looks at."""
        return sorted({item["pk"].removeprefix("run#") for item in self._scan("", settled="false")})

    def record_stop(self, run_id: str, stop: Stop) -> None:
        """Record the intent to stop before stopping; a retried step keeps the first record (the caller
        read it with ``stop_of`` first)."""
        self._put_once(
            {
                "pk": f"run#{run_id}",
                "sk": f"stop#{stop.region}#{stop.instance_id}",
                "region": stop.region,
                "instance_id": stop.instance_id,
                "original_state": stop.original_state,
                "settled": "false",
            }
        )

    def stop_of(self, run_id: str, region: str, instance_id: str) -> Stop | None:
        item = self._get(f"run#{run_id}", f"stop#{region}#{instance_id}")
        return _stop(item) if item else None

    def stops(self, run_id: str) -> list[Stop]:
        """The instances the run stopped and has not put back yet."""
        return [_stop(item) for item in self._query(f"run#{run_id}", "stop#") if item.get("settled") != "true"]

    def put_back(self, run_id: str, stop: Stop) -> None:
        """The instance is as it was: no later ending (Finalize, a sweep) starts it again."""
        self._set(f"run#{run_id}", f"stop#{stop.region}#{stop.instance_id}", {"settled": "true"})

    def made_by(self, run_id: str) -> list[Made]:
        """Everything the run recorded, in the order DynamoDB keeps it (Region, then id)."""
        return [_made(item) for item in self._query(f"run#{run_id}", "made#")]

    def made_as(self, run_id: str, region: str, resource_id: str, role: Role) -> Made | None:
        """The record of ``resource_id`` as the run's ``role`` in ``region``, if the run made it so."""
        return next(
            (
                made
                for made in self.made_by(run_id)
                if (made.region, made.resource_id, made.role) == (region, resource_id, role)
            ),
            None,
        )

    def update(self, run_id: str, made: Made) -> Made:
        """Write what changed about ``made`` (its snapshots, that it was removed)."""
        self._set(
            f"run#{run_id}",
            f"made#{made.region}#{made.resource_id}",
            {
                "snapshots": ",".join(made.snapshots),
                "removed": "true" if made.removed else "false",
                "settled": "true" if made.removed else "false",
            },
        )
        return made

    def fast_launch_asked(self, run_id: str, made: Made) -> None:
        self._set(f"run#{run_id}", f"made#{made.region}#{made.resource_id}", {"fast_launch": "true"})

    def removed(self, run_id: str, made: Made) -> Made:
        return self.update(run_id, replace(made, removed=True))

    def record_parameter(self, run_id: str, region: str, name: str, previous: str | None) -> None:
        """The value a parameter had before the run first wrote it (none: it did not exist), so the
        run can put it back. A retried write keeps the first record: by then the value is the run's own."""
        item = {"pk": f"run#{run_id}", "sk": f"parameter#{region}#{name}", "region": region, "name": name}
        self._put_once(
            {
                **item,
                "previous": previous or "",
                "existed": "true" if previous is not None else "false",
                "settled": "false",
            }
        )

    def parameter_writes(self, run_id: str) -> list[ParameterWrite]:
        return [
            ParameterWrite(
                region=item["region"],
                name=item["name"],
                previous=item["previous"] if item["existed"] == "true" else None,
                rolled_back=item.get("rolled_back") == "true",
            )
            for item in self._query(f"run#{run_id}", "parameter#")
        ]

    def parameter_rolled_back(self, run_id: str, write: ParameterWrite) -> None:
        self._set(f"run#{run_id}", f"parameter#{write.region}#{write.name}", {"rolled_back": "true", "settled": "true"})

    # --- approval --------------------------------------------------------------------------------

    def await_approval(self, run_id: str, token: str) -> None:
        """The run waits for a decision with ``token`` (a retried wait's new token replaces the old)."""
        self._update_if(
            f"run#{run_id}",
            "approval",
            "SET task_token = :token, decision = :none",
            "attribute_not_exists(pk) OR decision = :none",
            _encode({":token": token, ":none": ""}),
        )

    def decide(self, run_id: str, decision: str, by: str) -> str | None:
        """Record the run's one decision (``approved`` or ``rejected``); the wait's token, or None when
        the run is not waiting (no wait, or decided already)."""
        waiting = self._get(f"run#{run_id}", "approval")
        if waiting is None or waiting.get("decision"):
            return None
        decided = self._update_if(
            f"run#{run_id}",
            "approval",
            "SET decision = :decision, decided_by = :by, decided_at = :at",
            "decision = :none AND task_token = :token",
            _encode({":decision": decision, ":by": by, ":at": _now(), ":none": "", ":token": waiting["task_token"]}),
        )
        return str(waiting["task_token"]) if decided else None

    def decision(self, run_id: str) -> str:
        """``approved``, ``rejected``, or empty (none yet, or the run never asked)."""
        found = self._get(f"run#{run_id}", "approval")
        return str(found.get("decision", "")) if found else ""

    # --- launch template versions ------------------------------------------------------------

    def record_template_version(self, run_id: str, version: TemplateVersion) -> TemplateVersion:
        """Before the version is asked for, the default it replaces (the first record stands: a retry
        finds the run's own version as the default); then, from EC2's answer, the version."""
        self._put_once(
            {
                "pk": f"run#{run_id}",
                "sk": _template_key(version),
                "region": version.region,
                "launch_template_id": version.launch_template_id,
                "previous_default": str(version.previous_default),
                "image_id": version.image_id,
                "settled": "false",
            }
        )
        return self.template_version(run_id, version.region, version.launch_template_id) or version

    def template_version(self, run_id: str, region: str, launch_template_id: str) -> TemplateVersion | None:
        item = self._get(f"run#{run_id}", f"template#{region}#{launch_template_id}")
        return _template_version(item) if item else None

    def template_versions(self, run_id: str) -> list[TemplateVersion]:
        return [_template_version(item) for item in self._query(f"run#{run_id}", "template#")]

    def template_version_made(self, run_id: str, version: TemplateVersion) -> None:
        values = {"version": str(version.version), "made_default": "true" if version.made_default else "false"}
        self._set(f"run#{run_id}", _template_key(version), values)

    def template_version_rolled_back(self, run_id: str, version: TemplateVersion) -> None:
        self._set(f"run#{run_id}", _template_key(version), {"rolled_back": "true", "settled": "true"})

    # --- families' images, for retention -----------------------------------------------------

    def record_family_image(self, image: FamilyImage) -> None:
        self._put_once(
            {
                "pk": f"family#{image.family}",
                "sk": f"image#{image.region}#{image.image_id}",
                "family": image.family,
                "region": image.region,
                "image_id": image.image_id,
                "run_id": image.run_id,
                "keep_newest": str(image.keep_newest),
                "max_age_days": str(image.max_age_days),
                "removed": "false",
                "recorded_at": _now(),
            }
        )

    def family_images(self, include_removed: bool = False) -> list[FamilyImage]:
        items = self._scan("image#", **({} if include_removed else {"removed": "false"}))
        return [_family_image(item) for item in items]

    def family_image(self, family: str, region: str, image_id: str) -> FamilyImage | None:
        item = self._get(f"family#{family}", f"image#{region}#{image_id}")
        return _family_image(item) if item else None

    def claim_latest(self, family: str, region: str, origin: str, image_id: str, run_id: str) -> str | None:
        """``latest`` of the family in ``region`` moves only forward: to an image whose run (``origin``,
        its start, ISO 8601 UTC to the microsecond) started no earlier than the run of the image it
        names. The holder it replaces is kept with the claim, for the run's ending to give it back in a
        Region it does not deliver. None when claimed (or this run holds it); else who holds it."""
        key = (f"family#{family}", f"latest#{region}")
        self._put_once({"pk": f"run#{run_id}", "sk": f"claim#{region}", "family": family, "settled": "false"})
        for _ in range(3):  # the holder read, then replaced only if it is still the holder
            holder = self._get(*key)
            if holder is not None and holder["run_id"] == run_id:
                return None
            if holder is not None and holder["origin_started"] > origin:
                return f"{holder['image_id']} (run {holder['run_id']}, started {holder['origin_started']})"
            before = holder or {"origin_started": "", "image_id": "", "run_id": ""}
            claimed = self._update_if(
                *key,
                "SET origin_started = :origin, image_id = :image, run_id = :run, "
                "previous_origin = :was_origin, previous_image = :was_image, previous_run = :was_run",
                "attribute_not_exists(pk) OR run_id = :was_run",
                _encode(
                    {
                        ":origin": origin,
                        ":image": image_id,
                        ":run": run_id,
                        ":was_origin": before["origin_started"],
                        ":was_image": before["image_id"],
                        ":was_run": before["run_id"],
                    }
                ),
            )
            if claimed:
                return None
        return "an image another run is claiming right now"

    def give_back_latest(self, run_id: str, delivered_regions: set[str]) -> None:
        """In every Region the run claimed latest and did not deliver, the claim goes back to the holder
        it replaced (none: the claim is dropped), unless another run has claimed since."""
        for claim in self._query(f"run#{run_id}", "claim#"):
            region = claim["sk"].removeprefix("claim#")
            if region in delivered_regions:
                self._set(f"run#{run_id}", claim["sk"], {"settled": "true"})
                continue
            key = (f"family#{claim['family']}", f"latest#{region}")
            held = self._get(*key)
            if held is not None and held["run_id"] == run_id:
                if held.get("previous_run"):
                    self._update_if(
                        *key,
                        "SET origin_started = :o, image_id = :i, run_id = :r",
                        "run_id = :me",
                        _encode(
                            {
                                ":o": held["previous_origin"],
                                ":i": held["previous_image"],
                                ":r": held["previous_run"],
                                ":me": run_id,
                            }
                        ),
                    )
                else:
                    self._delete_if(*key, run_id)
            self._set(f"run#{run_id}", claim["sk"], {"settled": "true"})

    def family_image_removed(self, image: FamilyImage) -> None:
        self._set(f"family#{image.family}", f"image#{image.region}#{image.image_id}", {"removed": "true"})

    # --- one run per instance ----------------------------------------------------------------

    def take_lock(
        self, region: str, instance_id: str, holder: Holder, replacing: Holder | None = None
    ) -> Holder | None:
        """Hold the instance for ``holder``'s run; the run that holds it already, if another does.
        ``replacing``: take it over from that holder only (whose run has ended)."""
        condition = "run_id = :previous" if replacing else "attribute_not_exists(pk) OR run_id = :run"
        values = {":previous": replacing.run_id} if replacing else {":run": holder.run_id}
        item = {
            "pk": f"instance#{region}#{instance_id}",
            "sk": "lock",
            "run_id": holder.run_id,
            "execution_arn": holder.execution_arn,
            "taken_at": _now(),
        }
        try:
            with translated_errors("PutItem"):
                self._db.put_item(
                    TableName=self._table,
                    Item=_encode(item),
                    ConditionExpression=condition,
                    ExpressionAttributeValues=_encode(values),
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            # Released in between: try again as a first taker.
            current = self.lock_holder(region, instance_id)
            return self.take_lock(region, instance_id, holder) if current is None else current
        return None

    def lock_holder(self, region: str, instance_id: str) -> Holder | None:
        item = self._get(f"instance#{region}#{instance_id}", "lock")
        return Holder(run_id=item["run_id"], execution_arn=item["execution_arn"]) if item else None

    def release_lock(self, region: str, instance_id: str, run_id: str) -> None:
        """Let the instance go, if this run holds it (a repeat, or another run's lock, changes nothing)."""
        self._delete_if(f"instance#{region}#{instance_id}", "lock", run_id)

    # --- copy slots: one semaphore per destination Region, shared by every run ------------------

    def take_copy_slot(self, region: str, run_id: str, limit: int) -> int | None:
        """A slot in ``region`` for ``run_id``'s copy, if fewer than ``limit`` are held (or it holds one
        already: a retried step takes no second slot): how many are held now, or None if none was
        free. The holders are a string set in one item, so the check and the take are one conditional
        write, and its answer says how many there are."""
        return self._update_counting(
            f"copy-slots#{region}",
            "ADD holders :holder",
            "attribute_not_exists(holders) OR contains(holders, :run) OR size(holders) < :limit",
            {":holder": {"SS": [run_id]}, ":run": {"S": run_id}, ":limit": {"N": str(limit)}},
        )

    def release_copy_slot(self, region: str, run_id: str) -> int | None:
        """Give the slot back: how many are held after, or None if the run held none (it changes and
        writes nothing then: an UpdateItem without the condition would create an empty slots item in
        every Region a run ends in)."""
        return self._update_counting(
            f"copy-slots#{region}",
            "DELETE holders :holder",
            "contains(holders, :run)",
            {":holder": {"SS": [run_id]}, ":run": {"S": run_id}},
        )

    def _update_counting(
        self, pk: str, update: str, condition: str, values: dict[str, UniversalAttributeValueTypeDef]
    ) -> int | None:
        """One conditional UpdateItem of a slots item's holders: how many holders it has after (a set
        emptied is removed, so none), or None when the condition did not hold."""
        try:
            with translated_errors("UpdateItem"):
                answer = self._db.update_item(
                    TableName=self._table,
                    Key=_encode({"pk": pk, "sk": "slots"}),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                    ReturnValues="UPDATED_NEW",
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            return None
        return len(answer.get("Attributes", {}).get("holders", {}).get("SS", []))

    def may_hold_copy_slot(self, run_id: str, region: str) -> None:
        """Note, before the run first asks, that it may come to hold a slot in ``region``: its ending
        gives back the slot in every Region noted, whatever became of the copy."""
        self._put_once({"pk": f"run#{run_id}", "sk": f"slot#{region}", "recorded_at": _now()})

    def copy_slot_regions(self, run_id: str) -> list[str]:
        """The Regions where the run may hold a copy slot."""
        return [item["sk"].removeprefix("slot#") for item in self._query(f"run#{run_id}", "slot#")]

    def copy_slot_holders(self, region: str) -> list[str]:
        with translated_errors("GetItem"):
            item = self._db.get_item(
                TableName=self._table, Key=_encode({"pk": f"copy-slots#{region}", "sk": "slots"})
            ).get("Item", {})
        return sorted(item.get("holders", {}).get("SS", []))

    # --- waits: the task token of the step waiting for a resource, found by the resource's event ---

    def await_settling(self, wait: Wait) -> Wait:
        """Record (or replace: a new round of the wait has a new token) the run's step waiting for a
        resource; the first round's start is kept. A wait another run recorded is never replaced
        (NotMadeByRunError). Returns the wait as recorded."""
        recorded = [self._await(wait, resource_id) for resource_id in (wait.resource_id, wait.also) if resource_id]
        return recorded[0]

    def _await(self, wait: Wait, resource_id: str) -> Wait:
        now = _now(precise=True)
        values: Item = {
            "run_id": wait.run_id,
            "token": wait.token,
            "ref": wait.ref,
            "kind": wait.kind,
            "main": wait.resource_id,
            "also": wait.also,
            "copy_slot": "true" if wait.copy_slot else "false",
        }
        try:
            with translated_errors("UpdateItem"):
                answer = self._db.update_item(
                    TableName=self._table,
                    Key=_encode(_wait_key(wait.region, resource_id)),
                    UpdateExpression="SET "
                    + ", ".join(f"#{name} = :{name}" for name in values)
                    + ", #since = if_not_exists(#since, :now)",
                    ConditionExpression="attribute_not_exists(pk) OR #run_id = :run_id",
                    ExpressionAttributeNames={f"#{name}": name for name in [*values, "since"]},
                    ExpressionAttributeValues=_encode(
                        # To the microsecond: a Region's copies queue for slots in the order their waits began.
                        {**{f":{name}": value for name, value in values.items()}, ":now": now}
                    ),
                    ReturnValues="ALL_NEW",
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            raise NotMadeByRunError(
                f"{resource_id} in {wait.region} is awaited by another run: run {wait.run_id} may not wait for it"
            ) from None
        since = _decode(answer["Attributes"])["since"]
        return replace(wait, since=since, first_round=since == now)

    def waiting_on(self, region: str, resource_id: str) -> Wait | None:
        """The step waiting for the resource, if any (an event about anything else finds none)."""
        key = _wait_key(region, resource_id)
        item = self._get(key["pk"], key["sk"])
        return _wait(item) if item is not None else None

    def open_waits(self) -> list[Wait]:
        """Every wait some step is in (the fallback sweep's list), each once."""
        return [_wait(item) for item in self._query(WAIT_PARTITION) if item["sk"].endswith("#" + item["main"])]

    def copy_slot_waits(self, region: str) -> list[Wait]:
        """The copies waiting for a copy slot in ``region``, the longest waiting first."""
        waits = [_wait(item) for item in self._query(WAIT_PARTITION, f"{region}#{COPY_SLOT_WAIT}")]
        return sorted(waits, key=lambda wait: (wait.since, wait.run_id))

    def end_waits_of(self, run_id: str) -> list[Wait]:
        """Forget every wait of a run that has ended (its tasks are over): the waits it ended."""
        waits = [wait for wait in self.open_waits() if wait.run_id == run_id]
        return [wait for wait in waits if self.end_wait(wait)]

    def end_wait(self, wait: Wait) -> bool:
        """Forget the wait (under each resource it was recorded for), if it is still the one read (a
        new round has a new token); whether it was."""
        ended = [self._end(wait, resource_id) for resource_id in (wait.resource_id, wait.also) if resource_id]
        return ended[0]

    def _end(self, wait: Wait, resource_id: str) -> bool:
        try:
            with translated_errors("DeleteItem"):
                self._db.delete_item(
                    TableName=self._table,
                    Key=_encode(_wait_key(wait.region, resource_id)),
                    ConditionExpression="#token = :token",
                    ExpressionAttributeNames={"#token": "token"},
                    ExpressionAttributeValues=_encode({":token": wait.token}),
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            return False
        return True

    # --- families ----------------------------------------------------------------------------

    def family_owner(self, family: str) -> FamilyOwner | None:
        item = self._get(f"family#{family}", "owner")
        if not item:
            return None
        return FamilyOwner(
            account=item["account"],
            region=item["region"],
            instance_id=item["instance_id"],
            name=item["name"],
            run_id=item["run_id"],
        )

    def claim_family(self, family: str, owner: FamilyOwner, adopt: bool = False) -> FamilyOwner | None:
        """Bind ``family`` to ``owner``'s instance unless another instance (or another name) holds it;
        returns that owner. ``adopt``: take it over (a StartExecution request's explicit choice)."""
        item = {
            "pk": f"family#{family}",
            "sk": "owner",
            "account": owner.account,
            "region": owner.region,
            "instance_id": owner.instance_id,
            "name": owner.name,
            "run_id": owner.run_id,
            "claimed_at": _now(),
        }
        condition = (
            "attribute_not_exists(pk) OR (account = :account AND #region = :region AND instance_id = :instance "
            "AND #name = :name)"
        )
        try:
            with translated_errors("PutItem"):
                if adopt:
                    self._db.put_item(TableName=self._table, Item=_encode(item))
                else:
                    self._db.put_item(
                        TableName=self._table,
                        Item=_encode(item),
                        ConditionExpression=condition,
                        ExpressionAttributeNames={"#region": "region", "#name": "name"},
                        ExpressionAttributeValues=_encode(
                            {
                                ":account": owner.account,
                                ":region": owner.region,
                                ":instance": owner.instance_id,
                                ":name": owner.name,
                            }
                        ),
                    )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            return self.family_owner(family)
        return None

    # --- DynamoDB ----------------------------------------------------------------------------

    def _update_if(
        self, pk: str, sk: str, update: str, condition: str, values: dict[str, UniversalAttributeValueTypeDef]
    ) -> bool:
        """One conditional UpdateItem; whether the condition held (and so the update was made)."""
        try:
            with translated_errors("UpdateItem"):
                self._db.update_item(
                    TableName=self._table,
                    Key=_encode({"pk": pk, "sk": sk}),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            return False
        return True

    def _delete_if(self, pk: str, sk: str, run_id: str) -> None:
        """Delete the item if ``run_id`` still holds it."""
        try:
            with translated_errors("DeleteItem"):
                self._db.delete_item(
                    TableName=self._table,
                    Key=_encode({"pk": pk, "sk": sk}),
                    ConditionExpression="run_id = :run",
                    ExpressionAttributeValues=_encode({":run": run_id}),
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise

    def _put_once(self, item: Item) -> bool:
        """Write the item unless it exists; whether this wrote it."""
        try:
            with translated_errors("PutItem"):
                self._db.put_item(
                    TableName=self._table, Item=_encode(item), ConditionExpression="attribute_not_exists(pk)"
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            return False
        return True

    def _set(self, pk: str, sk: str, values: Item) -> None:
        """Set attributes of an item that exists (never creates one)."""
        with translated_errors("UpdateItem"):
            self._db.update_item(
                TableName=self._table,
                Key=_encode({"pk": pk, "sk": sk}),
                UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in values),
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={f"#{name}": name for name in values},
                ExpressionAttributeValues=_encode({f":{name}": value for name, value in values.items()}),
            )

    def _scan(self, sk_prefix: str, **equal: str) -> list[Item]:
        """Items whose sort key starts with ``sk_prefix`` and whose attributes are ``equal``, across the table."""
        tests = [*(["begins_with(#sk, :prefix)"] if sk_prefix else []), *(f"#{name} = :{name}" for name in equal)]
        condition = " AND ".join(tests)
        values = {
            **({":prefix": sk_prefix} if sk_prefix else {}),
            **{f":{name}": value for name, value in equal.items()},
        }
        with translated_errors("Scan"):
            pages = self._db.get_paginator("scan").paginate(
                TableName=self._table,
                FilterExpression=condition,
                ExpressionAttributeNames={
                    **({"#sk": "sk"} if sk_prefix else {}),
                    **{f"#{name}": name for name in equal},
                },
                ExpressionAttributeValues=_encode(values),
                ConsistentRead=True,
            )
            return [_decode(item) for page in pages for item in page["Items"]]

    def _get(self, pk: str, sk: str) -> Item | None:
        with translated_errors("GetItem"):
            found = self._db.get_item(TableName=self._table, Key=_encode({"pk": pk, "sk": sk}), ConsistentRead=True)
        return _decode(found["Item"]) if "Item" in found else None

    def _query(self, pk: str, sk_prefix: str = "") -> list[Item]:
        """The partition's items whose sort key starts with ``sk_prefix`` (all of them without one:
        DynamoDB refuses an empty string in a key condition)."""
        condition = "pk = :pk AND begins_with(sk, :prefix)" if sk_prefix else "pk = :pk"
        values = {":pk": pk, **({":prefix": sk_prefix} if sk_prefix else {})}
        with translated_errors("Query"):
            pages = self._db.get_paginator("query").paginate(
                TableName=self._table,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=_encode(values),
                ConsistentRead=True,
            )
            return [_decode(item) for page in pages for item in page["Items"]]


def _template_key(version: TemplateVersion) -> str:
    return f"template#{version.region}#{version.launch_template_id}"


def _template_version(item: Item) -> TemplateVersion:
    return TemplateVersion(
        region=item["region"],
        launch_template_id=item["launch_template_id"],
        previous_default=int(item["previous_default"]),
        image_id=item.get("image_id", ""),
        version=int(item["version"]) if item.get("version") else None,
        made_default=item.get("made_default") == "true",
        rolled_back=item.get("rolled_back") == "true",
    )


def _family_image(item: Item) -> FamilyImage:
    return FamilyImage(
        family=item["family"],
        region=item["region"],
        image_id=item["image_id"],
        run_id=item["run_id"],
        keep_newest=int(item["keep_newest"]),
        max_age_days=int(item["max_age_days"]),
        removed=item["removed"] == "true",
    )


def _made(item: Item) -> Made:
    return Made(
        region=item["region"],
        kind=cast("Kind", item["kind"]),
        resource_id=item["resource_id"],
        role=cast("Role", item["role"]),
        snapshots=tuple(snapshot for snapshot in item.get("snapshots", "").split(",") if snapshot),
        removed=item.get("removed") == "true",
        fast_launch=item.get("fast_launch") == "true",
    )


def _wait_key(region: str, resource_id: str) -> Item:
    return {"pk": WAIT_PARTITION, "sk": f"{region}#{resource_id}"}


def _wait(item: Item) -> Wait:
    """The wait an item records (found under either of its resources, it is the same wait)."""
    region = item["sk"].split("#")[0]
    return Wait(
        run_id=item["run_id"],
        region=region,
        resource_id=item["main"],
        token=item["token"],
        ref=item["ref"],
        kind=cast("WaitKind", item["kind"]),
        also=item.get("also", ""),
        copy_slot=item.get("copy_slot") == "true",
        since=item["since"],
    )


def _stop(item: Item) -> Stop:
    return Stop(region=item["region"], instance_id=item["instance_id"], original_state=item["original_state"])


def _account_copy(item: Item) -> AccountCopy:
    _, account, region = item["sk"].split("#", 2)
    return AccountCopy(
        account,
        region,
        item["image_id"],
        removed=item.get("removed") == "true",
        delivered=item.get("delivered") == "true",
        publishing=item.get("publishing") == "true",
    )
