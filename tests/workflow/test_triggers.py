"""Tag, schedule and console triggers: each sample event through the rule's real pattern (from
template.yaml, matched by moto's EventBridge matcher) and, when it matches, through the real start
function to finished runs in the emulator."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from moto.events.models import EventPattern

from ami_factory import triggers
from ami_factory_local import Emulator
from ami_factory_local.template import Resolver, load_template, parameter_values, resources_of_type
from tests.helpers import (
    OTHER_ACCOUNT,
    ROOT,
    event,
    executions,
    images,
    instance_tags,
    launch_tagged,
    tag_event,
    wait_all,
)

TRIGGER = "ami-factory:create"


def tag_rule_pattern(**parameters: str) -> EventPattern:
    template = load_template(ROOT / "template.yaml")
    resolver = Resolver(parameter_values(template, parameters), {}, {})
    rule = resources_of_type(template, "AWS::Events::Rule")["TagTriggerRule"]
    return EventPattern.load(resolver.resolve(rule["Properties"]["EventPattern"]))


@pytest.mark.parametrize(
    "sample, matches",
    [
        ("tag-set-true.json", True),
        ("tag-removed.json", False),
        ("tag-other-value.json", False),
        ("other-tag-changed.json", False),
        ("schedule-firing.json", False),
        ("malformed-event.json", True),  # the pattern cannot see what is missing: the function rejects it
    ],
)
def test_the_rule_pattern_from_the_template_matches_only_the_trigger(sample: str, matches: bool) -> None:
    assert tag_rule_pattern().matches_event(event(sample)) is matches


def test_the_trigger_tag_key_is_a_deploy_parameter() -> None:
    custom = event("tag-set-true.json")
    custom["detail"]["changed-tag-keys"] = ["image-me"]
    custom["detail"]["tags"] = {"image-me": "TRUE"}
    assert tag_rule_pattern(TriggerTagKey="image-me").matches_event(custom)
    assert not tag_rule_pattern().matches_event(custom)


def test_tag_set_to_true_images_the_instance_and_records_the_result(emu: Emulator) -> None:
    instance_id = launch_tagged(emu)
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    assert outcome["started"] == [f"{instance_id}-tag-0b1d5f8e-3c2a-4a7e-9f61-2d7c1e9a4b10"]
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    assert [r["region"] for r in run.output["regions"]] == ["us-east-1", "eu-west-1", "ap-southeast-2"]
    assert run.output["regions"][1]["shared_with"] == ["111122223333"]
    tags = instance_tags(emu, instance_id)
    assert tags["ami-factory:last-image-id"] == run.output["regions"][0]["image_id"]
    assert tags["ami-factory:last-status"] == "SUCCEEDED"
    assert tags["ami-factory:last-run"] == run.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tags["ami-factory:last-run-at"])
    assert TRIGGER not in tags, "the trigger tag is cleared, so setting it again triggers again"


@pytest.mark.parametrize("sample", ["tag-removed.json", "tag-other-value.json", "other-tag-changed.json"])
def test_other_tag_changes_start_nothing(emu: Emulator, sample: str) -> None:
    instance_id = launch_tagged(emu)
    assert emu.deliver_event(tag_event(emu, instance_id, sample)) == [], "no rule matches"
    assert executions(emu) == []


def test_the_same_tag_event_delivered_three_times_makes_one_run_and_one_image(make_emulator) -> None:
    emu: Emulator = make_emulator()
    instance_id = launch_tagged(emu, **{"ami-factory:regions": ""})
    delivered = tag_event(emu, instance_id)
    first, second = emu.deliver_event(delivered)[0], emu.deliver_event(delivered)[0]
    wait_all(emu)
    third = emu.deliver_event(delivered)[0]  # redelivered after the run ended
    assert len(first["started"]) == 1
    assert second["skipped"][0]["reason"] == "run in flight"
    assert second["skipped"][0]["held_by"] == first["started"][0]
    assert third["skipped"][0]["reason"] == "already started"
    assert len(executions(emu)) == 1
    assert len(images(emu)) == 1
    assert len(emu.world.sent("CreateImage")) == 1


def test_a_trigger_while_a_run_is_in_flight_is_skipped_and_the_log_names_the_holder(
    emu: Emulator, function_logs
) -> None:
    instance_id = launch_tagged(emu)
    (held_by,) = emu.deliver_event(tag_event(emu, instance_id))[0]["started"]
    second = tag_event(emu, instance_id, event_id="99999999-0000-0000-0000-000000000000")
    (outcome,) = emu.deliver_event(second)
    wait_all(emu)
    assert outcome["started"] == []
    assert outcome["skipped"] == [{"instance_id": instance_id, "reason": "run in flight", "held_by": held_by}]
    assert f"already has a run in flight ({held_by})" in function_logs.text
    assert len(executions(emu)) == 1


def test_a_trigger_that_loses_the_race_for_the_lock_is_skipped_naming_the_winner(emu: Emulator, function_logs) -> None:
    instance_id = launch_tagged(emu)
    won: list[dict[str, Any]] = []
    # Another trigger takes the lock between this one's look at it and its own conditional write.
    rival = tag_event(emu, instance_id, event_id="99999999-0000-0000-0000-000000000000")
    emu.world.after_call("GetItem", lambda: won.extend(emu.deliver_event(rival)))
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    (winner,) = won[0]["started"]
    assert outcome == {
        "started": [],
        "skipped": [{"instance_id": instance_id, "reason": "run in flight", "held_by": winner}],
        "rejected": [],
    }
    logged = [line for line in function_logs.text.splitlines() if f"is being imaged by run {winner} (" in line]
    assert logged and all(line.endswith("this trigger is skipped") for line in logged)
    assert [run.status for run in wait_all(emu)] == ["SUCCEEDED"]


def test_a_firing_goes_on_past_an_instance_whose_lock_it_lost(make_emulator) -> None:
    emu: Emulator = make_emulator(ScheduleExpression="rate(7 days)")
    first, second = (emu.launch_instance(tags={"ami-factory:schedule": "true"}) for _ in range(2))
    rival = tag_event(emu, first)  # a tag trigger for the first instance takes its lock mid-firing
    emu.world.after_call("GetItem", lambda: emu.deliver_event(rival))
    (outcome,) = emu.fire_schedule("2026-11-29T03:00:00Z")
    (rival_run,) = [e["name"] for e in executions(emu) if e["name"].startswith(first)]
    assert outcome["skipped"] == [{"instance_id": first, "reason": "run in flight", "held_by": rival_run}]
    assert outcome["started"] == [f"{second}-schedule-20261129T030000Z"], "the firing went on to the next"
    assert sorted(run.status for run in wait_all(emu)) == ["SUCCEEDED", "SUCCEEDED"]


def test_a_bad_tag_starts_nothing_and_says_what_to_fix_on_the_instance(emu: Emulator) -> None:
    instance_id = launch_tagged(emu, **{"ami-factory:regions": "eu-west-1 mars-east-1"})
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    (rejected,) = outcome["rejected"]
    assert (rejected["instance_id"], rejected["error"]) == (instance_id, "UnknownRegionError")
    assert "mars-east-1" in rejected["message"]
    assert executions(emu) == []
    assert "mars-east-1" in instance_tags(emu, instance_id)["ami-factory:error"]

    emu.client("ec2").create_tags(
        Resources=[instance_id], Tags=[{"Key": "ami-factory:share-accounts", "Value": OTHER_ACCOUNT}]
    )
    emu.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": "ami-factory:regions", "Value": "eu-west-1"}])
    retry = tag_event(emu, instance_id, event_id="22222222-0000-0000-0000-000000000000")
    (outcome,) = emu.deliver_event(retry)
    assert outcome["rejected"][0]["error"] == "ShareTargetNotAllowedError"
    error_tag = instance_tags(emu, instance_id)["ami-factory:error"]
    assert OTHER_ACCOUNT in error_tag and "AllowedShareAccounts" in error_tag
    assert executions(emu) == []
    assert emu.world.sent("StopInstances") == [] and emu.world.sent("CreateImage") == []


def test_a_malformed_tag_value_names_the_tag(emu: Emulator) -> None:
    instance_id = launch_tagged(emu, **{"ami-factory:share-accounts": "1234"})
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    assert outcome["rejected"][0]["error"] == "InvalidRequestError"
    assert "tag ami-factory:share-accounts" in instance_tags(emu, instance_id)["ami-factory:error"]


def test_fixing_the_tags_and_triggering_again_runs_and_clears_the_error(emu: Emulator) -> None:
    instance_id = launch_tagged(emu, **{"ami-factory:mode": "sideways"})
    emu.deliver_event(tag_event(emu, instance_id))
    assert "ami-factory:error" in instance_tags(emu, instance_id)
    emu.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": "ami-factory:mode", "Value": "no-reboot"}])
    fixed = tag_event(emu, instance_id, event_id="33333333-0000-0000-0000-000000000000")
    (outcome,) = emu.deliver_event(fixed)
    (run,) = wait_all(emu)
    assert outcome["started"] and run.status == "SUCCEEDED", run.cause
    assert "ami-factory:error" not in instance_tags(emu, instance_id)
    assert emu.world.sent("StopInstances") == [], "the mode tag was honoured"


def test_a_malformed_event_starts_nothing_and_says_why(emu: Emulator, function_logs) -> None:
    launch_tagged(emu)
    (outcome,) = emu.deliver_event(event("malformed-event.json"))
    assert outcome["started"] == []
    assert outcome["rejected"][0]["error"] == "MalformedEventError"
    assert "resources: Field required" in outcome["rejected"][0]["message"]
    assert "malformed trigger event, no run started: resources: Field required" in function_logs.text
    assert executions(emu) == []


def test_a_schedule_firing_over_twenty_instances_runs_each_once_and_a_second_firing_adds_nothing(make_emulator) -> None:
    emu: Emulator = make_emulator(ScheduleExpression="cron(0 3 ? * SUN *)", ScheduleTimezone="Europe/Paris")
    emu.world.images_take(120)
    opted_in = [emu.launch_instance(name=f"web-{n}", tags={"ami-factory:schedule": "true"}) for n in range(20)]
    emu.launch_instance(name="not-opted-in")
    emu.launch_instance(name="opted-out", tags={"ami-factory:schedule": "false"})
    firing = event("schedule-firing.json")
    (first,) = emu.fire_schedule(firing["scheduled_time"])
    (second,) = emu.fire_schedule("2026-11-29T04:00:00Z")  # the next firing, while the runs are in flight
    runs = wait_all(emu)
    assert sorted(name.split("-schedule-")[0] for name in first["started"]) == sorted(opted_in)
    assert second["started"] == [] and len(second["skipped"]) == 20
    assert len(runs) == 20 and {run.status for run in runs} == {"SUCCEEDED"}
    assert len(images(emu)) == 20
    for instance_id in opted_in:
        (image,) = [i for i in images(emu) if {"Key": "ami-factory:source-instance", "Value": instance_id} in i["Tags"]]
        assert instance_tags(emu, instance_id)["ami-factory:last-image-id"] == image["ImageId"]


def test_a_retried_schedule_firing_starts_nothing_new(make_emulator) -> None:
    emu: Emulator = make_emulator(ScheduleExpression="rate(7 days)")
    first_instance = emu.launch_instance(tags={"ami-factory:schedule": "true"})
    (first,) = emu.fire_schedule("2026-11-29T03:00:00Z", attempt=1)
    wait_all(emu)
    opted_in_since = emu.launch_instance(tags={"ami-factory:schedule": "true"})
    (retry,) = emu.fire_schedule("2026-11-29T03:00:00Z", attempt=2)
    assert first["started"] == [f"{first_instance}-schedule-20261129T030000Z"]
    assert retry["skipped"] == [
        {"instance_id": first_instance, "reason": "already started", "held_by": first["started"][0]}
    ]
    assert retry["started"] == [f"{opted_in_since}-schedule-20261129T030000Z"], "the firing goes on past it"
    wait_all(emu)
    assert len(executions(emu)) == 2


def test_no_schedule_parameter_means_no_schedule(emu: Emulator) -> None:
    emu.launch_instance(tags={"ami-factory:schedule": "true"})
    assert emu.fire_schedule("2026-11-29T03:00:00Z") == []
    assert executions(emu) == []


def test_tagging_an_instance_in_the_emulator_triggers_a_run_as_on_aws(emu: Emulator) -> None:
    """The emulator emits Tag Change on Resource for CreateTags, so `aws ec2 create-tags` alone starts a run."""
    instance_id = emu.launch_instance(name="web")
    emu.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": "ami-factory:regions", "Value": "eu-west-1"}])
    assert executions(emu) == [], "another tag starts nothing"
    emu.client("ec2").create_tags(Resources=[instance_id], Tags=[{"Key": TRIGGER, "Value": "true"}])
    (run,) = wait_all(emu)
    assert run.status == "SUCCEEDED", run.cause
    assert [r["region"] for r in run.output["regions"]] == ["us-east-1", "eu-west-1"]
    assert TRIGGER not in instance_tags(emu, instance_id)
    assert len(executions(emu)) == 1, "the tool's own tagging (results, clearing the trigger) starts nothing"


def test_a_schedule_opts_in_any_case_of_true_running_or_stopped_and_names_runs_after_the_firing(make_emulator) -> None:
    emu: Emulator = make_emulator(ScheduleExpression="rate(7 days)")
    opted_in = [
        emu.launch_instance(tags={"ami-factory:schedule": "true"}),
        emu.launch_instance(tags={"ami-factory:schedule": "True"}),
        emu.launch_instance(tags={"ami-factory:schedule": "TRUE"}, state="stopped"),
    ]
    emu.launch_instance(tags={"ami-factory:schedule": "yes"})
    (outcome,) = emu.fire_schedule("2026-11-29T03:00:00Z")
    assert sorted(outcome["started"]) == sorted(f"{instance}-schedule-20261129T030000Z" for instance in opted_in)
    assert {run.status for run in wait_all(emu)} == {"SUCCEEDED"}


def test_the_start_function_starts_only_when_the_trigger_tag_itself_changed_to_true(emu: Emulator) -> None:
    instance_id = launch_tagged(emu)
    already_set = tag_event(emu, instance_id)
    already_set["detail"]["changed-tag-keys"] = ["Name"]  # the rule would not send it; the function must not act
    removed = tag_event(emu, instance_id)
    del removed["detail"]["tags"]["ami-factory:create"]
    for event_in in (already_set, removed):
        errored, outcome = emu.runtime.invoke("ami-factory-local-StartRunFunction", event_in)
        assert not errored, outcome
        assert outcome == {"started": [], "skipped": [], "rejected": []}
    assert executions(emu) == []


def test_an_event_about_something_else_than_an_instance_starts_nothing_and_says_why(emu: Emulator) -> None:
    instance_id = launch_tagged(emu)
    volume_event = tag_event(emu, instance_id)
    volume_event["resources"] = ["arn:aws:ec2:us-east-1:123456789012:volume/vol-0123456789abcdef0"]
    errored, outcome = emu.runtime.invoke("ami-factory-local-StartRunFunction", volume_event)
    assert not errored, outcome
    (rejected,) = outcome["rejected"]
    assert rejected["message"] == (
        "malformed trigger event, no run started: resources "
        "['arn:aws:ec2:us-east-1:123456789012:volume/vol-0123456789abcdef0'] hold no EC2 instance ARN"
    )
    assert executions(emu) == []


def test_a_firing_goes_on_past_a_rejected_or_already_started_instance_and_reports_each(
    make_emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emu: Emulator = make_emulator(ScheduleExpression="rate(7 days)")
    unknown = " ".join(f"m{n}" for n in range(40))  # an error naming them all is longer than a tag value may be
    bad = emu.launch_instance(tags={"ami-factory:schedule": "true", "ami-factory:regions": unknown})
    started_before = emu.launch_instance(tags={"ami-factory:schedule": "true"})
    emu.start_run({"instance_id": started_before, "regions": []}, name=f"{started_before}-schedule-20261129T030000Z")
    good = emu.launch_instance(tags={"ami-factory:schedule": "true"})
    (outcome,) = emu.fire_schedule("2026-11-29T03:00:00Z")
    assert outcome["started"] == [f"{good}-schedule-20261129T030000Z"]
    (rejected,) = outcome["rejected"]
    assert rejected["instance_id"] == bad and rejected["error"] == "UnknownRegionError"
    assert rejected["message"].startswith("unknown Region(s) ['m0', 'm1', 'm10'") and len(rejected["message"]) > 256
    error_tag = instance_tags(emu, bad)["ami-factory:error"]
    assert len(error_tag) <= 256 and error_tag.startswith("unknown Region(s) ['m0'")
    advice = rejected["message"].rsplit("]: ", 1)[1]
    assert error_tag.endswith(f"]: {advice}"), "the echoed list is shortened, never the advice"
    (skipped,) = outcome["skipped"]
    assert (
        skipped["instance_id"] == started_before and skipped["held_by"] == f"{started_before}-schedule-20261129T030000Z"
    )
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"TriggersSkipped"' in line]
    assert [(m["TriggersSkipped"], m["TriggersRejected"]) for m in metrics] == [([1.0], [1.0])]
    units = {metric["Name"]: metric["Unit"] for metric in metrics[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"TriggersSkipped": "Count", "TriggersRejected": "Count"}
    inputs = [execution["input"] for execution in executions_described(emu)]
    assert all("null" not in text for text in inputs), "a started run's input holds only what was asked"


def executions_described(emu: Emulator) -> list[dict[str, Any]]:
    sfn = emu.client("stepfunctions")
    return [sfn.describe_execution(executionArn=e["executionArn"]) for e in executions(emu)]


def test_an_event_from_another_source_starts_nothing_and_names_it(emu: Emulator) -> None:
    errored, outcome = emu.runtime.invoke("ami-factory-local-StartRunFunction", {"source": "aws.ec2", "detail": {}})
    assert not errored, outcome
    assert outcome["rejected"][0]["message"] == (
        "malformed trigger event, no run started: source 'aws.ec2' is none of aws.tag, aws.ec2 "
        "(AWS API Call via CloudTrail), ami-factory.schedule"
    )
    not_create_tags = {
        "source": "aws.ec2",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {"eventName": "RunInstances"},
    }
    errored, outcome = emu.runtime.invoke("ami-factory-local-StartRunFunction", not_create_tags)
    assert not errored and "eventName" in outcome["rejected"][0]["message"]


@pytest.mark.parametrize(
    "tags, named",
    [
        ({"ami-factory:encrypt": "yes"}, "tag ami-factory:encrypt is 'yes': use true or false"),
        ({"ami-factory:launch-check": "1"}, "tag ami-factory:launch-check is '1': use true or false"),
        ({"ami-factory:protection-cooldown": "true"}, "tag ami-factory:protection-cooldown: cooldown only applies"),
        ({"ami-factory:admin-password": "do-nothing"}, "tag ami-factory:admin-password: windows options only apply"),
        (
            {"ami-factory:confirm-generalize-in-place": "TRUE"},
            "tag ami-factory:confirm-generalize-in-place: confirm_generalize_in_place only applies",
        ),
        ({"ami-factory:description": "line\nbreak"}, "tag ami-factory:description: contains the control character"),
    ],
    ids=[
        "yes is not a boolean",
        "1 is not a boolean",
        "cooldown alone",
        "windows tag in stop mode",
        "snapshots alone",
        "control character",
    ],
)
def test_every_tag_error_names_its_tag(emu: Emulator, tags: dict[str, str], named: str) -> None:
    instance_id = launch_tagged(emu, **tags)
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    assert outcome["rejected"][0]["error"] == "InvalidRequestError"
    assert named in instance_tags(emu, instance_id)["ami-factory:error"]
    assert executions(emu) == []


def test_tag_booleans_take_true_and_false_in_any_case(emu: Emulator) -> None:
    instance_id = launch_tagged(emu, **{"ami-factory:launch-check": " FALSE ", "ami-factory:encrypt": "False"})
    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))
    assert outcome["started"] and outcome["rejected"] == [], outcome


def test_a_firing_starts_its_runs_no_faster_than_the_start_rate(make_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """One firing over many instances spreads its StartExecutions (RunStartsPerMinute), so the runs'
    first EC2 calls (StopInstances, CreateImage: EC2's mutating bucket refills 5 a second) do not all
    land in the same second. Only a start waits for the one before it: the first, and instances
    refused, do not."""
    emu: Emulator = make_emulator(ScheduleExpression="cron(0 3 ? * SUN *)", RunStartsPerMinute="20")
    emu.world.images_take(120)
    emu.launch_instance(name="refused", tags={"ami-factory:schedule": "true", "ami-factory:regions": "mars-1"})
    for n in range(4):
        emu.launch_instance(name=f"web-{n}", tags={"ami-factory:schedule": "true"})
    paused = triggers.sleep  # the emulator's: virtual time
    pauses: list[float] = []
    monkeypatch.setattr(triggers, "sleep", lambda seconds: (pauses.append(seconds), paused(seconds)))
    (outcome,) = emu.fire_schedule("2026-11-29T03:00:00Z")
    runs = wait_all(emu)
    assert len(outcome["started"]) == 4 and len(outcome["rejected"]) == 1
    assert {run.status for run in runs} == {"SUCCEEDED"}
    assert pauses == [3.0, 3.0, 3.0]
    stops = sorted(request.at for request in emu.world.sent("StopInstances"))
    assert [round(later - earlier) for earlier, later in itertools.pairwise(stops)] == [3, 3, 3]


def test_a_tag_cannot_ask_for_copies_into_other_accounts(make_emulator) -> None:
    """copy_to_accounts is a StartExecution field only: a tag naming it is an unknown setting, even
    when the account is allowed and has deployed its role; nothing is started or copied."""
    emu: Emulator = make_emulator(AllowedCopyAccounts="111122223333", CopyAccountExternalId="x" * 16)
    emu.deploy_target_account("111122223333")
    instance_id = launch_tagged(emu, **{"ami-factory:copy-to-accounts": "111122223333"})

    (outcome,) = emu.deliver_event(tag_event(emu, instance_id))

    (rejected,) = outcome["rejected"]
    assert rejected["error"] == "InvalidRequestError" and "ami-factory:copy-to-accounts" in rejected["message"]
    assert executions(emu) == []
    assert emu.world.sent("AssumeRole") == [] and emu.world.sent("CopyImage") == []
