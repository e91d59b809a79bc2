"""What a user asks for: the ImagingRequest (the state machine's input) and its parts, and the
retention clean-up's input. These models generate ``events/imaging-request.schema.json``; every
field here is a promise to users, so it is validated strictly (unknown fields are refused).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

INSTANCE_ID = r"^i-[0-9a-f]{8}([0-9a-f]{9})?$"
IMAGE_ID = r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$"
LAUNCH_TEMPLATE_ID = r"^lt-[0-9a-f]{17}$"
ACCOUNT_ID = r"^[0-9]{12}$"
ORGANIZATION_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$"
OU_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$"
SUBNET_ID = r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$"
SECURITY_GROUP_ID = r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$"
INSTANCE_TYPE = r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$"
INSTANCE_PROFILE = r"^(arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/)?[A-Za-z0-9+=,.@_/-]+$"
SSM_PARAMETER_NAME = r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[A-Za-z0-9-]+|alias/[A-Za-z0-9/_-]+)$"
RESERVED_TAG_PREFIXES = ("aws:", "ami-factory:")
# EC2: 50 tags per resource, keys up to 128 characters, values up to 256. AMI Factory puts up to 10
# of its own on an image (Name, managed, run, family, source-instance, source-region, source-image,
# role, keep-newest, max-age-days), so a request may add 40.
MAX_REQUEST_TAGS = 40
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_control_characters(text: str) -> str:
    """Refused before anything moves: EC2 and the XML it speaks would refuse it after the stop."""
    if found := CONTROL_CHARACTERS.search(text):
        raise ValueError(f"contains the control character {found.group()!r}: remove it (tabs and newlines included)")
    return text


FreeText = Annotated[str, AfterValidator(no_control_characters)]


def _once(field: str, keys: list[str]) -> None:
    """A list whose entries each name one thing (a device, a Region, a template) names each once."""
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"{field} lists {twice} more than once: one entry each")


Mode = Literal["no-reboot", "stop", "generalize", "generalize-in-place"]
GENERALIZING_MODES = ("generalize", "generalize-in-place")
AdminPassword = Literal["random", "specify", "do-nothing"]
AccountId = Annotated[str, StringConstraints(pattern=ACCOUNT_ID)]
OrganizationArn = Annotated[str, StringConstraints(pattern=ORGANIZATION_ARN)]
OuArn = Annotated[str, StringConstraints(pattern=OU_ARN)]
# Region codes are checked against botocore's Region list by the rules (UnknownRegionError), not here.
RegionName = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class ShareTargets(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    accounts: list[AccountId] = Field(default_factory=list, description="12-digit AWS account ids")
    organizations: list[OrganizationArn] = Field(default_factory=list, description="organization ARNs")
    organizational_units: list[OuArn] = Field(default_factory=list, description="OU ARNs")
    public: bool = Field(False, description="make the image public (only if the deployment allows it)")
    snapshot_permissions: bool = Field(
        False,
        description="also let the accounts (and, for a public image, everyone) create volumes from the image's "
        "snapshots, which they need to copy the image; never for a public image with encrypted snapshots",
    )

    @model_validator(mode="after")
    def _snapshot_permissions_need_accounts(self) -> ShareTargets:
        if self.snapshot_permissions and not (self.accounts or self.public):
            raise ValueError(
                "snapshot_permissions go to accounts (EBS snapshots have no organization or OU principals): list the "
                "accounts that must copy the image in share.accounts"
            )
        return self

    def describe(self) -> list[str]:
        """Human-readable list of everyone the image is shared with."""
        return [*self.accounts, *self.organizations, *self.organizational_units] + (["public"] if self.public else [])


MAX_DEPRECATION_DAYS = 3650  # EC2: 10 years
MAX_PUBLIC_DEPRECATION_DAYS = 730  # EC2: public images at most 2 years


class ProtectionOptions(BaseModel):
    """What keeps the image from being used too long or deleted too soon (each Region's image)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    deprecate_after_days: Annotated[int, Field(ge=1, le=MAX_DEPRECATION_DAYS)] | None = Field(
        None, description="deprecate the image this many days after it is made (public images: at most 730)"
    )
    deregistration_protection: bool = Field(False, description="refuse DeregisterImage until protection is disabled")
    cooldown: bool = Field(False, description="with deregistration_protection: it lasts 24 h after being disabled")

    @model_validator(mode="after")
    def _cooldown_needs_protection(self) -> ProtectionOptions:
        if self.cooldown and not self.deregistration_protection:
            raise ValueError("cooldown only applies with deregistration_protection")
        return self


class WindowsOptions(BaseModel):
    """How sysprep leaves the Administrator account (EC2Launch's setting, applied before sysprep)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    admin_password: AdminPassword = Field(
        "random",
        description="random: the launch agent sets a random password, retrieved with the key pair; specify: the "
        "password in admin_password_parameter; do-nothing: the password from unattend.xml, else the account is disabled",
    )
    admin_password_parameter: Annotated[str, StringConstraints(pattern=SSM_PARAMETER_NAME, max_length=1011)] | None = (
        Field(
            None,
            description="with admin_password specify: the SSM SecureString parameter holding the password. The instance "
            "reads it itself (its profile needs ssm:GetParameter on it), so the password never appears in the run",
        )
    )

    @model_validator(mode="after")
    def _parameter_only_with_specify(self) -> WindowsOptions:
        if self.admin_password == "specify" and not self.admin_password_parameter:
            raise ValueError(
                "admin_password specify needs admin_password_parameter, the SSM SecureString with the password"
            )
        if self.admin_password != "specify" and self.admin_password_parameter:
            raise ValueError("admin_password_parameter is only read with admin_password specify")
        return self


class CloneOptions(BaseModel):
    """What the temporary clone of mode generalize changes from the source instance."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    instance_type: Annotated[str, StringConstraints(pattern=INSTANCE_TYPE)] | None = Field(
        None, description="default: the source's instance type"
    )
    subnet_id: Annotated[str, StringConstraints(pattern=SUBNET_ID)] | None = Field(
        None, description="default: the source's subnet. Use an isolated subnet for domain-joined Windows sources"
    )
    security_group_ids: list[Annotated[str, StringConstraints(pattern=SECURITY_GROUP_ID)]] | None = Field(
        None, description="default: the source's security groups"
    )
    instance_profile: Annotated[str, StringConstraints(pattern=INSTANCE_PROFILE, max_length=400)] | None = Field(
        None,
        description="instance profile name or ARN, one of the deployment's AllowedCloneInstanceProfiles; default: the "
        "stack's clone profile, which has what SSM needs and nothing else",
    )


VolumeType = Literal["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"]
DEVICE_NAME = r"^(/dev/[a-z0-9]{2,12}|xvd[a-z]{1,2})$"


class VolumeChange(BaseModel):
    """How one of the instance's volumes goes into the image (CreateImage's block device mapping)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    device_name: Annotated[str, StringConstraints(pattern=DEVICE_NAME)] = Field(
        description="the device as the instance has it (/dev/sdf, /dev/xvdb, xvdf)"
    )
    exclude: bool = Field(False, description="leave this data volume out of the image (never the root volume)")
    size_gib: Annotated[int, Field(ge=1, le=65536)] | None = Field(None, description="grow it (never shrink)")
    volume_type: VolumeType | None = Field(None, description="the image's volume type for it")
    iops: Annotated[int, Field(ge=100, le=256000)] | None = Field(None, description="gp3, io1, io2 only")
    throughput: Annotated[int, Field(ge=125, le=2000)] | None = Field(None, description="MiB/s, gp3 only")

    @model_validator(mode="after")
    def _one_kind_of_change(self) -> VolumeChange:
        changes = [
            name for name in ("size_gib", "volume_type", "iops", "throughput") if getattr(self, name) is not None
        ]
        if self.exclude and changes:
            raise ValueError(f"{self.device_name}: a volume left out (exclude) takes no {changes}; drop them")
        if not self.exclude and not changes:
            raise ValueError(f"{self.device_name}: say what changes (exclude, size_gib, volume_type, iops, throughput)")
        if self.volume_type in ("io1", "io2") and self.iops is None:
            raise ValueError(f"{self.device_name}: volume_type {self.volume_type} needs iops")
        return self


class FastLaunchTarget(BaseModel):
    """Windows fast launch for the image in one of the run's Regions: EC2 keeps pre-provisioned snapshots."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    region: RegionName = Field(description="a Region the run distributes to")
    snapshot_count: Annotated[int, Field(ge=1, le=100)] = Field(
        5, description="pre-provisioned snapshots EC2 keeps ready (each is an EBS snapshot you pay for)"
    )
    max_parallel_launches: Annotated[int, Field(ge=6, le=100)] = Field(
        6, description="instances EC2 may launch at once to pre-provision them (at least 6)"
    )


class LaunchTemplateTarget(BaseModel):
    """A launch template in one of the run's Regions that gets a new version with that Region's image."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    region: RegionName = Field(description="the template's Region: one the run distributes to")
    launch_template_id: Annotated[str, StringConstraints(pattern=LAUNCH_TEMPLATE_ID)] = Field(
        description="lt-...: its ARN must be in the deployment's AllowedLaunchTemplates"
    )
    set_default: bool = Field(False, description="also make the new version the template's default")


class AccountCopyTarget(BaseModel):
    """An account that gets its own copy of the image in each of its Regions (it owns the copy)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    account_id: AccountId = Field(description="12-digit account id: one of the deployment's AllowedCopyAccounts")
    regions: list[RegionName] | None = Field(
        None,
        max_length=30,
        description="Regions of the run to copy into in this account; default: every Region of the run",
    )
    kms_key_ids: dict[RegionName, Annotated[str, StringConstraints(pattern=KMS_KEY_ARN)]] = Field(
        default_factory=dict,
        description="Region -> this account's key ARN in that Region (key or alias) to encrypt its copy with; "
        "default: the account's default EBS key there",
    )

    @model_validator(mode="after")
    def _keys_are_the_accounts(self) -> AccountCopyTarget:
        for region, arn in self.kms_key_ids.items():
            key_region, key_account = arn.split(":")[3:5]
            if (key_region, key_account) != (region, self.account_id):
                raise ValueError(
                    f"kms_key_ids[{region}] is a key of account {key_account} in {key_region}: the copy in {region} "
                    f"is encrypted with a key of account {self.account_id} in {region}"
                )
        if self.regions is not None:
            _once("regions", self.regions)
        return self


class RetentionOptions(BaseModel):
    """How many of this family's images the scheduled clean-up keeps, per Region (overrides the deployment's)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    keep_newest: Annotated[int, Field(ge=1, le=1000)] | None = Field(None, description="keep the newest N images")
    max_age_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        None, description="keep images younger than D days"
    )


class RetentionInput(BaseModel):
    """What the scheduled clean-up is asked: a dry run lists what would go and why, changing nothing."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    dry_run: bool = False
    regions: list[str] | None = None  # default: every Region the ledger records published images in


class ImagingRequest(BaseModel):
    """What a user asks for: the execution input of the state machine."""

    model_config = ConfigDict(extra="forbid", title="ImagingRequest", defer_build=True)

    instance_id: Annotated[str, StringConstraints(pattern=INSTANCE_ID)] = Field(
        description="the EC2 instance to image, in the stack's Region (i-0123456789abcdef0)"
    )
    image_name: Annotated[FreeText, StringConstraints(min_length=1, max_length=80)] | None = Field(
        None, description="image family name; default: the instance's Name tag, else its id"
    )
    description: Annotated[FreeText, StringConstraints(max_length=255)] | None = Field(
        None, description="image description"
    )
    regions: list[RegionName] | None = Field(
        None,
        description="Regions to copy to (the source Region is always included); default: the deploy-time DefaultRegions",
    )
    share: ShareTargets = Field(default_factory=ShareTargets, description="who may launch the image")
    mode: Mode = Field(
        "stop",
        description="stop: stop, image, start again; no-reboot: image the running instance; generalize: sysprep "
        "(Windows) or sanitize (Linux) a temporary clone and image that, the instance itself is never touched; "
        "generalize-in-place: sysprep/sanitize the instance itself (needs confirm_generalize_in_place)",
    )
    confirm_generalize_in_place: bool = Field(
        False,
        validate_default=True,
        description="mode generalize-in-place only: I accept that the instance loses its identity (computer name, "
        "SID, host keys, machine-id) and boots as a new machine afterwards",
    )
    windows: WindowsOptions = Field(default_factory=WindowsOptions, description="generalize modes, Windows only")
    clone: CloneOptions = Field(
        default_factory=CloneOptions, description="mode generalize only: overrides for the clone"
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description=f"extra tags for the images and snapshots: at most {MAX_REQUEST_TAGS}, keys up to {MAX_TAG_KEY} "
        f"characters, values up to {MAX_TAG_VALUE}, no control characters",
    )
    protection: ProtectionOptions = Field(
        default_factory=ProtectionOptions, description="deprecation and deregistration protection"
    )
    volumes: list[VolumeChange] = Field(
        default_factory=list,
        max_length=40,
        description="how the instance's volumes go into the image: leave a data volume out, grow one, change its "
        "type, IOPS or throughput (checked against the instance before anything changes: unknown devices, "
        "shrinking, the root left out and settings its type does not take are refused by name)",
    )
    fast_launch: list[FastLaunchTarget] = Field(
        default_factory=list,
        max_length=15,
        description="Windows images only: turn on Windows fast launch for the image in these Regions (after it is "
        "shared and protected, before latest moves); turned off before the image is ever removed",
    )
    approval: bool = Field(
        False,
        description="pause before anyone gets the images: once every Region's image is copied (and checked), the "
        "notification topic says which images wait and how to answer (ami_factory_cli approve|reject EXECUTION); "
        "nothing is shared or published until someone approves; rejected, or not answered within the deployment's "
        "ApprovalTimeoutHours, the images are removed as on any failure (the instance was given back before)",
    )
    launch_templates: list[LaunchTemplateTarget] = Field(
        default_factory=list,
        max_length=50,
        description="launch templates to point at the new image: each gets a new version (based on its default "
        "version, with the Region's image) and, with set_default, becomes its default; a Region that fails takes "
        "its templates' changes back",
    )
    imds_support: Literal["v2.0"] | None = Field(
        None,
        description="v2.0: every Region's image requires IMDSv2 (instances launched from it get HttpTokens required; "
        "EC2 cannot undo this on an image), set before the image is shared; a launch check then boots with IMDSv2 "
        "required",
    )
    launch_check: bool = Field(
        False,
        description="in every Region, launch an instance from the new image, wait until it runs and passes its "
        "status checks, terminate it; a Region whose check fails is reported failed and its image removed",
    )
    encrypt: bool = Field(
        False,
        description="encrypt every Region's image with that Region's customer managed key from the deployment's "
        "KmsKeyIds (the source Region's through a same-Region copy); needed to share an image of encrypted volumes",
    )
    retention: RetentionOptions = Field(
        default_factory=RetentionOptions, description="this family's retention, recorded on its images as tags"
    )
    copy_completion_minutes: Annotated[int, Field(ge=15, le=2880, multiple_of=15)] | None = Field(
        None,
        description="time-based copy: every copy completes within this many minutes (15-minute steps, 15 min to "
        "48 h; EBS charges extra for it)",
    )
    adopt_family: bool = Field(
        False,
        description="take the image family over from the instance that owns it (the first to publish it): this "
        "run then moves its latest parameter, and that instance's runs no longer may. StartExecution only, never a tag",
    )
    cleanup: bool = Field(
        False,
        description="before imaging, clean up through SSM Run Command: temp files and the recycle bin on Windows, "
        "temp files and package caches on Linux (the instance must be running and managed by SSM)",
    )
    copy_to_accounts: list[AccountCopyTarget] = Field(
        default_factory=list,
        max_length=20,
        description="accounts that get their own copy of the image (in each of their Regions, after it is shared and "
        "published here): AMI Factory assumes the deployment's CopyAccountRoleName in each (examples/"
        "target-account-role.yaml), copies the image it shared with the account, encrypted with the account's key, "
        "tags it and moves the account's own latest parameter; the accounts must be in the deployment's "
        "AllowedCopyAccounts, and a failing account or Region does not stop the others (the run is then PARTIAL). "
        "StartExecution only, never a tag",
    )
    source_image_id: Annotated[str, StringConstraints(pattern=IMAGE_ID)] | None = Field(
        None,
        description="distribute this existing image instead of imaging the instance, which is not touched: an image "
        "an AMI Factory run delivered for the instance's family in the stack's Region (a summary's image_id there). "
        "regions then names where it goes (copy, launch check, share, protect, publish), the stack's Region "
        "excluded; `ami_factory_cli redrive EXECUTION` builds this request from a PARTIAL run. StartExecution only, "
        "never a tag",
    )

    # Rules across fields are checked on the later field, so an error names a field (and, for a
    # tag-triggered run, the tag) to fix rather than the whole request.

    @field_validator("confirm_generalize_in_place")
    @classmethod
    def _confirmation_fits_the_mode(cls, confirmed: bool, info: ValidationInfo) -> bool:
        mode = info.data.get("mode")
        if mode == "generalize-in-place" and not confirmed:
            raise ValueError(
                "mode generalize-in-place runs sysprep/sanitize on the instance itself, which loses its computer name, "
                "SID, host keys and machine-id. Set confirm_generalize_in_place to true to accept that, or use mode "
                "generalize, which works on a temporary clone and leaves the instance as it is"
            )
        if confirmed and mode is not None and mode != "generalize-in-place":
            raise ValueError("confirm_generalize_in_place only applies to mode generalize-in-place")
        return confirmed

    @field_validator("windows")
    @classmethod
    def _windows_options_fit_the_mode(cls, windows: WindowsOptions, info: ValidationInfo) -> WindowsOptions:
        mode = info.data.get("mode")
        if windows != WindowsOptions() and mode is not None and mode not in GENERALIZING_MODES:
            raise ValueError("windows options only apply to the generalize modes")
        return windows

    @field_validator("clone")
    @classmethod
    def _clone_options_fit_the_mode(cls, clone: CloneOptions, info: ValidationInfo) -> CloneOptions:
        mode = info.data.get("mode")
        if clone != CloneOptions() and mode is not None and mode != "generalize":
            raise ValueError("clone options only apply to mode generalize")
        return clone

    @field_validator("tags")
    @classmethod
    def _tags_fit_ec2(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_REQUEST_TAGS:
            raise ValueError(
                f"{len(tags)} tags: at most {MAX_REQUEST_TAGS} (EC2 allows 50 per image, and AMI Factory adds up to 10 "
                f"of its own); drop {len(tags) - MAX_REQUEST_TAGS}"
            )
        # EC2 compares keys as given, but a reserved prefix behind a space or in capitals still reads as one.
        reserved = sorted(key for key in tags if key.strip().casefold().startswith(RESERVED_TAG_PREFIXES))
        if reserved:
            raise ValueError(f"tag keys {reserved} are reserved; drop the 'aws:' / 'ami-factory:' prefix")
        for key, value in tags.items():
            if not key.strip() or len(key) > MAX_TAG_KEY:
                raise ValueError(f"tag key {key[:40]!r}... must be 1 to {MAX_TAG_KEY} characters: shorten it")
            if len(value) > MAX_TAG_VALUE:
                raise ValueError(f"the value of tag {key!r} is {len(value)} characters: at most {MAX_TAG_VALUE}")
            for text in (key, value):
                try:
                    no_control_characters(text)
                except ValueError as error:
                    raise ValueError(f"tag {key!r} {error}") from None
        return tags

    @field_validator("volumes")
    @classmethod
    def _each_volume_once(cls, volumes: list[VolumeChange]) -> list[VolumeChange]:
        _once("volumes", [volume.device_name for volume in volumes])
        return volumes

    @field_validator("fast_launch")
    @classmethod
    def _each_region_once(cls, targets: list[FastLaunchTarget]) -> list[FastLaunchTarget]:
        _once("fast_launch", [target.region for target in targets])
        return targets

    @field_validator("launch_templates")
    @classmethod
    def _each_template_once(cls, templates: list[LaunchTemplateTarget]) -> list[LaunchTemplateTarget]:
        _once("launch_templates", [f"{t.region}:{t.launch_template_id}" for t in templates])
        return templates

    @field_validator("copy_to_accounts")
    @classmethod
    def _each_account_once(cls, targets: list[AccountCopyTarget]) -> list[AccountCopyTarget]:
        _once("copy_to_accounts", [target.account_id for target in targets])
        return targets

    @field_validator("source_image_id")
    @classmethod
    def _distributing_touches_no_instance(cls, image_id: str | None, info: ValidationInfo) -> str | None:
        if image_id is None:
            return image_id
        touching = [
            name
            for name, unchanged in (
                ("mode", info.data.get("mode", "stop") == "stop"),
                ("cleanup", not info.data.get("cleanup")),
                ("windows", info.data.get("windows", WindowsOptions()) == WindowsOptions()),
                ("clone", info.data.get("clone", CloneOptions()) == CloneOptions()),
                ("volumes", not info.data.get("volumes")),
            )
            if not unchanged
        ]
        if touching:
            raise ValueError(
                f"source_image_id distributes an image that exists and never touches the instance, so {touching} "
                f"do not apply: drop them, or drop source_image_id to image the instance anew"
            )
        return image_id

    @field_validator("protection")
    @classmethod
    def _deprecation_fits_public_sharing(cls, protection: ProtectionOptions, info: ValidationInfo) -> ProtectionOptions:
        share: Any = info.data.get("share")
        days = protection.deprecate_after_days
        if share is not None and share.public and days is not None and days > MAX_PUBLIC_DEPRECATION_DAYS:
            raise ValueError(
                f"public images can be deprecated at most {MAX_PUBLIC_DEPRECATION_DAYS} days ahead: lower "
                f"protection.deprecate_after_days"
            )
        return protection
