"""Deploy-time settings, read from the function environment when asked: by a step when it runs, and
by a handler when it is made (its Region, for the clients it makes at Init), never by a module.

Each value comes from a template parameter (see ``template.yaml``); the names of the environment
variables are the contract between the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, cast

from . import polling

RetryMode = Literal["legacy", "standard", "adaptive"]


def _csv(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _pairs(name: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs separated by commas."""
    return dict(pair.split("=", 1) for pair in _csv(name) if "=" in pair)


def _key_arns() -> tuple[str, ...]:
    """KMS_KEY_IDS: key ARNs (a ``REGION=`` in front, the older form, is dropped: the ARN names its Region)."""
    return tuple(entry.split("=", 1)[-1] for entry in _csv("KMS_KEY_IDS"))


def _keys_by_region(arns: tuple[str, ...]) -> dict[str, str]:
    """The first key listed in each Region is the one its encrypted images use."""
    by_region: dict[str, str] = {}
    for arn in arns:
        by_region.setdefault(arn.split(":")[3], arn)
    return by_region


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return raw in ("true", "1", "yes") if raw else default


def _retry_mode(raw: str) -> RetryMode:
    if raw not in ("legacy", "standard", "adaptive"):
        raise ValueError(f"SDK_RETRY_MODE {raw!r} is not one of legacy, standard, adaptive")
    return cast(RetryMode, raw)


@dataclass(frozen=True)
class Settings:
    region: str  # the stack's Region: where instances are imaged
    default_regions: tuple[str, ...]
    allowed_regions: tuple[str, ...]  # empty: any AWS Region
    allowed_accounts: tuple[str, ...]
    allowed_organizations: tuple[str, ...]
    allowed_organizational_units: tuple[str, ...]
    allow_public: bool
    image_name_prefix: str
    parameter_prefix: str
    poll_seconds: int
    max_wait_seconds: int
    generalize_max_wait_seconds: int  # sysprep's shutdown: minutes, not the hours images may take
    sdk_max_attempts: int
    sdk_retry_mode: RetryMode
    trigger_tag_key: str
    schedule_tag_key: str
    state_machine_arn: str  # only the start function has it
    kms_keys: dict[str, str] = field(default_factory=dict)  # Region -> the key encrypted images use there
    kms_key_arns: tuple[str, ...] = ()  # every customer managed key AMI Factory may use (through EC2)
    launch_check_subnets: dict[str, str] = field(default_factory=dict)  # Region -> subnet; none: the default VPC
    launch_check_instance_type: str = "t3.micro"
    launch_check_max_wait_seconds: int = 900
    approval_timeout_seconds: int = 72 * 3600
    require_approval: bool = False  # every run waits for approval, whatever its request says
    price_overrides: str = ""  # JSON: see pricing.Prices
    notification_topic_arn: str = ""
    retention_keep_newest: int = 0  # 0: no count rule
    retention_max_age_days: int = 0  # 0: no age rule
    retention_recent_launch_days: int = 14
    event_bus_name: str = "default"
    ledger_table: str = ""  # the run ledger (DynamoDB): what runs made, instance locks, family owners
    tag_privileged_settings: tuple[str, ...] = ()  # privileged options the operator lets tags ask for
    clone_instance_profile: str = ""  # the stack's own: what SSM needs, nothing else
    allowed_clone_instance_profiles: tuple[str, ...] = ()  # names a request may choose instead
    allowed_launch_templates: tuple[str, ...] = ()  # launch template ARNs a run may add versions to
    ssm_documents: dict[str, str] = field(default_factory=dict)  # cleanup-linux, ... -> the stack's document
    allowed_trigger_principals: tuple[str, ...] = ()  # TriggerSource=cloudtrail: who may trigger by tag
    copy_slots_per_region: int = 20  # copies all runs may have in flight into one Region (EC2: 25 from one source)
    run_starts_per_minute: int = 60  # how fast a firing over many instances starts their runs
    allowed_copy_accounts: tuple[str, ...] = ()  # accounts copy_to_accounts may name
    copy_account_role_name: str = "AmiFactoryCopyTarget"  # the role each of them deploys for the stack
    copy_account_external_id: str = ""  # what that role's trust policy asks the stack to say

    def copy_account_role_arn(self, account: str) -> str:
        return f"arn:aws:iam::{account}:role/{self.copy_account_role_name}"

    @property
    def launch_check_max_polls(self) -> int:
        return self.polls_within(self.launch_check_max_wait_seconds)

    @property
    def generalize_max_polls(self) -> int:
        return self.polls_within(self.generalize_max_wait_seconds)

    def polls_within(self, seconds: int) -> int:
        return polling.polls_within(seconds, self.poll_seconds)


def load_settings() -> Settings:
    return Settings(
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        default_regions=_csv("DEFAULT_REGIONS"),
        allowed_regions=_csv("ALLOWED_REGIONS"),
        allowed_accounts=_csv("ALLOWED_SHARE_ACCOUNTS"),
        allowed_organizations=_csv("ALLOWED_SHARE_ORGANIZATIONS"),
        allowed_organizational_units=_csv("ALLOWED_SHARE_OUS"),
        allow_public=_bool("ALLOW_PUBLIC_SHARING"),
        image_name_prefix=os.environ.get("IMAGE_NAME_PREFIX", "ami-factory"),
        parameter_prefix=os.environ.get("PARAMETER_PREFIX", "/ami-factory").rstrip("/"),
        poll_seconds=_int("POLL_SECONDS", 60),
        copy_slots_per_region=_int("COPY_SLOTS_PER_REGION", 20),
        run_starts_per_minute=max(1, _int("RUN_STARTS_PER_MINUTE", 60)),  # the template's MinValue
        max_wait_seconds=_int("MAX_WAIT_SECONDS", 4 * 3600),
        generalize_max_wait_seconds=_int("GENERALIZE_MAX_WAIT_SECONDS", 30 * 60),
        sdk_max_attempts=_int("SDK_MAX_ATTEMPTS", 5),
        sdk_retry_mode=_retry_mode(os.environ.get("SDK_RETRY_MODE", "adaptive")),
        trigger_tag_key=os.environ.get("TRIGGER_TAG_KEY", "ami-factory:create"),
        schedule_tag_key=os.environ.get("SCHEDULE_TAG_KEY", "ami-factory:schedule"),
        state_machine_arn=os.environ.get("STATE_MACHINE_ARN", ""),
        kms_keys=_keys_by_region(_key_arns()),
        kms_key_arns=_key_arns(),
        launch_check_subnets=_pairs("LAUNCH_CHECK_SUBNETS"),
        launch_check_instance_type=os.environ.get("LAUNCH_CHECK_INSTANCE_TYPE") or "t3.micro",
        launch_check_max_wait_seconds=_int("LAUNCH_CHECK_MAX_WAIT_SECONDS", 900),
        approval_timeout_seconds=_int("APPROVAL_TIMEOUT_HOURS", 72) * 3600,
        require_approval=os.environ.get("REQUIRE_APPROVAL", "false").lower() == "true",
        price_overrides=os.environ.get("PRICE_OVERRIDES", ""),
        notification_topic_arn=os.environ.get("NOTIFICATION_TOPIC_ARN", ""),
        retention_keep_newest=_int("RETENTION_KEEP_NEWEST", 0),
        retention_max_age_days=_int("RETENTION_MAX_AGE_DAYS", 0),
        retention_recent_launch_days=_int("RETENTION_RECENT_LAUNCH_DAYS", 14),
        event_bus_name=os.environ.get("EVENT_BUS_NAME") or "default",
        ledger_table=os.environ.get("LEDGER_TABLE", ""),
        tag_privileged_settings=_csv("TAG_PRIVILEGED_SETTINGS"),
        clone_instance_profile=os.environ.get("CLONE_INSTANCE_PROFILE", ""),
        allowed_clone_instance_profiles=_csv("ALLOWED_CLONE_INSTANCE_PROFILES"),
        allowed_launch_templates=_csv("ALLOWED_LAUNCH_TEMPLATES"),
        ssm_documents=_pairs("SSM_DOCUMENTS"),
        allowed_trigger_principals=_csv("ALLOWED_TRIGGER_PRINCIPALS"),
        allowed_copy_accounts=_csv("ALLOWED_COPY_ACCOUNTS"),
        copy_account_role_name=os.environ.get("COPY_ACCOUNT_ROLE_NAME") or "AmiFactoryCopyTarget",
        copy_account_external_id=os.environ.get("COPY_ACCOUNT_EXTERNAL_ID", ""),
    )
