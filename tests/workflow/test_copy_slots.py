"""Copy slots: one semaphore per destination Region in the run ledger, shared by every run, so that
many runs at once never ask EC2 for more copies into a Region than CopySlotsPerRegion."""

from __future__ import annotations

import io
import json
from typing import Any

from ami_factory_cli import cli
from ami_factory_local import Emulator
from tests.helpers import invoke, invoke_error, ledger_items, sample

TABLE = "ami-factory-local-LedgerTable"


def hold_slot(emu: Emulator, region: str, run_id: str, ended: bool) -> None:
    """Another run (its ledger record, running or ended) holds a copy slot in ``region``."""
    open_run(emu, run_id, ended)
    emu.client("dynamodb").update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"copy-slots#{region}"}, "sk": {"S": "slots"}},
        UpdateExpression="ADD holders :holder",
        ExpressionAttributeValues={":holder": {"SS": [run_id]}},
    )


def open_run(emu: Emulator, run_id: str, ended: bool = False) -> None:
    """Another run's ledger record (running, or ended)."""
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
    emu.client("dynamodb").put_item(TableName=TABLE, Item={key: {"S": value} for key, value in record.items()})


def holders(emu: Emulator, region: str) -> str:
    (slots,) = [item for item in ledger_items(emu) if item["pk"] == f"copy-slots#{region}"] or [{}]
    return slots.get("holders", "")


def release_after(emu: Emulator, region: str, run_id: str, seconds: float) -> list[float]:
    """The other run's copy settles ``seconds`` into the waiting branch's time (checked at each of the
    ledger reads the run and the sweep make); returns the virtual time it did, once it has."""
    start = emu.clock.now()
    released: list[float] = []

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
        released.append(emu.clock.now())

    emu.world.after_call("GetItem", maybe_release)
    return released


def slot_waits(history: list[dict[str, Any]]) -> list[str]:
    """What each copy's wait for a slot said when it found none free (its Lambda's answer)."""
    answers = [
        json.loads(event["taskSubmittedEventDetails"]["output"])["Payload"]
        for event in history
        if event["type"] == "TaskSubmitted"
    ]
    return [answer["message"] for answer in answers if answer.get("waiting")]


def slot_retries(history: list[dict[str, Any]]) -> list[str]:
    """The messages of CopyImage attempts retried later for a slot (EC2's own copy quota full)."""
    causes = [
        json.loads(event["taskFailedEventDetails"]["cause"])
        for event in history
        if event["type"] == "TaskFailed" and "CopySlotBusyError" in event["taskFailedEventDetails"].get("cause", "")
    ]
    return [cause["errorMessage"] for cause in causes]


def copy_waited(emu: Emulator, region: str) -> float:
    """How long ``region``'s copy waited for its slot (virtual seconds): ap-southeast-2's copy took a
    free slot at once, and both Regions' items begin together."""
    return copied_at(emu, region) - copied_at(emu, "ap-southeast-2")


def copied_at(emu: Emulator, region: str) -> float:
    (at,) = [request.at for request in emu.world.sent("CopyImage", region)]
    return at


def test_a_copy_waits_for_a_free_slot_says_so_and_then_goes_on(make_emulator) -> None:
    """The other run's slot is given back by a write that does not hand it on (a lost hand-off): the
    fallback sweep hands it to the waiting copy at its next firing (every 10 minutes)."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "other-run", ended=False)
    released = release_after(emu, "eu-west-1", "other-run", seconds=600)
    seen_at_share: dict[str, str] = {}

    def at_share() -> None:  # each Region shares its image once its copy has settled, before Finalize
        region = emu.world.sent("ModifyImageAttribute")[-1].region
        seen_at_share[region] = holders(emu, region)
        emu.world.after_call("ModifyImageAttribute", at_share)

    emu.world.after_call("ModifyImageAttribute", at_share)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="waits")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    assert slot_waits(result.history) == [
        "waiting for a copy slot in eu-west-1: 1 copies of AMI Factory runs are in flight there "
        "(CopySlotsPerRegion); the copy starts when one settles"
    ], "said once, by the copy that found none free; ap-southeast-2 took its slot at once"
    assert slot_retries(result.history) == [], "a waiting copy is handed its slot, never retried"
    (free_at,) = released
    assert free_at <= copied_at(emu, "eu-west-1") <= free_at + 600, "at the first sweep after the slot came free"
    assert copy_waited(emu, "eu-west-1") > 0
    by_name = [request for request in emu.world.sent("DescribeImages", "eu-west-1") if "Filters" in request.params]
    assert by_name == [], "no attempt looks an image up by name: the ClientToken finds an earlier attempt's copy"
    copies = {request.region for request in emu.world.sent("CopyImage")}
    assert copies == {"eu-west-1", "ap-southeast-2"}, "one copy per Region, each once it had its slot"
    assert seen_at_share["eu-west-1"] == seen_at_share["ap-southeast-2"] == "", "given back as the copy settled"
    assert holders(emu, "eu-west-1") == holders(emu, "ap-southeast-2") == ""
    slot_items = {item["pk"] for item in ledger_items(emu) if item["pk"].startswith("copy-slots#")}
    assert slot_items == {"copy-slots#eu-west-1", "copy-slots#ap-southeast-2"}, "giving back none writes none"
    assert not [item for item in ledger_items(emu) if item["pk"] == "wait"], "no wait is left in the queue"


def test_a_copy_waits_for_its_slot_through_five_waves_of_copies(make_emulator) -> None:
    """One firing over 100 instances with 20 slots copies in five waves: the last wave's copies wait
    three hours (four waves of 45-minute copies) for a slot, and must not fail their Region meanwhile."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "other-run", ended=False)
    release_after(emu, "eu-west-1", "other-run", seconds=3 * 3600)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="waits-long")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.output
    assert len(slot_waits(result.history)) == 1 and slot_retries(result.history) == []
    again = emu.run(sample("request-basic.json", instance_id=instance_id), name="waits-none")
    assert again.output["status"] == "SUCCEEDED" and slot_waits(again.history) == []
    assert len(result.history) == len(again.history), "three hours of waiting cost no more history than none"


def test_a_slot_of_a_run_that_has_ended_is_freed_by_the_fallback_sweep(make_emulator) -> None:
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "crashed-run", ended=True)
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="frees")
    assert result.output["status"] == "SUCCEEDED" and len(slot_waits(result.history)) == 1
    assert 0 < copy_waited(emu, "eu-west-1") <= 600, "at the sweep's first firing"
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


def test_the_cli_says_that_a_copy_waits_for_a_slot(make_emulator) -> None:
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


def test_a_copy_ec2_refuses_for_its_quota_waits_with_its_slot(emu: Emulator) -> None:
    """Other tools (or stacks) may fill EC2's copy quota into a Region (ResourceLimitExceeded): the
    copy started nothing, so it keeps its slot and tries again every 6 minutes (up to 4 hours)
    instead of failing its Region after two minutes of throttling retries."""
    emu.world.refuse("CopyImage", times=8, region="eu-west-1", code="ResourceLimitExceeded")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="quota")
    assert result.output["status"] == "SUCCEEDED", result.output
    retries = slot_retries(result.history)
    assert len(retries) == 8 and all("EC2's copy quota into eu-west-1 is full" in message for message in retries)
    assert holders(emu, "eu-west-1") == ""


def test_a_slot_given_back_goes_to_the_copy_that_has_waited_longest(make_emulator) -> None:
    """The Region's queue is first come, first served: a copy whose wait began again (its first step
    retried, with a new token) keeps its place, and is handed the slot under its newest token."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    hold_slot(emu, "eu-west-1", "holder", ended=False)

    def await_slot(run_id: str, token: str) -> dict[str, Any]:
        return invoke(emu, "AwaitCopySlot", {"run_id": run_id, "region": "eu-west-1", "task_token": token})

    for run_id in ("zulu", "yankee", "xray"):
        open_run(emu, run_id)

    # Queued in this order, the reverse of their names.
    answers = [await_slot(run_id, f"token-{run_id}") for run_id in ("zulu", "yankee", "xray")]
    assert [answer["waiting"] for answer in answers] == [True, True, True]
    assert answers[0]["message"].startswith("waiting for a copy slot in eu-west-1: 1 copies")
    assert await_slot("yankee", "token-yankee-again")["waiting"] is True
    assert emu.world.sent("SendTaskSuccess") == [], "no slot was free"

    def slot_comes_free(run_id: str) -> list[str]:  # given back without a hand-off: the sweep hands it on
        emu.client("dynamodb").update_item(
            TableName=TABLE,
            Key={"pk": {"S": "copy-slots#eu-west-1"}, "sk": {"S": "slots"}},
            UpdateExpression="DELETE holders :holder",
            ExpressionAttributeValues={":holder": {"SS": [run_id]}},
        )
        invoke(emu, "SettleWait", {"sweep": True})
        return [request.params["taskToken"] for request in emu.world.sent("SendTaskSuccess")]

    assert slot_comes_free("holder") == ["token-zulu"] and holders(emu, "eu-west-1") == "zulu"
    assert slot_comes_free("zulu") == ["token-zulu", "token-yankee-again"]
    assert holders(emu, "eu-west-1") == "yankee"
    queued = [item["sk"] for item in ledger_items(emu) if item["pk"] == "wait"]
    assert queued == ["eu-west-1#copy-slot/xray"]


def test_a_slot_whose_copy_never_started_is_given_back_when_the_run_ends(emu: Emulator) -> None:
    """The hand-off took the slot, then CopyImage failed for good (throttled past its retries): no copy
    is recorded, and the run's ending still gives the slot back, not a sweep some time later."""
    emu.world.throttle("CopyImage", times=50, region="eu-west-1")
    holders_at_end: list[str] = []
    emu.world.after_call("Publish", lambda: holders_at_end.append(holders(emu, "eu-west-1")))
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="never-copied")
    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"], [
        region.get("error") for region in result.output["regions"]
    ]
    assert holders_at_end == [""], "given back by Finalize, before it told anyone"
    assert emu.world.sent("CopyImage", "eu-west-1") != [] and holders(emu, "eu-west-1") == ""


def test_only_an_open_run_may_wait_for_a_copy_slot(emu: Emulator) -> None:
    """Whoever may invoke AwaitCopySlot could queue invented runs to fill a Region's slots (the sweep
    frees those only at its next firing), or an ended run's: each is refused, leaving nothing behind."""
    open_run(emu, "over", ended=True)
    for run_id in ("invented", "over"):
        error = invoke_error(emu, "AwaitCopySlot", {"run_id": run_id, "region": "eu-west-1", "task_token": "t"})
        assert error["errorType"] == "NotMadeByRunError" and run_id in error["errorMessage"]
    assert holders(emu, "eu-west-1") == ""
    assert [item for item in ledger_items(emu) if item["pk"] == "wait" or item["sk"].startswith("slot#")] == []


def test_a_hand_off_step_functions_refuses_does_not_fail_the_step_giving_its_slot_back(make_emulator) -> None:
    """CopyImage is refused (UnauthorizedOperation) and gives its slot back; handing it to the waiting
    copy meets a throttled SendTaskSuccess. The step still fails with EC2's refusal (not as throttled,
    which would retry it and take the slot again), and the sweep hands the slot on."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    instance_id = emu.launch_instance(name="web")
    request = sample("request-basic.json", instance_id=instance_id)
    plan = invoke(
        emu, "ResolveRequest", {"request": request, "run_id": "run-7", "state_machine_arn": emu.state_machine_arn}
    )
    source = invoke(emu, "CreateImage", plan)
    mine = invoke(emu, "AwaitCopySlot", {"run_id": "run-7", "region": "eu-west-1", "task_token": "token-7"})
    open_run(emu, "other")
    theirs = invoke(emu, "AwaitCopySlot", {"run_id": "other", "region": "eu-west-1", "task_token": "token-other"})
    assert (mine["waiting"], theirs["waiting"]) == (False, True) and holders(emu, "eu-west-1") == "run-7"
    emu.world.refuse("CopyImage", times=1, region="eu-west-1")
    emu.world.refuse("SendTaskSuccess", times=1, code="ThrottlingException")
    item = {**plan, "region": {"name": "eu-west-1", "is_source": False}, "source_image": source}
    error = invoke_error(emu, "CopyImage", item)
    assert error["errorType"] == "ClientError" and "UnauthorizedOperation" in error["errorMessage"], error
    assert holders(emu, "eu-west-1") == "other", "taken for the waiting copy before its task was told"
    invoke(emu, "SettleWait", {"sweep": True})
    told = [request.params["taskToken"] for request in emu.world.sent("SendTaskSuccess")]
    assert told[-1] == "token-other", told


def test_a_run_that_ends_while_its_copy_queues_leaves_no_wait_to_hand_a_slot_to(emu: Emulator) -> None:
    """The janitor ends the run between AwaitCopySlot's check and its queueing: the wait it just
    recorded is dropped again, so no hand-off takes a slot for a run that has ended."""
    open_run(emu, "ending")

    def janitor_ends_it() -> None:  # right after the run's slot Region is noted, before it queues
        emu.client("dynamodb").update_item(
            TableName=TABLE,
            Key={"pk": {"S": "run#ending"}, "sk": {"S": "run"}},
            UpdateExpression="SET ended = :true",
            ExpressionAttributeValues={":true": {"S": "true"}},
        )

    emu.world.after_call("PutItem", janitor_ends_it)
    error = invoke_error(emu, "AwaitCopySlot", {"run_id": "ending", "region": "eu-west-1", "task_token": "t"})
    assert error["errorType"] == "NotMadeByRunError" and "ended while its copy queued" in error["errorMessage"]
    assert [item for item in ledger_items(emu) if item["pk"] == "wait"] == []
    assert holders(emu, "eu-west-1") == ""


def queue_once_the_run_holds(emu: Emulator, region: str, run_id: str, waiter: str) -> list[str]:
    """Another run's copy queues for ``region``'s one slot as soon as ``run_id`` holds it (looked at
    after each Lambda invocation); returns the waiter's answers."""
    answers: list[str] = []

    def maybe_queue() -> None:
        if answers:
            return
        if holders(emu, region) != run_id:
            emu.world.after_call("Invoke", maybe_queue)
            return
        open_run(emu, waiter)
        payload = {"run_id": waiter, "region": region, "task_token": f"token-{waiter}"}
        answers.append(json.dumps(invoke(emu, "AwaitCopySlot", payload)))

    emu.world.after_call("Invoke", maybe_queue)
    return answers


def test_a_run_that_ends_holding_a_slot_hands_it_to_the_copy_that_waits(make_emulator) -> None:
    """The run's copy never starts (throttled past its retries): its ending gives the slot back and
    hands it to the other run's waiting copy at once (Finalize's SendTaskSuccess), not at a sweep."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    emu.world.throttle("CopyImage", times=50, region="eu-west-1")
    answers = queue_once_the_run_holds(emu, "eu-west-1", "holder", "waiter")
    instance_id = emu.launch_instance(name="web")

    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="holder")

    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"]
    assert json.loads(answers[0])["waiting"] is True
    handed = [request.params["taskToken"] for request in emu.world.sent("SendTaskSuccess")]
    assert "token-waiter" in handed
    assert holders(emu, "eu-west-1") == "waiter"
    used = {action for role, action, _ in emu.authorizer.used if role == "FinalizeFunctionRole"}
    assert "states:SendTaskSuccess" in used


def test_a_copy_ec2_refuses_for_good_hands_its_slot_to_the_copy_that_waits(make_emulator) -> None:
    """The CopyImage step gives back the slot EC2's refusal leaves unused and hands it on itself
    (ending the waiter's wait and dropping its record), before its Region fails."""
    emu: Emulator = make_emulator(CopySlotsPerRegion="1")
    emu.world.refuse("CopyImage", times=1, region="eu-west-1", code="UnauthorizedOperation")
    answers = queue_once_the_run_holds(emu, "eu-west-1", "refused", "waiter")
    instance_id = emu.launch_instance(name="web")

    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="refused")

    assert result.output["status"] == "PARTIAL" and result.output["failed_regions"] == ["eu-west-1"]
    assert json.loads(answers[0])["waiting"] is True
    assert holders(emu, "eu-west-1") == "waiter"
    assert not [item for item in ledger_items(emu) if item["pk"] == "wait" and "waiter" in item["sk"]]
    used = {action for role, action, _ in emu.authorizer.used if role == "CopyImageFunctionRole"}
    assert {"states:SendTaskSuccess", "dynamodb:DeleteItem"} <= used
