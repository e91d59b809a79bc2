"""Preparing the instance through SSM: the optional clean-up, and generalizing (sysprep on Windows,
sanitize on Linux) on a temporary clone or in place."""

from __future__ import annotations

from botocore.exceptions import ClientError

from .aws import Ec2, Ssm, error_text
from .commands import GENERALIZE_COMMENT, cleanup_command, generalize_command
from .contracts import (
    CheckCloneInput,
    CommandRef,
    GeneralizeInput,
    GeneralizeRef,
    ImageRef,
    LaunchCloneInput,
    LaunchedInstance,
    Plan,
)
from .errors import CloneLaunchError, CommandFailedError, NotMadeByRunError, UnsupportedInstanceError
from .ledger import Ledger, Made
from .rules import ROLE_TAG, check_clone_profile
from .settings import load_settings
from .steps import client_token, counted, create_image_once, give_up_after, require_made

FAILED_COMMAND_STATES = frozenset(
    {"Failed", "Cancelled", "TimedOut", "Cancelling", "DeliveryTimedOut", "ExecutionTimedOut"}
)
# Script failures; a command that timed out once its instance shut down is what sysprep looks like.
SCRIPT_FAILED_STATES = frozenset({"Failed", "Cancelled", "Cancelling"})


def run_cleanup(plan: Plan) -> CommandRef:
    """Temp files and caches go before the image is taken, for specialized images too."""
    command = cleanup_command(plan.platform, load_settings())
    command_id = Ssm(plan.source_region).send_command(
        plan.instance_id, command.document, command.parameters, f"ami-factory clean-up, run {plan.run_id}"
    )
    return CommandRef(command_id=command_id, instance_id=plan.instance_id, region=plan.source_region)


def look_at_command(command: CommandRef) -> CommandRef:
    """The clean-up command's wait, one look: its status as SSM reports it (``Success`` ends the wait;
    a failed command fails it, and nothing is imaged)."""
    command = command.model_copy(
        update={"status": Ssm(command.region).command_status(command.command_id, command.instance_id)}
    )
    if command.status in FAILED_COMMAND_STATES:
        raise CommandFailedError(
            f"command {command.command_id} on instance {command.instance_id} ended {command.status}; its output is "
            f"in SSM Run Command history. Nothing was imaged"
        )
    return command


def create_seed_image(plan: Plan) -> ImageRef:
    """Mode generalize: a no-reboot image of the instance, only to launch the clone from; removed when the run ends."""
    tags = {**plan.tags, "Name": plan.seed_image_name, ROLE_TAG: "seed"}
    description = f"AMI Factory seed for the clone of run {plan.run_id}; removed when the run ends"
    return create_image_once(
        plan.source_region,
        plan.instance_id,
        plan.seed_image_name,
        description,
        True,
        tags,
        made_for=(plan.run_id, "seed"),
    )


def launch_clone(event: LaunchCloneInput) -> LaunchedInstance:
    """The clone the generalize command runs on: the instance's type, subnet and groups unless the
    request overrides them, and the stack's own instance profile (what SSM needs) unless the request
    names an allowed one: never the source's, whose role may hold far more. A retried step sends the
    same ClientToken, and EC2 answers with the clone it launched."""
    require_made(event.run_id, event.source_region, event.seed.image_id, "seed")
    settings = load_settings()
    check_clone_profile(event.clone_overrides, settings)  # again: the state is data
    ec2 = Ec2(event.source_region)
    source = ec2.describe_instance(event.instance_id)
    overrides = event.clone_overrides
    try:
        instance_id, state = ec2.launch_instance(
            image_id=event.seed.image_id,
            instance_type=overrides.instance_type or source["InstanceType"],
            subnet_id=overrides.subnet_id or source.get("SubnetId"),
            security_group_ids=overrides.security_group_ids or [group["GroupId"] for group in source["SecurityGroups"]],
            instance_profile=overrides.instance_profile or settings.clone_instance_profile,
            client_token=client_token(event.run_id, "clone"),
            tags={**event.tags, "Name": f"{event.family} clone (AMI Factory run {event.run_id})", ROLE_TAG: "clone"},
        )
    except ClientError as error:
        raise CloneLaunchError(
            f"EC2 refused to launch the clone of {event.instance_id} ({error_text(error)}). The clone takes the instance's type, subnet "
            f"and security groups and the stack's clone profile unless clone.instance_type, clone.subnet_id, "
            f"clone.security_group_ids or clone.instance_profile say otherwise (groups must be in the subnet's VPC)"
        ) from error
    Ledger().record(
        event.run_id, Made(region=event.source_region, kind="instance", resource_id=instance_id, role="clone")
    )
    return LaunchedInstance(instance_id=instance_id, region=event.source_region, state=state)


def check_clone(event: CheckCloneInput) -> LaunchedInstance:
    clone = event.clone.model_copy()
    clone.state = Ec2(clone.region).instance_state(clone.instance_id)
    counted(clone, event.poll_seconds)
    if clone.state in ("stopping", "stopped", "shutting-down", "terminated"):
        raise UnsupportedInstanceError(
            f"the clone {clone.instance_id} is {clone.state} before it was generalized: see its system log in the EC2 "
            f"console. It is terminated and nothing is imaged"
        )
    if clone.state == "running":
        info = Ssm(clone.region).instance_information(clone.instance_id)
        clone.ready = info is not None and info.get("PingStatus") == "Online"
    progress = "ready" if clone.ready else f"{clone.state} and not yet reachable through SSM"
    give_up_after(
        event.max_polls,
        clone.polls,
        progress,
        "ready",
        f"clone {clone.instance_id}",
        "check that its instance profile allows SSM and its subnet reaches the SSM endpoints (NAT or VPC "
        "endpoints); the clone.instance_profile and clone.subnet_id request fields override the defaults",
        limit="GeneralizeMaxWaitSeconds",
    )
    return clone


def generalize(event: GeneralizeInput) -> GeneralizeRef:
    """Send sysprep (Windows) or sanitize (Linux) to the clone, or to the instance itself in place."""
    if event.clone:
        require_made(event.run_id, event.source_region, event.clone.instance_id, "clone")
    elif event.mode != "generalize-in-place":
        raise NotMadeByRunError(
            f"mode {event.mode} has no clone to generalize, and only mode generalize-in-place generalizes the instance"
        )
    target = event.clone.instance_id if event.clone else event.instance_id
    command = generalize_command(event.platform, event.windows, load_settings())
    command_id = Ssm(event.source_region).send_command(
        target, command.document, command.parameters, f"{GENERALIZE_COMMENT}, run {event.run_id}"
    )
    return GeneralizeRef(command_id=command_id, instance_id=target, region=event.source_region)


def look_at_generalize(command: GeneralizeRef) -> GeneralizeRef:
    """Generalizing's wait, one look: done when the instance has shut itself down, and the command did
    not fail on the way. The command's own status may never say Success, because the shutdown stops
    the agent reporting it."""
    command = command.model_copy(
        update={
            "instance_state": Ec2(command.region).instance_state(command.instance_id),
            "status": Ssm(command.region).command_status(command.command_id, command.instance_id),
        }
    )
    stopped = command.instance_state == "stopped"
    if command.status in SCRIPT_FAILED_STATES or (command.status in FAILED_COMMAND_STATES and not stopped):
        raise CommandFailedError(
            f"the generalize command {command.command_id} on instance {command.instance_id} ended {command.status}"
            f"{' and the instance shut down anyway' if stopped else ''}: it did not complete, so nothing is imaged. "
            f"Its output is in SSM Run Command history"
        )
    if command.instance_state in ("shutting-down", "terminated"):
        raise UnsupportedInstanceError(f"instance {command.instance_id} is {command.instance_state} while generalizing")
    return command
