"""One Region's item of the Distribute map: copy (encrypted when asked), launch check, share,
publish, protect."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError

from . import copy_slots
from .aws import Ec2, Ssm, error_code, error_text, snapshots_of
from .contracts import (
    CheckLaunchInput,
    CopyImageInput,
    EndLaunchCheckInput,
    ImageRef,
    LaunchCheckInput,
    LaunchedInstance,
    LaunchTemplateVersionRef,
    ProtectImageInput,
    ProtectImageOutput,
    PublishParameterInput,
    PublishParameterOutput,
    ShareImageInput,
    ShareImageOutput,
)
from .errors import (
    AmiFactoryError,
    ApprovalMissingError,
    CopySlotBusyError,
    EncryptionKeyError,
    InvalidRequestError,
    LaunchCheckFailedError,
    NotMadeByRunError,
    ThrottledError,
)
from .ledger import FamilyOwner, Ledger, Made, TemplateVersion
from .observability import logger
from .request import LaunchTemplateTarget
from .rules import (
    ROLE_TAG,
    RUN_TAG,
    TAG_PREFIX,
    check_copy_accounts,
    check_launch_templates,
    check_share_targets,
    utc_instant,
)
from .settings import load_settings
from .steps import ask_for_template_version, client_token, counted, family_refusal, give_up_after, require_made


def copy_image(event: CopyImageInput) -> ImageRef:
    """Copy into the item's Region. The source Region's item only gets here with encrypt (a same-Region
    copy re-encrypts the capture); otherwise the ASL uses the source image as it is."""
    region = event.region.name
    ec2 = Ec2(region)
    ledger = Ledger()
    # All runs share EC2's copy quota into a Region: a copy gets here once its wait for a slot (the step
    # before) has taken one, given back when the copy settles (its event, or the fallback sweep) or when
    # the run ends (however it ends). A copy that an earlier attempt started (its answer lost) still
    # holds its slot, and EC2 answers the same ClientToken with the same image: never looked up by
    # name, so an image someone else registered under the run's name is never taken for the run's
    # copy (EC2 refuses the name instead).
    if not copy_slots.take(region, event.run_id, ledger):
        raise CopySlotBusyError(
            f"waiting for a copy slot in {region}: the copy's slot was given back before it started; "
            f"the copy starts when one is free"
        )
    fresh = ledger.attempt(event.run_id, f"copy#{region}")[1]  # else an earlier attempt's copy may be older
    try:
        image_id = ec2.copy_image(
            source_region=event.source_image.region,
            source_image_id=event.source_image.image_id,
            name=event.image_name,
            description=event.description,
            client_token=client_token(event.run_id, region),
            tags={**event.tags, f"{TAG_PREFIX}source-image": event.source_image.image_id},
            completion_minutes=event.copy_completion_minutes,
            kms_key_id=_region_key(region) if event.encrypt else None,
        )
    except ThrottledError:
        raise  # retried soon, with the slot: a throttled answer may hide a copy that started
    except CopySlotBusyError:
        raise  # EC2's own copy quota is full (other tools' copies): retried later, with the slot
    except (AmiFactoryError, ClientError) as error:
        copy_slots.give_back(region, event.run_id, ledger)
        if isinstance(error, ClientError) and error_code(error) == "InvalidAMIName.Duplicate":
            raise NotMadeByRunError(
                f"{region} already has an image named {event.image_name}, and EC2 refused this run's copy "
                f"under that name ({error_text(error)}); nothing was copied there and that image is not taken "
                f"for the run's (it is not in the run's ledger). Rename or deregister it and re-run for {region}, "
                f"or start the run under another name"
            ) from error
        raise
    ledger.record(event.run_id, Made(region=region, kind="image", resource_id=image_id, role="image"))
    return ImageRef(region=region, image_id=image_id, fresh=fresh)


def start_launch_check(event: LaunchCheckInput) -> LaunchedInstance:
    """A small instance from the new image (tagged role=launch-check), in the Region's configured subnet
    or its default VPC. A retried step sends the same ClientToken, and EC2 answers with the instance
    it launched."""
    region = event.image.region
    ec2 = Ec2(region)
    settings = load_settings()
    try:
        instance_id, state = ec2.launch_instance(
            image_id=event.image.image_id,
            instance_type=settings.launch_check_instance_type,
            subnet_id=settings.launch_check_subnets.get(region),
            security_group_ids=[],
            instance_profile=None,
            client_token=client_token(event.run_id, f"launch-check/{region}"),
            imdsv2_only=event.imds_support is not None,  # boots as instances of the shared image will
            tags={
                "Name": f"AMI Factory launch check, run {event.run_id}",
                f"{TAG_PREFIX}managed": "true",
                RUN_TAG: event.run_id,
                ROLE_TAG: "launch-check",
            },
        )
    except ClientError as error:
        raise LaunchCheckFailedError(
            f"could not launch an instance from {event.image.image_id} in {region} ({error_text(error)}); "
            f"set LaunchCheckSubnets for Regions without a "
            f"default VPC"
        ) from error
    Ledger().record(event.run_id, Made(region=region, kind="instance", resource_id=instance_id, role="launch-check"))
    return LaunchedInstance(instance_id=instance_id, region=region, state=state)


def check_launch(event: CheckLaunchInput) -> LaunchedInstance:
    launched = event.launched.model_copy()
    ec2 = Ec2(launched.region)
    launched.state = ec2.instance_state(launched.instance_id)
    counted(launched, event.poll_seconds)
    if launched.state in ("stopping", "stopped", "shutting-down", "terminated"):
        raise LaunchCheckFailedError(
            f"the instance launched from the new image in {launched.region} ({launched.instance_id}) is "
            f"{launched.state}: the image does not boot. See the instance's system log"
        )
    system, instance = ec2.status_checks(launched.instance_id) if launched.state == "running" else ("", "")
    if "impaired" in (system, instance):
        raise LaunchCheckFailedError(
            f"the instance launched from the new image in {launched.region} ({launched.instance_id}) fails its "
            f"status checks (system {system}, instance {instance}): see its system log and screenshot"
        )
    launched.ready = (system, instance) == ("ok", "ok")
    progress = (
        "healthy" if launched.ready else f"{launched.state}, checks {system or 'pending'}/{instance or 'pending'}"
    )
    give_up_after(
        event.max_polls,
        launched.polls,
        progress,
        "healthy",
        f"the launch check instance {launched.instance_id} in {launched.region}",
        "look at its system log",
        limit="LaunchCheckMaxWaitSeconds",
    )
    return launched


def end_launch_check(event: EndLaunchCheckInput) -> LaunchedInstance:
    """Terminate the check instance: only one the run's ledger records as its launch check there."""
    launched = event.launched.model_copy()
    made = require_made(event.run_id, launched.region, launched.instance_id, "launch-check")
    try:
        Ec2(launched.region).terminate_instance(launched.instance_id)
    except (ClientError, AmiFactoryError) as error:
        # The image booted: a check instance that will not go never fails the Region. It stays in the
        # ledger as not removed, so Finalize, then the janitor's sweep, try again.
        logger.warning("could not terminate launch check %s: %s", launched.instance_id, error)
        return launched
    Ledger().removed(event.run_id, made)
    return launched


def _region_key(region: str) -> str:
    key = load_settings().kms_keys.get(region)
    if not key:  # ResolveRequest checked this; the deployment may have changed since
        raise EncryptionKeyError(
            f"the deployment's KmsKeyIds has no key for {region}: add a key ARN in {region} to KmsKeyIds"
        )
    return key


def share_image(event: ShareImageInput) -> ShareImageOutput:
    # Checked again here, not only in ResolveRequest: the state is data anyone with
    # StartExecution can shape, and sharing is the step that must never overreach.
    settings = load_settings()
    check_share_targets(event.share, settings)
    # The deployment's RequireApproval is held here too, whatever the state's flag says.
    if (event.approval or settings.require_approval) and Ledger().decision(event.run_id) != "approved":
        raise ApprovalMissingError(
            f"run {event.run_id} needs approval, and none was recorded through the DecideApproval function: "
            f"nothing is shared (a SendTaskSuccess of its own does not count)"
        )
    ec2 = Ec2(event.image.region)
    if event.imds_support:  # before anyone else may launch it
        ec2.require_imds_support(event.image.image_id, event.imds_support)
    # The accounts that copy the image into themselves need it, and its snapshots, shared with them:
    # the cells ResolveRequest recorded for the run (the ledger's, not the state's), in this Region.
    run = Ledger().run(event.run_id) if event.run_id else None
    cells = [cell.split("/", 1) for cell in (run.account_cells if run else ())]
    copying = sorted({account for account, region in cells if region == event.image.region})
    check_copy_accounts(copying, settings, own_account="")
    recipients = event.share.model_copy(
        update={"accounts": [*event.share.accounts, *(a for a in copying if a not in event.share.accounts)]}
    )
    ec2.add_launch_permissions(event.image.image_id, recipients)
    if event.share.snapshot_permissions or copying:
        image = ec2.describe_image(event.image.image_id)
        encrypted = any(m.get("Ebs", {}).get("Encrypted") for m in image.get("BlockDeviceMappings", []))
        if event.share.public and event.share.snapshot_permissions and encrypted:
            raise InvalidRequestError(
                f"image {event.image.image_id} has encrypted snapshots: they are never made public"
            )
        readers = recipients.accounts if event.share.snapshot_permissions else copying
        ec2.add_snapshot_permissions(
            snapshots_of(image), readers, event.share.public and event.share.snapshot_permissions
        )
    return ShareImageOutput(shared_with=recipients.describe())


def protect_image(event: ProtectImageInput) -> ProtectImageOutput:
    """Deprecation, then deregistration protection: the last calls of a Region, so nothing after them
    can fail and leave a protected image that the clean-up cannot remove."""
    ec2 = Ec2(event.image.region)
    deprecate_at = None
    if event.protection.deprecate_after_days:
        when = datetime.now(UTC) + timedelta(days=event.protection.deprecate_after_days)
        deprecate_at = when.strftime("%Y-%m-%dT%H:%M:00Z")
        ec2.enable_deprecation(event.image.image_id, deprecate_at)
    if event.protection.deregistration_protection:
        ec2.enable_deregistration_protection(event.image.image_id, event.protection.cooldown)
    return ProtectImageOutput(
        deprecate_at=deprecate_at, deregistration_protection=event.protection.deregistration_protection
    )


def publish_parameter(event: PublishParameterInput) -> PublishParameterOutput:
    """The Region's last step, once its image is complete: Windows fast launch if asked; then point
    the family's ``latest`` and the Region's launch templates at the image. Only the family's owner
    may (the first run to publish binds it; adopt_family takes it over), only forward (never to an
    image whose run started before the one it names), and what each replaces is recorded in the run's
    ledger first."""
    region = event.image.region
    made = require_made(event.run_id, region, event.image.image_id, "image")
    ledger = Ledger()
    asking = FamilyOwner(
        account=event.account_id,
        region=event.source_region,
        instance_id=event.instance_id,
        name=event.family_asked_as,
        run_id=event.run_id,
    )
    owner = ledger.claim_family(event.family, asking, adopt=event.adopt_family)
    if owner is not None:
        raise family_refusal(event.family, owner, asking)
    fast_launch = next((target for target in event.fast_launch if target.region == region), None)
    fast_launch_state = None
    if fast_launch is not None:  # recorded first: whatever answer is lost, removal turns it off
        ledger.fast_launch_asked(event.run_id, made)
        fast_launch_state = Ec2(region).enable_fast_launch(
            event.image.image_id, fast_launch.snapshot_count, fast_launch.max_parallel_launches
        )
    # Forward only: the image's own run (an earlier run's, when distributing its image) against the run
    # of the image latest names here, recorded by every publish (a concurrent run's included).
    origin_run = ledger.run(event.source_run_id or event.run_id)
    origin = utc_instant(origin_run.started) if origin_run else None
    holder = (
        ledger.claim_latest(event.family, region, origin, event.image.image_id, event.run_id)
        if origin
        else "an image of a run whose start the ledger does not know"
    )
    if holder:
        note = (
            f"latest and the launch templates stay on {holder} in {region}: this image's run "
            f"{event.source_run_id or event.run_id} started before it, and an older image never replaces a newer one"
        )
        logger.warning(note)
        return PublishParameterOutput(parameter_name=event.parameter_name, note=note, fast_launch=fast_launch_state)
    ssm = Ssm(region)
    ledger.record_parameter(event.run_id, region, event.parameter_name, ssm.parameter_value(event.parameter_name))
    version = ssm.put_image_parameter(
        event.parameter_name, event.image.image_id, f"Latest AMI Factory image ({event.image.image_id})"
    )
    templates = [
        new_template_version(event.run_id, event.image, t, ledger) for t in event.launch_templates if t.region == region
    ]
    return PublishParameterOutput(
        parameter_name=event.parameter_name, version=version, launch_templates=templates, fast_launch=fast_launch_state
    )


def new_template_version(
    run_id: str, image: ImageRef, target: LaunchTemplateTarget, ledger: Ledger
) -> LaunchTemplateVersionRef:
    """A version of the template with the image, based on its default version, and (set_default) made
    the default. The default it replaces is in the ledger first, and the version from EC2's answer, so
    the run's ending can take both back in a Region that fails; a retry sends the same ClientToken and
    gets the same version."""
    # Checked again here: the state is data anyone with StartExecution can shape.
    check_launch_templates([target], [image.region], load_settings())
    ec2 = Ec2(image.region)
    template_id = target.launch_template_id
    recorded = ledger.record_template_version(
        run_id,
        TemplateVersion(
            image.region, template_id, ec2.launch_template_default_version(template_id), image_id=image.image_id
        ),
    )
    number = ask_for_template_version(ec2, run_id, recorded)
    made = replace(recorded, version=number, made_default=target.set_default)
    ledger.template_version_made(run_id, made)
    if target.set_default:
        ec2.set_launch_template_default(template_id, number)
    return LaunchTemplateVersionRef(launch_template_id=template_id, version=number, default=target.set_default)
