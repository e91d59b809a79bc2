"""Step contracts: what each Lambda of the workflow takes and returns, internal to AMI Factory.

A handler parses its input with one of these and returns ``model_dump(mode="json")``; the ASL's
ResultSelectors are written from the output models (tools/write_asl.py). What users send is in
``request``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from .model import Model
from .pricing import CostEstimate
from .request import (
    AccountCopyTarget,
    CloneOptions,
    FastLaunchTarget,
    LaunchTemplateTarget,
    Mode,
    ProtectionOptions,
    RetentionOptions,
    ShareTargets,
    VolumeChange,
    WindowsOptions,
)


class Contract(Model):
    """Step inputs ignore fields they do not use: the ASL passes whole state objects."""

    model_config = ConfigDict(extra="ignore")


RetentionAction = Literal["deleted", "would delete", "skipped"]


class RetentionDecision(Model):
    region: str
    image_id: str
    family: str
    action: RetentionAction
    reason: str


class RetentionReport(Model):
    dry_run: bool
    decisions: list[RetentionDecision] = Field(default_factory=list)
    kept: int = 0


class ResolveRequestInput(Contract):
    request: Any  # the execution input as sent: whatever it is, ResolveRequest says what is wrong with it
    execution_started_at: str = ""  # $$.Execution.StartTime: tells this run from an earlier one of its name
    run_id: str
    state_machine_arn: str


class RegionTarget(Model):
    name: str
    is_source: bool


Platform = Literal["windows", "linux"]


class Plan(Contract):
    """The validated request, resolved against the instance and the deploy settings."""

    run_id: str
    started_at: str  # ISO 8601, UTC: an image found by this run's name must be younger
    account_id: str
    instance_id: str
    platform: Platform
    cleanup: bool
    source_region: str
    family: str
    family_asked_as: str  # the name before normalising: the family's owner record keeps it
    adopt_family: bool
    retention: RetentionOptions
    image_name: str
    seed_image_name: str
    capture_image_name: str  # what CreateImage makes: the image itself, or (encrypt) the source of its copies
    encrypt: bool
    launch_check: bool
    launch_check_max_polls: int
    description: str
    mode: Mode
    regions: list[RegionTarget]
    share: ShareTargets
    parameter_name: str
    tags: dict[str, str]
    poll_seconds: int
    generalize_max_polls: int
    max_wait_seconds: int  # the bound on a wait that ends on AWS's events: an image, a copy, a stop, a command
    generalize_max_wait_seconds: int  # the bound on sysprep/sanitize shutting the instance down
    windows: WindowsOptions
    clone_overrides: CloneOptions
    protection: ProtectionOptions
    copy_completion_minutes: int | None
    # Distributing an existing image (the request's source_image_id), delivered by run source_run_id:
    # nothing before Distribute runs, and the instance is never touched.
    source_image_id: str | None = None
    source_run_id: str | None = None
    imds_support: Literal["v2.0"] | None = None
    launch_templates: list[LaunchTemplateTarget] = Field(default_factory=list)
    approval: bool = False
    approval_timeout_seconds: int = 72 * 3600
    volumes: list[VolumeChange] = Field(default_factory=list)
    fast_launch: list[FastLaunchTarget] = Field(default_factory=list)
    copy_to_accounts: list[AccountCopyTarget] = Field(default_factory=list)
    account_cells: list[AccountCell] = Field(default_factory=list)  # copy_to_accounts, one per account and Region
    copies_into_accounts: bool = False  # whether there are account_cells (what the state machine's Choice reads)


class AccountCell(Model):
    """One account and Region of copy_to_accounts: the account's own copy of the Region's image."""

    account_id: str
    region: str
    kms_key_id: str | None = None  # None: the account's default EBS key in the Region


class Polled(Contract):
    """What a wait loop waits for: how many checks it took, and how long the next wait is (the
    Wait state after the first reads it: waits back off over long waits, see ``polling``)."""

    polls: int = 0
    wait_seconds: int = 60
    # Set in motion by the call that returned this (an image made, an instance told to stop): its
    # settling takes EC2 minutes, so no event about it can have come before its wait records the token,
    # and the wait need not look first.
    fresh: bool = False


class CheckInput(Contract):
    """Every wait loop's check: the bound on checks, and the deployment's poll interval."""

    max_polls: int
    poll_seconds: int = 60


class InstanceRef(Polled):
    instance_id: str
    region: str
    original_state: str
    state: str
    stopped_by_us: bool = False


class CommandRef(Polled):
    """An SSM Run Command invocation on one instance, and how far it got."""

    command_id: str
    instance_id: str
    region: str
    status: str = "Pending"


class LaunchedInstance(Polled):
    """An instance a run launched and waits for: the generalize clone (ready once it runs and SSM
    reaches it) or a launch check (ready once it runs with both status checks ok)."""

    instance_id: str
    region: str
    state: str  # as RunInstances answered; each check reads it again
    ready: bool = False


class CheckCloneInput(CheckInput):
    clone: LaunchedInstance


class GeneralizeRef(CommandRef):
    """The sysprep/sanitize command, and the state of the instance it shuts down."""

    instance_state: str = "running"


class GeneralizeInput(Plan):
    """The plan, with the clone when there is one (mode generalize)."""

    clone: LaunchedInstance | None = None


class CreateImageInput(GeneralizeInput):
    """The final image is made from the clone in mode generalize, from the instance otherwise."""


class LaunchCloneInput(Plan):
    seed: ImageRef


class ImageRef(Polled):
    region: str
    image_id: str
    state: str = "pending"


class WatchImageInput(Contract):
    """The Lambda of an image's ``.waitForTaskToken`` wait: the run, the image as the run's ``role``
    (its ledger must hold it so), and the task's token. ``copy_slot``: a copy's wait, whose run gives
    its copy slot in the image's Region back when the copy settles."""

    run_id: str
    role: Literal["seed", "image"]
    image: ImageRef
    task_token: str
    copy_slot: bool = False
    attempt: int = 0  # the wait's retry count ($$.State.RetryCount): a retried wait may have missed its event


class AwaitCopySlotInput(Contract):
    """The Lambda of a copy's ``.waitForTaskToken`` wait for a copy slot in ``region`` (the Distribute
    item's destination): the run and the task's token."""

    run_id: str
    region: str
    task_token: str


class CopiedRegion(Model):
    """One Region's item after Distribute: its complete image (``COPIED``), or why it failed."""

    region: str
    status: Literal["COPIED", "FAILED"]
    image: ImageRef | None = None
    error: StepError | None = None


class AwaitApprovalInput(Contract):
    """The Lambda of the approval's ``.waitForTaskToken`` wait: the images that wait, and the token."""

    run_id: str
    execution_arn: str
    images: list[CopiedRegion]
    task_token: str


class DecideApprovalInput(Contract):
    """An approver's answer, from ``ami_factory_cli approve|reject``."""

    execution_arn: str
    decision: Literal["approve", "reject"]
    reason: str = ""
    approver: str = ""  # for the log and the ledger; who really called is in CloudTrail


class ApprovalDecided(Model):
    run_id: str
    decision: str
    answered: bool  # False: the wait had ended already (timed out)


class ApprovalRequested(Model):
    waiting: list[str]  # "Region: image id"
    message: str


class CopySlot(Model):
    """A copy slot in ``region`` held for ``run_id``'s copy (the output its wait ends with), and, from the
    wait's first step, whether the copy still waits for it and what it waits for (shown by the CLI)."""

    region: str
    run_id: str
    waiting: bool = False
    message: str = ""


class WatchInstanceInput(Contract):
    """The Lambda of a ``.waitForTaskToken`` wait on the run's instance (or its clone): exactly one of
    mode stop's ``instance`` (until it has stopped), the clean-up ``command`` (until it has ended) and
    ``generalize`` (until the instance has shut itself down, or the command failed)."""

    run_id: str
    task_token: str
    attempt: int = 0  # the wait's retry count ($$.State.RetryCount): a retried wait may have missed its event
    instance: InstanceRef | None = None
    command: CommandRef | None = None
    generalize: GeneralizeRef | None = None


class InstanceStateChange(Contract):
    """The ``detail`` of EC2's ``EC2 Instance State-change Notification`` event."""

    instance_id: str = Field(alias="instance-id")
    state: str


class CommandStatusChange(Contract):
    """The ``detail`` of Systems Manager's ``EC2 Command Status-change Notification`` event."""

    command_id: str = Field(alias="command-id")
    status: str


class AmiStateChange(Contract):
    """The ``detail`` of EC2's ``EC2 AMI State Change`` event."""

    ImageId: str
    State: str
    ErrorMessage: str = ""


class AwsEvent(Contract):
    """An EventBridge event from AWS (the fields a wait's settling reads)."""

    detail_type: str = Field(alias="detail-type")
    region: str
    time: str = ""
    detail: dict[str, Any]


class WaitSettled(Model):
    """What an event did to the wait for its resource: ``ended`` is False for an event of no wait (a
    resource no run waits for, a duplicate, a late event) or of a state that ends none."""

    region: str
    resource_id: str
    state: str
    ended: bool


class WaitSweep(Model):
    """The fallback sweep: how many waits were open, the images whose waits it ended, those whose
    wait records it dropped as older than any wait may last, and those it could not look at (their
    errors are logged; the next sweep tries again, and the other waits are not held up)."""

    open: int
    settled: list[str]
    expired: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


class CopyImageInput(Contract):
    """One item of the Distribute Map: the plan's fields that a Region needs, and the source image."""

    run_id: str
    image_name: str
    description: str
    tags: dict[str, str]
    region: RegionTarget
    source_image: ImageRef
    copy_completion_minutes: int | None = None
    encrypt: bool = False


class ShareImageInput(Contract):
    image: ImageRef
    share: ShareTargets
    imds_support: Literal["v2.0"] | None = None
    run_id: str = ""
    approval: bool = False


class ShareImageOutput(Model):
    shared_with: list[str]


class LaunchCheckInput(Contract):
    run_id: str
    image: ImageRef
    imds_support: Literal["v2.0"] | None = None


class CheckLaunchInput(CheckInput):
    launched: LaunchedInstance


class EndLaunchCheckInput(Contract):
    run_id: str
    launched: LaunchedInstance


class ProtectImageInput(Contract):
    image: ImageRef
    protection: ProtectionOptions


class ProtectImageOutput(Model):
    deprecate_at: str | None = None
    deregistration_protection: bool = False


class PublishParameterInput(Contract):
    """A Region's ``latest``: moved only for the family's owner (the ledger binds it on first publish)."""

    run_id: str
    image: ImageRef
    parameter_name: str
    family: str
    family_asked_as: str
    adopt_family: bool
    account_id: str
    instance_id: str
    source_region: str
    source_run_id: str | None = None
    launch_templates: list[LaunchTemplateTarget] = Field(default_factory=list)  # the run's, every Region's
    fast_launch: list[FastLaunchTarget] = Field(default_factory=list)  # the run's, every Region's


class LaunchTemplateVersionRef(Model):
    launch_template_id: str
    version: int
    default: bool


class PublishParameterOutput(Model):
    """``version`` None: latest was left as it is (the launch templates too), and ``note`` says why."""

    parameter_name: str
    version: int | None = None
    launch_templates: list[LaunchTemplateVersionRef] = Field(default_factory=list)
    fast_launch: str | None = None  # EC2's state for the image's Windows fast launch, if asked
    note: str | None = None


class StepError(Model):
    """What a Catch puts at ``$.error``: Step Functions' own shape."""

    Error: str
    Cause: str | None = None


class RegionResult(Model):
    region: str
    status: Literal["AVAILABLE", "FAILED"]
    image_id: str | None = None
    shared_with: list[str] = Field(default_factory=list)
    parameter_name: str | None = None
    deprecate_at: str | None = None
    deregistration_protection: bool = False
    launch_checked: bool = False
    imds_support: str | None = None
    launch_templates: list[LaunchTemplateVersionRef] = Field(default_factory=list)
    fast_launch: str | None = None
    parameter_note: str | None = None  # why latest was not moved to this image
    error: StepError | None = None


class AccountCopyRef(Polled):
    """An account's copy of a Region's image, as far as it got: copied (``image_id``), available, published."""

    account_id: str
    region: str
    source_image_id: str
    image_id: str
    state: str = "pending"
    published: bool = False
    note: str | None = None  # why the account's latest was not moved


class DeliverToAccountInput(Contract):
    """One cell of the DeliverToAccounts map, and its copy once the first call made it."""

    run_id: str
    image_name: str
    description: str
    tags: dict[str, str]
    parameter_name: str
    poll_seconds: int = 60
    max_wait_seconds: int
    cell: AccountCell
    account_copy: AccountCopyRef | None = None  # the source, and whether latest moved, are the ledger's to say


class AccountCopyResult(Model):
    """One account and Region in the summary: its own copy, or why it has none."""

    account_id: str
    region: str
    status: Literal["DELIVERED", "FAILED"]
    image_id: str | None = None
    parameter_name: str | None = None
    parameter_note: str | None = None  # why the account's latest was not moved to the copy
    error: StepError | None = None


class RemoveAccountCopyInput(Contract):
    """A cell that failed: its copy (if the run made one) goes, and the error is its result."""

    run_id: str
    cell: AccountCell
    error: StepError


class RestoreInstanceInput(Contract):
    instance: InstanceRef
    run_id: str
    mode: Mode  # generalize: the run's scaffolding (clone, seed image) goes too


class FinalizeInput(Plan):
    """The whole execution state after Distribute."""

    instance: InstanceRef | None = None  # None: distributing an existing image, the instance untouched
    image: ImageRef
    distribution: list[RegionResult]
    accounts: list[AccountCopyResult] = Field(default_factory=list)
    accounts_error: StepError | None = None  # the DeliverToAccounts map itself failed (its cells catch their own)


class KeptDelivered(Model):
    """What KeepDelivered recorded as kept, before copies into accounts."""

    status: RunStatus
    regions: list[str]


class HandleFailureInput(Plan):
    """The execution state as it was when a step failed, with the error a Catch put at ``$.error``."""

    instance: InstanceRef | None = None
    error: StepError


RunStatus = Literal["SUCCEEDED", "PARTIAL", "FAILED"]


class Summary(Model):
    status: RunStatus
    run_id: str
    instance_id: str
    image_name: str | None = None
    instance_state: str | None = None
    regions: list[RegionResult] = Field(default_factory=list)
    failed_regions: list[str] = Field(default_factory=list)
    accounts: list[AccountCopyResult] = Field(default_factory=list)  # copy_to_accounts, per account and Region
    cleaned_up: list[str] = Field(default_factory=list)
    left_over: list[str] = Field(default_factory=list)  # what could not be removed or done, and why
    cost: CostEstimate | None = None
    error: str | None = None
    cause: str | None = None
    notification_error: str | None = None  # the run's result stands; only telling about it failed


class ExecutionStatusChange(Contract):
    """The detail of EventBridge's ``Step Functions Execution Status Change`` (source ``aws.states``)."""

    executionArn: str  # AWS's field names
    stateMachineArn: str
    name: str
    status: str
    error: str | None = None
    cause: str | None = None


class ExecutionStatusChangeEvent(Contract):
    detail: ExecutionStatusChange


class EndedRuns(Model):
    """What the janitor ended: one run (a status change), or every run the daily sweep found."""

    ended: list[Summary] = Field(default_factory=list)
