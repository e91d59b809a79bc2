"""Copy slots: one semaphore per destination Region in the run ledger, shared by every run, so that
many runs at once never ask EC2 for more copies into a Region than CopySlotsPerRegion."""

from __future__ import annotations

import io
import json
from typing import Any

from ami_factory_cli import cli
from ami_factory_local import Emulator
from tests.helpers import ledger_items, sample

TABLE = "ami-factory-local-LedgerTable"


def hold_slot(emu: Emulator, region: str, run_id: str, ended: bool) -> None:
    """Another run (its ledger record, running or ended) holds a copy slot in ``region``."""
    db = emu.client("dynamodb")
    record = {
        "pk": f"run#{run_id}",
        "sk": "run",
        "instance_id": "i-0123456789abcdef0",
        "region": "us-east-1",
        "image_name": "other",
        "ended": "true" if ended else "false",
        "finalizing": "false",
        "delivered": "",
    }
    db.put_item(TableName=TABLE, Item={key: {"S": value} for key, value in record.items()})
    db.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"copy-slots#{region}"}, "sk": {"S": "slots"}},
        UpdateExpression="ADD holders :holder",
        ExpressionAttributeValues={":holder": {"SS": [run_id]}},
    )


def holders(emu: Emulator, region: str) -> str:
    (slots,) = [item for item in ledger_items(emu) if item["pk"] == f"copy-slots#{region}"] or [{}]
    return slots.get("holders", "")


def release_after(emu: Emulator, region: str, run_id: str, seconds: float) -> None:
    """The other run's copy settles ``seconds`` into the waiting branch's time (checked at each of the
    ledger reads its attempts make)."""
    start = emu.clock.now()

    def maybe_release() -> None:
        if emu.clock.now() - start < seconds:
            emu.world.after_call("GetItem", maybe_release)
            return
        emu.client("dynamodb").update_item(
            TableName=TABLE,
            Key={"pk": {"S": f"copy-slots#{region}"}, "sk": {"S": "slots"}},
            UpdateExpression="DELETE holders :holder",
            ExpressionAttributeValues={":holder": {"SS": [run_id]}},
        )

    emu.world.after_call("GetItem", maybe_release)


def slot_waits(history: list[dict[str, Any]]) -> list[str]:
    causes = [
        json.loads(event["taskFailedEventDetails"]["cause"])
        for event in history
        if event["type"] == "TaskFailed" and "CopySlotBusyError" in event["taskFailedEventDetails"].get("cause", "")
    ]
    return [cause["errorMessage"] for cause in causes]


def test_a_copy_waits_for_a_free_slot_says_so_and_then_goes_on(make_emulator) -> None:
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "other-run", ended=False)
    release_after(emu, "eu-west-1", "other-run", seconds=600)
    seen_at_share: dict[str, str] = {}

    def at_share() -> None:  # each Region shares its image once its copy has settled, before Finalize
        region = emu.world.sent("ModifyImageAttribute")[-1].region
        seen_at_share[region] = holders(emu, region)
        emu.world.after_call("ModifyImageAttribute", at_share)

    emu.world.after_call("ModifyImageAttribute", at_share)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="waits")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    waits = slot_waits(result.history)
    assert waits and all(message.startswith("waiting for a copy slot in eu-west-1: 1 copies") for message in waits)
    assert len(waits) == 3, "tried at once, then every 6 minutes until the other copy settled 10 minutes on"
    by_name = [request for request in emu.world.sent("DescribeImages", "eu-west-1") if "Filters" in request.params]
    assert by_name == [], "no attempt looks an image up by name: the ClientToken finds an earlier attempt's copy"
    copies = {request.region for request in emu.world.sent("CopyImage")}
    assert copies == {"eu-west-1", "ap-southeast-2"}, "one copy per Region, each once it had its slot"
    assert seen_at_share["eu-west-1"] == seen_at_share["ap-southeast-2"] == "", "given back as the copy settled"
    assert holders(emu, "eu-west-1") == holders(emu, "ap-southeast-2") == ""
    slot_items = {item["pk"] for item in ledger_items(emu) if item["pk"].startswith("copy-slots#")}
    assert slot_items == {"copy-slots#eu-west-1", "copy-slots#ap-southeast-2"}, "giving back none writes none"


def test_a_copy_waits_for_its_slot_through_five_waves_of_copies(make_emulator) -> None:
    """One firing over 100 instances with 20 slots copies in five waves: the last wave's copies wait
    three hours (four waves of 45-minute copies) for a slot, and must not fail their Region meanwhile."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "other-run", ended=False)
    release_after(emu, "eu-west-1", "other-run", seconds=3 * 3600)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="waits-long")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.output
    assert len(slot_waits(result.history)) == 31, "tried at once, then every 6 minutes for three hours"


def test_a_slot_of_a_run_that_has_ended_is_freed_by_the_next_copy(make_emulator) -> None:
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "crashed-run", ended=True)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="frees")
    assert result.output["status"] == "SUCCEEDED" and slot_waits(result.history) == []
    assert holders(emu, "eu-west-1") == ""


def test_a_failed_or_refused_copy_gives_its_slot_back(emu: Emulator) -> None:
    emu.world.images_fail("eu-west-1")
    emu.world.refuse("CopyImage", times=1, region="ap-southeast-2", code="UnauthorizedOperation")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="fails")
    assert result.output["status"] == "PARTIAL"
    assert {region["region"]: region["status"] for region in result.output["regions"]} == {
        "us-east-1": "AVAILABLE",
        "eu-west-1": "FAILED",
        "ap-southeast-2": "FAILED",
    }
    assert holders(emu, "eu-west-1") == holders(emu, "ap-southeast-2") == ""


def test_the_cli_says_once_that_a_copy_waits_for_a_slot(make_emulator) -> None:
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "other-run", ended=False)
    release_after(emu, "eu-west-1", "other-run", seconds=600)
    instance_id = emu.launch_instance(name="web")
    execution_arn = emu.start_run(sample("request-basic.json", instance_id=instance_id), name="followed")
    out = io.StringIO()
    described = cli.follow(emu.client("stepfunctions"), execution_arn, out, poll_seconds=0.01)
    assert described["status"] == "SUCCEEDED"
    said = [line for line in out.getvalue().splitlines() if "copy slot" in line]
    assert said == [
        "  [eu-west-1] waiting for a copy slot in eu-west-1: 1 copies of AMI Factory runs are in flight there "
        "(CopySlotsPerRegion); the copy starts when one settles"
    ]


def test_a_copy_ec2_refuses_for_its_quota_waits_like_one_without_a_slot(emu: Emulator) -> None:
    """Other tools (or stacks) may fill EC2's copy quota into a Region (ResourceLimitExceeded): the
    copy started nothing, so it gives its slot back and waits as for a slot (every 6 minutes, up to 2
    hours) instead of failing its Region after two minutes of throttling retries."""
    emu.world.refuse("CopyImage", times=8, region="eu-west-1", code="ResourceLimitExceeded")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="quota")
    assert result.output["status"] == "SUCCEEDED", result.output
    waits = slot_waits(result.history)
    assert len(waits) == 8 and all("EC2's copy quota into eu-west-1 is full" in message for message in waits)
    assert holders(emu, "eu-west-1") == ""
