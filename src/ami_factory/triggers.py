"""How runs start without a person: a tag on an instance, or a scheduled firing.

Both end in the same place as a console request: an ImagingRequest validated by the same rules,
and a StartExecution. Each trigger gets a deterministic execution name, so a redelivered event or a
retried firing finds its run instead of starting another; and an instance with a run in flight is
skipped, with the name of the run that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from time import sleep
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from .aws import Ec2, StepFunctions, tags_of
from .errors import (
    AmiFactoryError,
    InstanceNotFoundError,
    InvalidRequestError,
    PrivilegedSettingError,
    RunInProgressError,
)
from .ledger import FamilyOwner, Holder
from .model import Model
from .observability import MetricUnit, logger, metrics
from .request import CloneOptions, ImagingRequest, RetentionOptions
from .rules import (
    TAG_PREFIX,
    account_of,
    check_clone_profile,
    check_share_targets,
    describe_validation,
    execution_arn,
    family_asked_as,
    family_name,
    parse_request,
    tag_value_keeping_advice,
    target_regions,
)
from .settings import Settings, load_settings
from .steps import check_family, hold_instance, running_holder

SCHEDULE_SOURCE = "ami-factory.schedule"
CLOUDTRAIL_DETAIL_TYPE = "AWS API Call via CloudTrail"
ERROR_TAG = f"{TAG_PREFIX}error"
INSTANCE_ARN = re.compile(r"^arn:aws[a-z-]*:ec2:[a-z0-9-]+:[0-9]{12}:instance/(i-[0-9a-f]{8,17})$")

# Per-instance settings: tag suffix -> request field. Several values are separated by spaces or commas.
SETTING_TAGS: dict[str, tuple[str, ...]] = {
    "regions": ("regions",),
    "share-accounts": ("share", "accounts"),
    "share-organizations": ("share", "organizations"),
    "share-ous": ("share", "organizational_units"),
    "share-public": ("share", "public"),
    "mode": ("mode",),
    "image-name": ("image_name",),
    "description": ("description",),
    "cleanup": ("cleanup",),
    "confirm-generalize-in-place": ("confirm_generalize_in_place",),
    "admin-password": ("windows", "admin_password"),
    "admin-password-parameter": ("windows", "admin_password_parameter"),
    "clone-instance-type": ("clone", "instance_type"),
    "clone-subnet": ("clone", "subnet_id"),
    "clone-security-groups": ("clone", "security_group_ids"),
    "clone-instance-profile": ("clone", "instance_profile"),
    "share-snapshot-permissions": ("share", "snapshot_permissions"),
    "deprecate-after-days": ("protection", "deprecate_after_days"),
    "deregistration-protection": ("protection", "deregistration_protection"),
    "protection-cooldown": ("protection", "cooldown"),
    "copy-completion-minutes": ("copy_completion_minutes",),
    "encrypt": ("encrypt",),
    "launch-check": ("launch_check",),
    "imds-support": ("imds_support",),
    "approval": ("approval",),
    "keep-newest": ("retention", "keep_newest"),
    "max-age-days": ("retention", "max_age_days"),
}
LIST_FIELDS = {"regions", "accounts", "organizations", "organizational_units", "security_group_ids"}
BOOL_FIELDS = {
    "approval",
    "public",
    "cleanup",
    "confirm_generalize_in_place",
    "snapshot_permissions",
    "deregistration_protection",
    "cooldown",
    "encrypt",
    "launch_check",
}
# What a tag may not ask for unless the operator opened it to tags by name (TagPrivilegedSettings):
# options that act beyond the tagged instance's own image, or on the instance itself destructively.
# name -> (whether the request asks for it, the tags that can)
PRIVILEGED_SETTINGS: dict[str, tuple[Callable[[ImagingRequest], bool], tuple[str, ...]]] = {
    "generalize-in-place": (
        lambda request: request.mode == "generalize-in-place",
        ("mode", "confirm-generalize-in-place"),
    ),
    "cleanup": (lambda request: request.cleanup, ("cleanup",)),
    "clone": (
        lambda request: request.clone != CloneOptions(),
        ("clone-instance-type", "clone-subnet", "clone-security-groups", "clone-instance-profile"),
    ),
    "retention": (lambda request: request.retention != RetentionOptions(), ("keep-newest", "max-age-days")),
    "share-public": (lambda request: request.share.public, ("share-public",)),
}
# The tool's own bookkeeping on the instance; any other ami-factory:* key is a typo to report.
RESULT_TAGS = {"error", "last-run", "last-run-at", "last-status", "last-image-id", "last-error"}


class TagChangeDetail(Model):
    model_config = ConfigDict(populate_by_name=True)

    changed_tag_keys: list[str] = Field(alias="changed-tag-keys")
    tags: dict[str, str]
    service: str
    resource_type: str = Field(alias="resource-type")


class TagChangeEvent(Model):
    """EventBridge's envelope of a ``Tag Change on Resource`` event: the fields of it that the trigger reads
    and checks (Powertools' EventBridgeModel has them too, but importing its models costs every cold start)."""

    id: str
    source: str
    account: str
    time: str
    region: str
    resources: list[str]
    detail_type: str = Field(alias="detail-type")
    detail: TagChangeDetail


class CloudTrailTag(Model):
    key: str
    value: str = ""


class CloudTrailCreateTags(Model):
    """The parts of a CloudTrail record of CreateTags that the trigger reads."""

    model_config = ConfigDict(populate_by_name=True)

    event_name: Literal["CreateTags"] = Field(alias="eventName")
    event_id: str = Field(alias="eventID")
    error_code: str | None = Field(None, alias="errorCode")
    caller: str = Field(alias="userIdentity")
    resources: list[str]
    tags: list[CloudTrailTag]

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> CloudTrailCreateTags:
        parameters = detail.get("requestParameters") or {}
        return cls.model_validate(
            {
                **detail,
                "userIdentity": (detail.get("userIdentity") or {}).get("arn", ""),
                "resources": [item.get("resourceId") for item in parameters.get("resourcesSet", {}).get("items", [])],
                "tags": parameters.get("tagSet", {}).get("items", []),
            }
        )


class ScheduledFiring(Model):
    """The input the EventBridge Scheduler schedule in template.yaml sends."""

    source: Literal["ami-factory.schedule"]
    scheduled_time: datetime
    execution_id: str | None = None


class Skipped(Model):
    instance_id: str
    reason: str
    held_by: str | None = None


class Rejected(Model):
    instance_id: str | None
    error: str
    message: str


class StartOutcome(Model):
    started: list[str] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    rejected: list[Rejected] = Field(default_factory=list)


class _Candidate(Model):
    instance_id: str
    tags: dict[str, str]
    execution_name: str


def _tag_namer(tags: Mapping[str, str]) -> Callable[[tuple[object, ...]], str]:
    """Name the tag a user must fix, not the request field it became. A rule across the fields of one
    group (windows, clone, protection, share) names the group's tags the instance carries."""

    def name(location: tuple[object, ...]) -> str:
        path = tuple(str(part) for part in location if not isinstance(part, int))
        group = [
            f"{TAG_PREFIX}{suffix}"
            for suffix, field in SETTING_TAGS.items()
            if path and (field[: len(path)] == path or path[: len(field)] == field)
        ]
        present = [key for key in group if key in tags] or group
        if not present:
            return "the tags"
        return f"tag {present[0]}" if len(present) == 1 else "tags " + " and ".join(present)

    return name


def _tag_bool(key: str, value: str) -> bool:
    """``true`` or ``false`` in any case; anything else is refused by name (``yes`` silently meant false)."""
    word = value.strip().lower()
    if word not in ("true", "false"):
        raise InvalidRequestError(
            f"tag {key} is {value[:40]!r}: use true or false. Fix the tag on the instance and set the trigger tag again"
        )
    return word == "true"


def request_from_tags(instance_id: str, tags: Mapping[str, str], settings: Settings) -> ImagingRequest:
    """The instance's ``ami-factory:*`` tags as an ImagingRequest, held to the same rules as any request."""
    known = {f"{TAG_PREFIX}{suffix}" for suffix in [*SETTING_TAGS, *RESULT_TAGS]}
    known |= {settings.trigger_tag_key, settings.schedule_tag_key}
    unknown = sorted(key for key in tags if key.startswith(TAG_PREFIX) and key not in known)
    if unknown:
        raise InvalidRequestError(
            f"unknown tag(s) {unknown} on instance {instance_id}: the settings tags are "
            f"{sorted(TAG_PREFIX + suffix for suffix in SETTING_TAGS)}. Fix the tag and set the trigger tag again"
        )
    raw: dict[str, Any] = {"instance_id": instance_id}
    for suffix, field in SETTING_TAGS.items():
        value = tags.get(f"{TAG_PREFIX}{suffix}")
        if value is None:
            continue
        parsed: Any = [item for item in re.split(r"[\s,]+", value) if item] if field[-1] in LIST_FIELDS else value
        if field[-1] in BOOL_FIELDS:
            parsed = _tag_bool(f"{TAG_PREFIX}{suffix}", value)
        target = raw
        for part in field[:-1]:
            target = target.setdefault(part, {})
        target[field[-1]] = parsed
    request = parse_request(
        raw, name_field=_tag_namer(tags), fix="Fix the tag on the instance and set the trigger tag again"
    )
    _refuse_privileged(request, tags, settings)
    check_share_targets(request.share, settings)
    check_clone_profile(request.clone, settings)
    target_regions(request, settings.region, settings)
    return request


def _refuse_privileged(request: ImagingRequest, tags: Mapping[str, str], settings: Settings) -> None:
    for name, (asks, suffixes) in PRIVILEGED_SETTINGS.items():
        if asks(request) and name not in settings.tag_privileged_settings:
            used = [f"{TAG_PREFIX}{suffix}" for suffix in suffixes if f"{TAG_PREFIX}{suffix}" in tags]
            raise PrivilegedSettingError(
                f"{' and '.join(used)} ask for {name}, which only a StartExecution request may: drop the tag and "
                f"start a run from the console or CLI, or have the operator add {name} to TagPrivilegedSettings"
            )


def start_runs(event: Mapping[str, Any]) -> StartOutcome:
    """Start one run per triggered instance; never raise for a bad event (EventBridge would only retry it)."""
    settings = load_settings()
    try:
        if event.get("source") == "aws.tag":
            candidates = _tag_candidates(TagChangeEvent.model_validate(event), settings)
        elif event.get("source") == "aws.ec2" and event.get("detail-type") == CLOUDTRAIL_DETAIL_TYPE:
            candidates = _cloudtrail_candidates(CloudTrailCreateTags.from_detail(event.get("detail") or {}), settings)
        elif event.get("source") == SCHEDULE_SOURCE:
            candidates = _scheduled_candidates(ScheduledFiring.model_validate(event), settings)
        else:
            raise ValueError(
                f"source {event.get('source')!r} is none of aws.tag, aws.ec2 ({CLOUDTRAIL_DETAIL_TYPE}), {SCHEDULE_SOURCE}"
            )
    except ValidationError as error:
        return _malformed(describe_validation(error))
    except ValueError as error:
        return _malformed(str(error))
    return _start(candidates, settings)


def _malformed(problem: str) -> StartOutcome:
    message = f"malformed trigger event, no run started: {problem}"
    logger.error(message)
    return StartOutcome(rejected=[Rejected(instance_id=None, error="MalformedEventError", message=message)])


def _tag_candidates(event: TagChangeEvent, settings: Settings) -> list[_Candidate]:
    detail, key = event.detail, settings.trigger_tag_key
    matched = INSTANCE_ARN.match(event.resources[0]) if event.resources else None
    if not matched:
        raise ValueError(f"resources {event.resources} hold no EC2 instance ARN")
    if key not in detail.changed_tag_keys or str(detail.tags.get(key)).lower() != "true":
        logger.info("tag change on %s does not set %s=true; nothing to do", matched.group(1), key)
        return []
    return [
        _Candidate(instance_id=matched.group(1), tags=detail.tags, execution_name=f"{matched.group(1)}-tag-{event.id}")
    ]


def _cloudtrail_candidates(call: CloudTrailCreateTags, settings: Settings) -> list[_Candidate]:
    """TriggerSource=cloudtrail: CreateTags as CloudTrail recorded it, so the caller is known. Only a
    principal in AllowedTriggerPrincipals starts a run; anyone else's tag is refused and counted."""
    if call.error_code:
        logger.info("CreateTags by %s failed (%s); nothing to do", call.caller, call.error_code)
        return []
    if not any(tag.key == settings.trigger_tag_key and tag.value.lower() == "true" for tag in call.tags):
        return []
    instances = [resource for resource in call.resources if re.fullmatch(r"i-[0-9a-f]{8,17}", resource)]
    if not trigger_principal_allowed(call.caller, settings.allowed_trigger_principals):
        logger.warning(
            "%s set %s on %s and is not in AllowedTriggerPrincipals; no run started",
            call.caller,
            settings.trigger_tag_key,
            instances,
        )
        metrics.add_metric(name="TriggersRefused", unit=MetricUnit.Count, value=len(instances))
        return []
    ec2 = Ec2(settings.region)
    candidates = []
    for instance_id in instances:
        try:  # the call names only the tags it set; the settings are all the instance's tags
            tags = tags_of(ec2.describe_instance(instance_id))
        except InstanceNotFoundError:
            logger.info("%s is gone; nothing to do", instance_id)
            continue
        candidates.append(
            _Candidate(instance_id=instance_id, tags=tags, execution_name=f"{instance_id}-ct-{call.event_id}")
        )
    return candidates


def trigger_principal_allowed(caller: str, allowed: tuple[str, ...]) -> bool:
    """Whether the caller's ARN (or, for an assumed role's session, its role's ARN) matches one of
    ``allowed`` (ARNs, ``*`` wildcards allowed). A role's path is not in its sessions' ARNs: match
    roles by name, e.g. ``arn:aws:iam::111122223333:role/ImageBuilders``."""
    names = [caller]
    session = re.fullmatch(r"arn:(aws[a-z-]*):sts::([0-9]{12}):assumed-role/([^/]+)/.+", caller)
    if session:
        partition, account, role = session.groups()
        names.append(f"arn:{partition}:iam::{account}:role/{role}")
    return any(fnmatchcase(name, pattern) for name in names for pattern in allowed)


def _scheduled_candidates(firing: ScheduledFiring, settings: Settings) -> list[_Candidate]:
    stamp = firing.scheduled_time.strftime("%Y%m%dT%H%M%SZ")
    # Like the tag rule, any case of "true" opts an instance in.
    tagged = Ec2(settings.region).instances_tagged(settings.schedule_tag_key)
    instances = [instance for instance in tagged if tags_of(instance)[settings.schedule_tag_key].lower() == "true"]
    return [
        _Candidate(
            instance_id=instance["InstanceId"],
            tags=tags_of(instance),
            execution_name=f"{instance['InstanceId']}-schedule-{stamp}",
        )
        for instance in instances
    ]


# A firing's starts are spread over at most this long: StartRun's 15-minute timeout keeps the rest for its calls.
STARTS_WITHIN_SECONDS = 600


def start_spacing(candidates: int, per_minute: int) -> float:
    """Seconds between two starts of one firing: the operator's rate, unless the firing is too big to
    start at that rate within ``STARTS_WITHIN_SECONDS`` (then as fast as that takes)."""
    spacing = 60 / per_minute
    # One candidate or none never spreads. At exactly STARTS_WITHIN_SECONDS both answers are the same
    # spacing, so `>=` here would change nothing (the one mutant of this line no test can kill).
    if spacing * (candidates - 1) > STARTS_WITHIN_SECONDS:
        logger.warning(
            "%d runs at %d a minute would take over %d s; starting them %.2f s apart instead",
            candidates,
            per_minute,
            STARTS_WITHIN_SECONDS,
            STARTS_WITHIN_SECONDS / (candidates - 1),
        )
        return STARTS_WITHIN_SECONDS / (candidates - 1)
    return spacing


def _start(candidates: list[_Candidate], settings: Settings) -> StartOutcome:
    outcome = StartOutcome()
    if not candidates:
        return outcome
    ec2, sfn = Ec2(settings.region), StepFunctions(settings.region)
    spacing = start_spacing(len(candidates), settings.run_starts_per_minute)
    for candidate in candidates:
        holder = running_holder(settings.region, candidate.instance_id)
        if holder:
            logger.warning(
                "%s already has a run in flight (%s); this trigger is skipped", candidate.instance_id, holder.run_id
            )
            outcome.skipped.append(
                Skipped(instance_id=candidate.instance_id, reason="run in flight", held_by=holder.run_id)
            )
            continue
        try:
            request = request_from_tags(candidate.instance_id, candidate.tags, settings)
            # A tag never moves a family: refused here, before a run starts, and said on the instance.
            asking = FamilyOwner(
                account=account_of(settings.state_machine_arn),
                region=settings.region,
                instance_id=candidate.instance_id,
                name=family_asked_as(request, candidate.tags),
                # Read only when an adoption is recorded, which a trigger never makes.
                run_id=candidate.execution_name,  # pragma: no mutate
            )
            # A trigger never adopts a family (None would read the same: the equivalent mutant is not made).
            check_family(family_name(request, candidate.tags), asking, adopt=False)  # pragma: no mutate
        except AmiFactoryError as error:
            logger.warning("not starting a run for %s: %s", candidate.instance_id, error)
            ec2.tag_resource(candidate.instance_id, {ERROR_TAG: tag_value_keeping_advice(str(error))})
            outcome.rejected.append(
                Rejected(instance_id=candidate.instance_id, error=type(error).__name__, message=str(error))
            )
            continue
        # Every run's first EC2 calls draw on one bucket: one start per spacing. The pause comes before
        # the lock, so a StartRun that dies pausing leaves no lock without an execution.
        if outcome.started:
            sleep(spacing)
        # The run's lock, taken before its execution starts: a trigger a moment later sees it.
        holder = Holder(candidate.execution_name, execution_arn(settings.state_machine_arn, candidate.execution_name))
        try:
            hold_instance(settings.region, candidate.instance_id, holder)
        except RunInProgressError as error:
            logger.warning("%s; this trigger is skipped", error)
            outcome.skipped.append(
                Skipped(instance_id=candidate.instance_id, reason="run in flight", held_by=error.run_id)
            )
            continue
        # The request holds only JSON types: the dump's mode is not a decision.
        payload = request.model_dump(mode="json", exclude_none=True)  # pragma: no mutate
        if not sfn.start_execution(settings.state_machine_arn, candidate.execution_name, payload):
            outcome.skipped.append(
                Skipped(instance_id=candidate.instance_id, reason="already started", held_by=candidate.execution_name)
            )
            continue
        if ERROR_TAG in candidate.tags:
            ec2.untag_resource(candidate.instance_id, [ERROR_TAG])
        outcome.started.append(candidate.execution_name)
    metrics.add_metric(name="TriggersSkipped", unit=MetricUnit.Count, value=len(outcome.skipped))
    metrics.add_metric(name="TriggersRejected", unit=MetricUnit.Count, value=len(outcome.rejected))
    return outcome
