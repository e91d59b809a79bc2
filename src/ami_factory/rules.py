"""The rules of the tool, in one place: which Regions, which share targets, which names.

Per-request values may only narrow or choose within the deploy-time settings: whoever can start a
run must not be able to ship an image where the operator did not allow it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import cache
from typing import Any

import boto3
from pydantic import ValidationError

from .contracts import AccountCell, Platform, RegionTarget
from .errors import (
    CloneProfileNotAllowedError,
    InvalidRequestError,
    LaunchTemplateNotAllowedError,
    PublicSharingBlockedError,
    ShareTargetNotAllowedError,
    UnknownRegionError,
)
from .request import (
    AccountCopyTarget,
    CloneOptions,
    ImagingRequest,
    LaunchTemplateTarget,
    RetentionOptions,
    ShareTargets,
)
from .settings import Settings

# What a recipient's account must be allowed on a customer managed key to launch an image encrypted with it.
KEY_USE_ACTIONS = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:CreateGrant",
    "kms:ReEncryptFrom",
    "kms:GenerateDataKeyWithoutPlaintext",
)

TAG_PREFIX = "ami-factory:"
RUN_TAG = f"{TAG_PREFIX}run"
CREATE_TOKEN_TAG = f"{TAG_PREFIX}create-token"  # the secret a run's CreateImage puts on its image (steps.found_again)
ROLE_TAG = f"{TAG_PREFIX}role"  # what a run removes: its "clone" instance, its "seed" and "capture" images
MAX_IMAGE_NAME = 128
MAX_PUBLIC_IMAGES_PER_REGION = 5  # EC2 quota: public AMIs per Region


@cache
def known_regions() -> frozenset[str]:
    """Every Region botocore knows for EC2 (read from its bundled endpoint data, no network)."""
    session = boto3.session.Session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ec2", partition_name=partition)
    )


def request_field(location: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in location) or "request"


TAG_VALUE_LIMIT = 256  # EC2's
# Regions per run, the source included: with the template's bounds on waits, the most that keeps every
# run inside Step Functions' 25,000-event history (tests/workflow/test_history_budget.py).
MAX_REGIONS = 15
ECHOED_VALUE = re.compile(r"'[^']{41,}'|\[[^\]]{41,}\]")


def tag_value_keeping_advice(message: str, limit: int = TAG_VALUE_LIMIT) -> str:
    """``message`` fitted into a tag value. What gets shorter is what it echoes (a long quoted value or
    list), then its middle; never its end, where a message says what to do."""
    if len(message) <= limit:
        return message
    shortened = ECHOED_VALUE.sub(lambda echoed: f"{echoed.group()[:20]}...{echoed.group()[-1]}", message)
    if len(shortened) <= limit:
        return shortened
    head = limit // 3
    return f"{shortened[:head]} ... {shortened[-(limit - head - 5) :]}"


def describe_validation(error: ValidationError, name_field: Callable[[tuple[object, ...]], str] = request_field) -> str:
    """Every problem pydantic found, one ``field: what is wrong`` each."""
    return "; ".join(
        f"{name_field(issue['loc'])}: {issue['msg'].removeprefix('Value error, ')}" for issue in error.errors()
    )


def parse_request(
    raw: object,
    name_field: Callable[[tuple[object, ...]], str] = request_field,
    fix: str = "See events/imaging-request.schema.json for the fields",
) -> ImagingRequest:
    """The request, or an InvalidRequestError naming each field (as the user wrote it) and what is wrong."""
    if not isinstance(raw, Mapping):
        kinds = {"list": "an array", "int": "a number", "float": "a number", "bool": "a boolean", "str": "a string"}
        kind = "null" if raw is None else kinds.get(type(raw).__name__, type(raw).__name__)
        raise InvalidRequestError(
            f"the execution input must be a JSON object (an ImagingRequest), not {kind}: "
            f'{{"instance_id": "i-0123456789abcdef0"}} at least. {fix}'
        )
    try:
        return ImagingRequest.model_validate(raw)
    except ValidationError as error:
        raise InvalidRequestError(
            f"the imaging request is invalid: {describe_validation(error, name_field)}. {fix}"
        ) from None


def target_regions(request: ImagingRequest, source_region: str, settings: Settings) -> list[RegionTarget]:
    """Source Region first (it needs no copy), then the requested or default Regions, once each."""
    wanted = list(request.regions if request.regions is not None else settings.default_regions)
    unknown = sorted({region for region in wanted if region not in known_regions()})
    if unknown:
        raise UnknownRegionError(f"unknown Region(s) {unknown}: use Region codes such as us-east-1 or eu-west-1")
    if settings.allowed_regions:
        outside = sorted({region for region in wanted if region not in settings.allowed_regions} - {source_region})
        if outside:
            raise UnknownRegionError(
                f"Region(s) {outside} are not in the deployment's AllowedRegions {list(settings.allowed_regions)}: "
                f"pick from those, or redeploy with a wider AllowedRegions"
            )
    if request.source_image_id is None:
        ordered = [source_region] + [region for region in dict.fromkeys(wanted) if region != source_region]
    else:
        named = request.regions is not None  # the defaults may list the stack's Region: left out, not refused
        ordered = _distribution_regions(
            request.source_image_id, wanted if named else [r for r in wanted if r != source_region], source_region
        )
    if len(ordered) > MAX_REGIONS:
        raise InvalidRequestError(
            f"{len(ordered)} Regions (the stack's {source_region} included): at most {MAX_REGIONS} per run, so that no "
            f"run can outgrow Step Functions' 25,000-event history. Split the Regions over two runs"
        )
    return [RegionTarget(name=region, is_source=(region == source_region)) for region in ordered]


def _distribution_regions(image_id: str, wanted: list[str], source_region: str) -> list[str]:
    """An existing image goes only where it is named, never back to the stack's Region, which has it."""
    if source_region in wanted:
        raise InvalidRequestError(
            f"source_image_id {image_id} is already in {source_region}, the stack's Region: leave {source_region} "
            f"out of regions (only the Regions to copy it to)"
        )
    if not wanted:
        raise InvalidRequestError(
            f"source_image_id {image_id}: name the Regions to distribute it to in regions (the deployment has no "
            f"DefaultRegions besides {source_region})"
        )
    return list(dict.fromkeys(wanted))


def _outside(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    allowed_set = set(allowed)
    return sorted(item for item in set(requested) if item not in allowed_set)


def check_share_targets(share: ShareTargets, settings: Settings) -> None:
    """Every target must be in its allow-list; public only when the deployment allows it."""
    if share.public and not settings.allow_public:
        raise PublicSharingBlockedError(
            "public sharing is turned off for this deployment: drop share.public, or redeploy with "
            "AllowPublicSharing=true if making images public is really intended"
        )
    for kind, requested, allowed, parameter in (
        ("account(s)", share.accounts, settings.allowed_accounts, "AllowedShareAccounts"),
        ("organization(s)", share.organizations, settings.allowed_organizations, "AllowedShareOrganizations"),
        ("OU(s)", share.organizational_units, settings.allowed_organizational_units, "AllowedShareOUs"),
    ):
        outside = _outside(requested, allowed)
        if outside:
            raise ShareTargetNotAllowedError(
                f"{kind} {outside} are not in the deployment's {parameter} {list(allowed)}: remove them from "
                f"the request, or ask the operator to add them to {parameter}"
            )


def check_copy_accounts(accounts: list[str], settings: Settings, own_account: str) -> None:
    """copy_to_accounts: only the deployment's AllowedCopyAccounts, never the stack's own account."""
    if own_account in accounts:
        raise ShareTargetNotAllowedError(
            f"copy_to_accounts names {own_account}, the stack's own account, which owns the images already: drop it"
        )
    outside = _outside(accounts, settings.allowed_copy_accounts)
    if outside:
        raise ShareTargetNotAllowedError(
            f"copy_to_accounts {outside} are not in the deployment's AllowedCopyAccounts "
            f"{list(settings.allowed_copy_accounts)}: remove them from the request, or ask the operator to add them "
            f"to AllowedCopyAccounts (each deploys examples/target-account-role.yaml)"
        )


# Each account and Region is a cell of a Map whose checks write to the run's history: at most this
# many keep the worst run inside Step Functions' 25,000 events (tests/workflow/test_history_budget.py).
MAX_ACCOUNT_CELLS = 30


def account_cells(targets: list[AccountCopyTarget], regions: list[str]) -> list[AccountCell]:
    """Each account and Region of copy_to_accounts (an account's Regions must be the run's)."""
    cells = []
    for target in targets:
        wanted = target.regions if target.regions is not None else regions
        stray = [region for region in [*wanted, *target.kms_key_ids] if region not in regions]
        if stray:
            raise InvalidRequestError(
                f"copy_to_accounts {target.account_id}: {sorted(set(stray))} are not Regions of this run "
                f"{regions}: copies are made from the run's own image in each Region, so add them to regions or "
                f"drop them here"
            )
        cells += [
            AccountCell(account_id=target.account_id, region=region, kms_key_id=target.kms_key_ids.get(region))
            for region in wanted
        ]
    if len(cells) > MAX_ACCOUNT_CELLS:
        raise InvalidRequestError(
            f"copy_to_accounts asks for {len(cells)} copies (accounts times Regions): at most {MAX_ACCOUNT_CELLS} in "
            f"one run, whose history must stay within Step Functions' quota; name fewer Regions per account, or "
            f"split the accounts over runs"
        )
    return cells


def check_clone_profile(clone: CloneOptions, settings: Settings) -> None:
    """The clone runs as the stack's own profile (SSM only) unless the request names one the operator allowed."""
    profile = clone.instance_profile
    if profile and profile.rpartition("/")[2] not in settings.allowed_clone_instance_profiles:
        raise CloneProfileNotAllowedError(
            f"clone.instance_profile {profile} is not in the deployment's AllowedCloneInstanceProfiles "
            f"{list(settings.allowed_clone_instance_profiles)}: drop it (the clone then uses the stack's own profile, "
            f"which has what SSM needs), or ask the operator to add it"
        )


def check_launch_templates(
    templates: Iterable[LaunchTemplateTarget], regions: Iterable[str], settings: Settings
) -> None:
    """Each template must be the deployment's to change (AllowedLaunchTemplates, by ARN: its Region and
    id), in a Region the run distributes to."""
    # A launch template's ARN has one "/", so partition would read the same id (the mutant no test can tell).
    allowed = {(arn.split(":")[3], arn.rpartition("/")[2]) for arn in settings.allowed_launch_templates}
    outside = sorted(
        f"{t.region}:{t.launch_template_id}" for t in templates if (t.region, t.launch_template_id) not in allowed
    )
    if outside:
        raise LaunchTemplateNotAllowedError(
            f"launch templates {outside} are not in the deployment's AllowedLaunchTemplates: drop them, or ask the "
            f"operator to add their ARNs (arn:aws:ec2:REGION:ACCOUNT:launch-template/ID)"
        )
    distributed = set(regions)
    elsewhere = sorted(f"{t.region}:{t.launch_template_id}" for t in templates if t.region not in distributed)
    if elsewhere:
        raise InvalidRequestError(
            f"launch templates {elsewhere} are in Regions this run does not distribute to: add their Regions to "
            f"regions, or drop them"
        )


# EBS's limits per volume type (GiB, IOPS per GiB): what CreateImage refuses, after the instance stopped.
MIN_SIZE_GIB = {"st1": 125, "sc1": 125, "io1": 4, "io2": 4}
MAX_IOPS_PER_GIB = {"gp3": 500, "io1": 50, "io2": 500}
GP3_BASELINE_IOPS = 3000
GP3_THROUGHPUT_PER_IOPS = 0.25  # MiB/s per provisioned IOPS


def volume_limits_broken(
    device: str, kind: str, size: int, iops: int | None, throughput: int | None, is_root: bool
) -> str | None:
    """What EBS refuses about a volume of ``kind`` and ``size`` GiB with these settings, or None."""
    if kind in ("st1", "sc1") and is_root:
        return f"{device} is the root volume, and {kind} (HDD) cannot be a boot volume"
    if size < MIN_SIZE_GIB.get(kind, 1):
        return f"{device} would be {kind} of {size} GiB: {kind} needs at least {MIN_SIZE_GIB[kind]} GiB"
    if kind == "gp3" and iops is not None and iops < GP3_BASELINE_IOPS:
        return f"{device}: gp3 gives {GP3_BASELINE_IOPS} IOPS at least; ask for {GP3_BASELINE_IOPS} or more, or leave iops out"
    if iops is not None and kind in MAX_IOPS_PER_GIB and iops > MAX_IOPS_PER_GIB[kind] * size:
        return (
            f"{device}: {iops} IOPS on {size} GiB is more than {kind}'s {MAX_IOPS_PER_GIB[kind]} per GiB: grow it to "
            f"{-(-iops // MAX_IOPS_PER_GIB[kind])} GiB or ask for fewer IOPS"
        )
    if kind == "gp3" and throughput is not None and throughput > (iops or GP3_BASELINE_IOPS) * GP3_THROUGHPUT_PER_IOPS:
        return (
            f"{device}: gp3 throughput of {throughput} MiB/s needs at least {int(throughput / GP3_THROUGHPUT_PER_IOPS)} "
            f"IOPS (0.25 MiB/s per IOPS): raise iops"
        )
    return None


def utc_instant(text: str) -> str | None:
    """An ISO 8601 time as one fixed-width UTC string (``2026-11-29T07:00:00.123000Z``), which orders as
    time does; None when there is none or it is not a time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def execution_arn(state_machine_arn: str, run_id: str) -> str:
    """The ARN of the state machine's execution named ``run_id`` (run ids are execution names)."""
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{run_id}"  # a name has no colon


def account_of(arn: str) -> str:
    """The account field of an ARN (``arn:partition:service:region:ACCOUNT:...``)."""
    return arn.split(":")[4]


def platform_of(instance: Mapping[str, Any]) -> Platform:
    """EC2 describes a Windows instance with Platform ``windows`` and any other with no Platform."""
    return "windows" if instance.get("Platform") == "windows" else "linux"


def family_asked_as(request: ImagingRequest, instance_tags: Mapping[str, str]) -> str:
    """The family as asked for, before normalising: image_name, else the Name tag, else the instance id."""
    return request.image_name or instance_tags.get("Name") or request.instance_id


def family_name(request: ImagingRequest, instance_tags: Mapping[str, str]) -> str:
    raw = family_asked_as(request, instance_tags)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-") or request.instance_id


def sanitize_image_name(raw: str) -> str:
    """EC2 image names: 3-128 of letters, digits, ( ) [ ] . / - ' @ _ and space."""
    cleaned = re.sub(r"[^A-Za-z0-9()\[\]./\-'@_ ]", "-", raw).strip()
    return cleaned[:128]


def image_name(prefix: str, family: str, run_id: str) -> str:
    """Deterministic per run: a retried step finds the image it made instead of making another.
    Only the family is shortened to fit EC2's 128 characters: the run id is what keeps runs apart."""
    # The floor never binds (execution names are at most 80 characters, the prefix 32), so a mutant
    # raising it changes nothing: it only keeps a broken deployment from an empty family.
    room = max(1, MAX_IMAGE_NAME - len(prefix) - len(run_id) - 2)  # pragma: no mutate
    return sanitize_image_name(f"{prefix}-{family[:room]}-{run_id}")


KEEP_NEWEST_TAG = f"{TAG_PREFIX}keep-newest"
MAX_AGE_TAG = f"{TAG_PREFIX}max-age-days"


def retention_tags(retention: RetentionOptions) -> dict[str, str]:
    """A family's retention travels on its images: the scheduled clean-up reads it from the newest."""
    tags = {}
    if retention.keep_newest:
        tags[KEEP_NEWEST_TAG] = str(retention.keep_newest)
    if retention.max_age_days:
        tags[MAX_AGE_TAG] = str(retention.max_age_days)
    return tags


def parameter_name(prefix: str, family: str) -> str:
    return f"{prefix}/{family}/latest"


def image_tags(
    run_id: str, family: str, instance_id: str, source_region: str, user_tags: Mapping[str, str]
) -> dict[str, str]:
    return {
        **user_tags,
        f"{TAG_PREFIX}managed": "true",
        RUN_TAG: run_id,
        f"{TAG_PREFIX}family": family,
        f"{TAG_PREFIX}source-instance": instance_id,
        f"{TAG_PREFIX}source-region": source_region,
    }


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _account_of(principal: str) -> str | None:
    """An account as a whole: its id or its root ARN (a role or user is not the account)."""
    match = re.fullmatch(r"(?:arn:aws[a-z-]*:iam::)?([0-9]{12})(?::root)?", principal)
    return match.group(1) if match else None


# Condition keys are case-insensitive, and so is their lookup (_condition_values).
ORG_ID_CONDITION = "aws:PrincipalOrgID"
ORG_PATHS_CONDITION = "aws:PrincipalOrgPaths"


def _condition_values(conditions: Mapping[str, Any], key: str) -> list[str]:
    return [
        value
        for block in conditions.values()
        for name, values in block.items()
        if name.lower() == key.lower()
        for value in _as_list(values)
    ]


def principals_without_key_access(policy: Mapping[str, Any], grantees: list[str], share: ShareTargets) -> list[str]:
    """The share targets that neither the key policy nor a grant lets use the key for a launch."""
    everyone = False
    accounts = {account for grantee in grantees if (account := _account_of(grantee))}
    org_ids: set[str] = set()
    org_paths: list[str] = []
    statements = policy.get("Statement", [])
    for statement in [statements] if isinstance(statements, dict) else statements:
        actions = [action.lower() for action in _as_list(statement.get("Action"))]
        if statement.get("Effect") != "Allow" or not all(
            any(fnmatchcase(needed.lower(), pattern) for pattern in actions) for needed in KEY_USE_ACTIONS
        ):
            continue
        principal = statement.get("Principal", {})
        named = ["*"] if principal == "*" else _as_list(principal.get("AWS"))
        conditions = statement.get("Condition", {})
        accounts |= {account for name in named if (account := _account_of(name))}
        if "*" in named:
            org_ids |= set(_condition_values(conditions, ORG_ID_CONDITION))
            org_paths += _condition_values(conditions, ORG_PATHS_CONDITION)
            everyone |= not conditions
    if everyone:
        return []
    missing = [account for account in share.accounts if account not in accounts]
    missing += [arn for arn in share.organizations if _organization_id(arn) not in org_ids]
    for arn in share.organizational_units:
        if _organization_id(arn) not in org_ids and not any(_ou_id(arn) in path for path in org_paths):
            missing.append(arn)
    return missing


def _organization_id(arn: str) -> str:
    """``o-...`` of an organization ARN (``.../organization/o-...``) or an OU ARN (``.../ou/o-.../ou-...``),
    both already validated by the request model."""
    return arn.split("/")[1]


def _ou_id(arn: str) -> str:
    return arn.split("/")[2]
