"""Image and copy waits end on EC2's own events (``EC2 AMI State Change``), forwarded to the stack's
Region by rules the stack makes in the Regions it copies to; a lost event is covered by the fallback
sweep, a duplicate or an event about anything else changes nothing, and a wait costs the same
history however long EC2 takes."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ami_factory.forwarding import rule_name
from ami_factory_local import Emulator
from ami_factory_local.events import AMI_STATE_CHANGE, INSTANCE_STATE_CHANGE
from tests.helpers import TEST_PARAMETERS, instance, ledger_items, run_images, sample

REQUEST_REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


def entered(result: Any) -> Counter[str]:
    return Counter(e["stateEnteredEventDetails"]["name"] for e in result.history if "stateEnteredEventDetails" in e)


def settled_results(emu: Emulator) -> list[tuple[str, dict[str, Any]]]:
    """What SettleWait returned, each time it ran (an event, or the fallback sweep)."""
    return [(name, out) for name, out in emu.runtime.results if name.endswith("SettleWaitFunction")]


def forwarding_rules(emu: Emulator) -> dict[str, list[dict[str, Any]]]:
    """Region -> the targets of the stack's AMI event forwarding rule there (Regions with one)."""
    found = {}
    for region in emu.client("ec2").describe_regions()["Regions"]:
        name = region["RegionName"]
        events = emu.client("events", name)
        rules = [r for r in events.list_rules(NamePrefix="ami-factory-local-")["Rules"] if "ami-events" in r["Name"]]
        if rules:
            (rule,) = rules
            # Named for the stack and its home Region: a stack of the same name at home elsewhere has its own.
            assert rule["Name"] == "ami-factory-local-us-east-1-ami-events"
            assert json.loads(rule["EventPattern"])["detail-type"] == [AMI_STATE_CHANGE]
            found[name] = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    return found


def run_basic(emu: Emulator, name: str, **changes: Any) -> Any:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id, **changes), name=name)
    assert result.status == "SUCCEEDED", result.cause
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    return result


def test_the_image_and_its_copies_end_on_ec2s_events_as_soon_as_they_come(emu: Emulator) -> None:
    emu.world.images_take(20 * 60)
    emu.world.images_take(45 * 60, region="eu-west-1")
    emu.world.images_take(45 * 60, region="ap-southeast-2")
    result = run_basic(emu, "evented")
    states = entered(result)
    assert states["WaitForImage"] == 1 and states["WaitForCopy"] == 2, "one wait each, no polling loop"
    ends = [summary for name, summary in settled_results(emu)]
    assert sorted(e["region"] for e in ends) == sorted(REQUEST_REGIONS) and all(e["ended"] for e in ends)
    # EC2's own critical path (20 + 45 minutes) and the events' few seconds: nothing waits on a timer.
    assert 65 * 60 <= emu.clock.elapsed() <= 65 * 60 + 30
    for region in REQUEST_REGIONS:
        (image,) = run_images(emu, region, "evented")
        ready_at = emu.world.image_lifetimes[image["ImageId"]][1]
        looks = [
            r
            for r in emu.world.sent("DescribeImages", region)
            if r.params.get("ImageIds") == [image["ImageId"]] and r.at < ready_at
        ]
        assert looks == [], "an image made a moment ago is not looked at before its event can have come"
    assert emu.failed_deliveries == [] and emu.runtime.refused_deliveries == []


def test_a_lost_event_is_covered_by_the_fallback_sweep(emu: Emulator) -> None:
    emu.world.images_take(25 * 60)
    emu.world.events.lose(AMI_STATE_CHANGE, times=1)  # the image's
    result = run_basic(emu, "lost", regions=[])
    sweeps = [out for _, out in settled_results(emu) if "settled" in out]
    assert sweeps[-1]["settled"] == [run_images(emu, "us-east-1", "lost")[0]["ImageId"]]
    assert all(out["settled"] == [] for out in sweeps[:-1]), "nothing to settle before the image was ready"
    # Ready at 25 minutes, seen by the sweep at 30 (every EventFallbackMinutes=10 of the schedule).
    assert 30 * 60 <= emu.clock.elapsed() < 31 * 60
    assert entered(result)["WaitForImage"] == 1


def test_a_duplicated_event_changes_nothing(emu: Emulator) -> None:
    emu.world.images_take(20 * 60)
    emu.world.events.duplicate(AMI_STATE_CHANGE, times=3)
    result = run_basic(emu, "twice")
    ends = [out for _, out in settled_results(emu)]
    assert len(ends) == 6 and sum(out["ended"] for out in ends) == 3, "each wait ended once, by the first copy"
    for region in REQUEST_REGIONS:
        assert len(run_images(emu, region, "twice")) == 1
    assert result.output["status"] == "SUCCEEDED"
    assert emu.failed_deliveries == []


def test_an_image_ec2_gives_up_on_fails_its_wait_with_the_reason(emu: Emulator) -> None:
    emu.world.images_take(20 * 60)
    emu.world.images_fail("us-east-1")
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="given-up")
    assert result.status == "FAILED" and result.error == "ImageFailedError"
    assert "is failed" in (result.cause or "")
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert run_images(emu, "us-east-1", "given-up") == []
    (end,) = [out for _, out in settled_results(emu)]
    assert end["state"] == "failed" and end["ended"] is True


def test_a_run_writes_the_same_history_however_long_ec2_takes() -> None:
    lengths = []
    for minutes in (20, 20 * 60):
        with Emulator(parameters={**TEST_PARAMETERS, "MaxWaitSeconds": "86400"}) as emu:
            emu.world.images_take(minutes * 60)
            result = run_basic(emu, f"took-{minutes}")
            lengths.append(len(result.history))
    assert lengths[0] == lengths[1] <= 500, lengths


def test_the_forwarding_rules_follow_the_regions_the_stack_may_copy_to(make_emulator) -> None:
    emu: Emulator = make_emulator(AllowedRegions="us-east-1,eu-west-1,ap-southeast-2")
    rules = forwarding_rules(emu)
    assert sorted(rules) == ["ap-southeast-2", "eu-west-1"], "every other Region it may copy to; not its own"
    for targets in rules.values():
        (target,) = targets
        assert target["Arn"] == "arn:aws:events:us-east-1:123456789012:event-bus/default"
        assert target["RoleArn"].endswith(":role/ami-factory-local-AmiEventForwardingRole")
    # A stack update that changes the Regions: the one added gets its rule, the one dropped loses it.
    emu.reconfigure(AllowedRegions="us-east-1,eu-west-1,eu-central-1")
    assert sorted(forwarding_rules(emu)) == ["eu-central-1", "eu-west-1"]
    emu.delete_custom_resources()
    assert forwarding_rules(emu) == {}, "deleting the stack removes them all"


def test_a_region_that_refuses_does_not_hold_up_the_stacks_deletion(make_emulator) -> None:
    emu: Emulator = make_emulator(AllowedRegions="us-east-1,eu-west-1,ap-southeast-2")
    emu.world.refuse("RemoveTargets", times=1, code="AccessDeniedException", region="eu-west-1")
    emu.delete_custom_resources()  # a FAILED answer would raise
    assert sorted(forwarding_rules(emu)) == ["eu-west-1"], "the others are removed; that one is logged and left"


def test_a_long_stack_name_still_gets_a_rule_name_eventbridge_takes() -> None:
    short = "ami-factory-us-east-1-ami-events"
    assert rule_name(short) == short
    long_a, long_b = (f"{'a' * 100}-{tail}-us-east-1-ami-events" for tail in ("one", "two"))
    named = {rule_name(long_a), rule_name(long_b)}
    assert len(named) == 2, "two long stack names with one beginning are two rules"
    assert all(len(name) <= 64 and name.endswith("-ami-events") for name in named)


def test_with_any_region_allowed_every_enabled_region_forwards(emu: Emulator) -> None:
    rules = forwarding_rules(emu)
    enabled = {
        r["RegionName"]
        for r in emu.client("ec2").describe_regions(
            Filters=[{"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}]
        )["Regions"]
    }
    assert set(rules) == enabled - {"us-east-1"} and "eu-west-1" in rules


def test_a_copy_into_a_region_whose_rule_was_removed_ends_at_the_sweep(emu: Emulator) -> None:
    events = emu.client("events", "eu-west-1")
    events.remove_targets(Rule="ami-factory-local-us-east-1-ami-events", Ids=["home"])
    events.delete_rule(Name="ami-factory-local-us-east-1-ami-events")
    emu.world.images_take(45 * 60)
    run_basic(emu, "unforwarded", regions=["eu-west-1"])
    swept = [image for _, out in settled_results(emu) if "settled" in out for image in out["settled"]]
    assert swept == [run_images(emu, "eu-west-1", "unforwarded")[0]["ImageId"]]


def test_a_wait_that_timed_out_is_forgotten_by_its_run_or_else_by_the_sweep(make_emulator) -> None:
    emu: Emulator = make_emulator(MaxWaitSeconds="3600")
    emu.world.images_never_ready()
    instance_id = emu.launch_instance(name="web")
    result = emu.run({"instance_id": instance_id, "regions": []}, name="forever")
    assert result.status == "FAILED" and result.error == "WaitTimeoutError"
    assert instance(emu, instance_id)["State"]["Name"] == "running"
    assert [item for item in ledger_items(emu) if item["pk"] == "wait"] == [], "the run's ending forgot its wait"
    # A record its run could not forget (the ending crashed), recorded three hours ago (past 3600 s and
    # the hour's margin), and a young one: the sweep drops the old one and keeps looking at the other.
    table = emu.client("dynamodb")
    for image_id, since in (("ami-00000000000000old", "2020-01-01T00:00:00Z"), ("ami-00000000000young", None)):
        table.put_item(
            TableName="ami-factory-local-LedgerTable",
            Item={
                "pk": {"S": "wait"},
                "sk": {"S": f"us-east-1#{image_id}"},
                "main": {"S": image_id},
                "run_id": {"S": "crashed"},
                "token": {"S": "t"},
                "ref": {"S": json.dumps({"region": "us-east-1", "image_id": image_id})},
                "kind": {"S": "image"},
                "since": {"S": since or datetime.now(UTC).isoformat()},
            },
        )
    (dropped,) = emu.fire_scheduled_rule("WaitSweepRule")
    assert dropped["expired"] == ["ami-00000000000000old"] and dropped["open"] == 1
    assert [item["main"] for item in ledger_items(emu) if item["pk"] == "wait"] == ["ami-00000000000young"]


def test_a_retried_wait_looks_first_even_on_what_its_step_just_set_in_motion(emu: Emulator) -> None:
    """The stop wait's first attempt is throttled before it records its token, and the instance stops
    before the retry (its event finds no wait: on AWS it is gone, here it is dropped, since the emulator
    would hold it for the next waiter): the retry looks, and the run goes on at once, not at the
    fallback sweep's next firing."""
    emu.world.instances_take_to_stop(0.1)
    emu.world.events.lose(INSTANCE_STATE_CHANGE, times=1)
    emu.world.after_call(
        "StopInstances", lambda: emu.world.refuse("GetItem", times=1, code="ThrottlingException", region="us-east-1")
    )
    instance_id = emu.launch_instance(name="web")
    imaged_at: list[float] = []
    emu.world.after_call("CreateImage", lambda: imaged_at.append(emu.clock.elapsed()))
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="retried-wait")
    assert result.output["status"] == "SUCCEEDED", result.cause
    (imaged_after,) = imaged_at
    assert imaged_after < 60, f"CreateImage {imaged_after:.0f} s in: the retried wait looked and found it stopped"


def test_a_retried_image_wait_that_finds_the_image_failed_fails_the_run_at_once(emu: Emulator) -> None:
    """The image's wait is throttled before it records its token, and the image fails meanwhile (its
    event finds no wait): the retry looks, finds it failed, and ends its own task with the failure
    (WatchImage's SendTaskFailure), so the run is undone now, not at the fallback sweep's firing."""
    emu.world.images_fail("us-east-1")
    emu.world.events.lose(AMI_STATE_CHANGE, times=1)
    emu.world.after_call(
        "CreateImage", lambda: emu.world.refuse("PutItem", times=1, code="ThrottlingException", region="us-east-1")
    )
    instance_id = emu.launch_instance(name="web")

    result = emu.run(sample("request-basic.json", instance_id=instance_id, regions=[]), name="failed-image")

    assert result.status == "FAILED" and result.error == "ImageFailedError", result.cause
    failures = emu.world.sent("SendTaskFailure")
    assert [request.params["error"] for request in failures] == ["ImageFailedError"]
    used = {action for role, action, _ in emu.authorizer.used if role == "WatchImageFunctionRole"}
    assert "states:SendTaskFailure" in used
    assert instance(emu, instance_id)["State"]["Name"] == "running"
