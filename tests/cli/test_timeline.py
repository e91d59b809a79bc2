"""``ami_factory_cli timeline``: a run drawn per Region from its execution history (the emulator's
history carries virtual time, so a 45-minute copy shows as one)."""

from __future__ import annotations

import io

from ami_factory_cli import cli
from ami_factory_local import Emulator
from tests.helpers import sample


def test_a_run_is_drawn_per_region_with_its_waits_where_the_time_went(emu: Emulator) -> None:
    emu.world.images_take(20 * 60)
    emu.world.images_take(45 * 60, region="eu-west-1")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="drawn")
    assert result.output["status"] == "SUCCEEDED", result.cause
    (execution,) = emu.client("stepfunctions").list_executions(stateMachineArn=emu.state_machine_arn)["executions"]
    out = io.StringIO()

    assert cli.timeline(cli.parser().parse_args(["timeline", execution["executionArn"]]), out) == 0

    title, header, *rows = out.getvalue().splitlines()
    assert title == "execution drawn: SUCCEEDED"
    assert header.split()[:4] == ["step", "start", "took", "0"] and header.endswith("1h05m")
    steps = [(row.split()[0], row.split()[1], row.split()[3]) for row in rows]
    # The run's own steps first, in the order they ran; then each Region's, by name.
    assert [step for step in steps if step[0] == "run"][:5] == [
        ("run", "ResolveRequest", "0m00s"),
        ("run", "PrepareInstance", "0m00s"),
        ("run", "CreateImage", "0m00s"),
        ("run", "WaitForImage", "20m05s"),  # EC2's 20 minutes, and its event's 5 seconds
        ("run", "RestoreInstance", "0m00s"),
    ]
    assert [step for step in steps if step[0] == "eu-west-1"] == [
        ("eu-west-1", "WaitForCopySlot", "0m00s"),
        ("eu-west-1", "CopyImage", "0m00s"),
        ("eu-west-1", "WaitForCopy", "45m05s"),
        ("eu-west-1", "ShareImage", "0m00s"),
        ("eu-west-1", "PublishParameter", "0m00s"),
    ]
    assert [row for row, _, _ in steps if row != "run"] == sorted(row for row, _, _ in steps if row != "run")
    assert ("ap-southeast-2", "WaitForCopy", "20m05s") in steps and ("us-east-1", "ShareImage", "0m00s") in steps
    # The bars share one axis: both copies start where the image became available.
    (eu_bar,) = [row[row.index("|") :] for row in rows if row.split()[:2] == ["eu-west-1", "WaitForCopy"]]
    (sydney_bar,) = [row[row.index("|") :] for row in rows if row.split()[:2] == ["ap-southeast-2", "WaitForCopy"]]
    assert eu_bar.index("█") == sydney_bar.index("█") > 1
    assert eu_bar.count("█") > sydney_bar.count("█")
