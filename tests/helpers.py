"""What the tests share: the deployment they test against, the samples users copy, and small
readers of the emulator's end state. Fixtures live in conftest.py; everything else lives here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ami_factory.settings import Settings
from ami_factory_local import Emulator

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
ALLOWED_ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
ALLOWED_OU = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-ab12-cdef3456"
ALLOWED_ORG = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
TEST_PARAMETERS = {
    "AllowedShareAccounts": ALLOWED_ACCOUNT,
    "AllowedShareOUs": ALLOWED_OU,
    "AllowedShareOrganizations": ALLOWED_ORG,
    "PollIntervalSeconds": "60",
    "MaxWaitSeconds": "7200",
}
# The same deployment as settings, for the rules that take them directly.
SETTINGS = Settings(
    region="us-east-1",
    default_regions=("eu-west-1",),
    allowed_regions=(),
    allowed_accounts=(ALLOWED_ACCOUNT,),
    allowed_organizations=(),
    allowed_organizational_units=(ALLOWED_OU,),
    allow_public=False,
    image_name_prefix="ami-factory",
    parameter_prefix="/ami-factory",
    poll_seconds=60,
    max_wait_seconds=3600,
    generalize_max_wait_seconds=1800,
    sdk_max_attempts=5,
    sdk_retry_mode="adaptive",
    trigger_tag_key="ami-factory:create",
    schedule_tag_key="ami-factory:schedule",
    state_machine_arn="",
)


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """A request from events/, as a user would paste it, with the fields a test must change."""
    request: dict[str, Any] = json.loads((EVENTS / name).read_text())
    request.update(changes)
    return request


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def instance(emu: Emulator, instance_id: str) -> dict[str, Any]:
    described: dict[str, Any] = emu.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]
    return described


def run_images(emu: Emulator, region: str, run_id: str) -> list[dict[str, Any]]:
    """The images a run made in a Region, found by its tag."""
    found: list[dict[str, Any]] = emu.client("ec2", region).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:ami-factory:run", "Values": [run_id]}]
    )["Images"]
    return found


def nothing_was_changed(emu: Emulator) -> None:
    """No call that changes anything reached EC2, but the test's own launch."""
    mutating = {op for op in emu.world.calls("ec2") if not op.startswith(("Describe", "Get"))} - {
        "RunInstances",
        "RegisterImage",
    }
    assert mutating == set(), f"nothing may change, sent {mutating}"
