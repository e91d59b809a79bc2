"""What the steps of every stage share: the bound on waits, idempotent creation, and which
instances still count. Stages (preflight, generalize, workflow, distribution) import from here,
never from one another."""

from __future__ import annotations

import hashlib

from .aws import Ec2
from .contracts import ImageRef
from .errors import WaitTimeoutError
from .observability import logger

# Instances a run may still have to find or terminate (not shutting-down or terminated).
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


def give_up_after(
    max_polls: int, polls: int, state: str, wanted: str, what: str, advice: str, limit: str = "MaxWaitSeconds"
) -> None:
    """The bound on every wait loop: the state machine only loops while this does not raise."""
    if state != wanted and polls >= max_polls:
        raise WaitTimeoutError(f"{what} is still {state} after {polls} checks; raise {limit} or {advice}")


def client_token(run_id: str, scope: str) -> str:
    """An idempotency token (CopyImage per Region, RunInstances for the clone): a retry sends the same one."""
    return hashlib.sha256(f"{run_id}/{scope}".encode()).hexdigest()  # 64 characters, ClientToken's limit


def create_image_once(
    region: str, instance_id: str, name: str, description: str, no_reboot: bool, tags: dict[str, str]
) -> ImageRef:
    ec2 = Ec2(region)
    existing = ec2.find_image_by_name(name)
    if existing:
        logger.info("image %s already exists for this run; not creating another", existing["ImageId"])
        return ImageRef(region=region, image_id=existing["ImageId"], state=existing["State"])
    image_id = ec2.create_image(instance_id, name, description, no_reboot=no_reboot, tags=tags)
    return ImageRef(region=region, image_id=image_id)
