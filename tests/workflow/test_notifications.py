"""How a run's end is told: the SNS topic for people, an EventBridge event (source ``ami-factory``)
for automation, both carrying the summary; telling about it never undoes the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ami_factory.closing import DETAIL_TYPES, EVENT_SOURCE
from ami_factory.contracts import Summary
from ami_factory_local import Emulator
from tests.helpers import EVENTS, sample


def event_entries(emu: Emulator) -> list[dict[str, Any]]:
    return [entry for request in emu.world.sent("PutEvents") for entry in request.params["Entries"]]


def test_a_finished_run_publishes_its_summary_to_sns_and_eventbridge(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="told")
    assert result.status == "SUCCEEDED", result.cause
    (published,) = emu.world.sent("Publish")
    assert published.params["TopicArn"] == emu.deployment.topic_arns["NotificationTopic"]
    assert published.params["Subject"].endswith("image ready")
    for region in result.output["regions"]:
        assert f"{region['region']}: {region['image_id']} ({region['parameter_name']})" in published.params["Message"]
    assert "Keeping the images: $2.25/month at most" in published.params["Message"]
    (entry,) = event_entries(emu)
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        EVENT_SOURCE,
        "AMI Factory Image Ready",
        "default",
    )
    detail = Summary.model_validate_json(entry["Detail"])
    assert [r.image_id for r in detail.regions] == [r["image_id"] for r in result.output["regions"]]
    assert detail.cost and detail.cost.monthly_standard == 2.25
    assert entry["Resources"] == [f"arn:aws:ec2:{r['region']}::image/{r['image_id']}" for r in result.output["regions"]]


def test_a_partial_run_says_so(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.images_fail("ap-southeast-2")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="half")
    assert result.output["status"] == "PARTIAL"
    (entry,) = event_entries(emu)
    assert entry["DetailType"] == "AMI Factory Image Partially Ready"
    assert "ap-southeast-2: FAILED (ImageFailedError)" in emu.world.sent("Publish")[0].params["Message"]


def test_a_failed_run_publishes_the_failure_with_its_error(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.images_fail()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="broken")
    assert result.status == "FAILED" and result.error == "ImageFailedError"
    (entry,) = event_entries(emu)
    assert entry["DetailType"] == "AMI Factory Run Failed"
    detail = json.loads(entry["Detail"])
    assert detail["error"] == "ImageFailedError" and detail["status"] == "FAILED"
    # What became of the instance (started again: pending, as StartInstances answered), and which image
    # failed, are said on failure too.
    assert detail["instance_state"] == "pending" and detail["image_name"] == "ami-factory-web-broken"
    (published,) = emu.world.sent("Publish")
    assert (
        published.params["Subject"].endswith("run failed") and "Error: ImageFailedError" in published.params["Message"]
    )


def test_failing_to_tell_does_not_fail_the_run(emu: Emulator) -> None:
    emu.client("sns").delete_topic(TopicArn=emu.deployment.topic_arns["NotificationTopic"])
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="unheard")
    assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED"
    assert "NotFound" in result.output["notification_error"]


def test_the_sample_events_are_what_a_run_sends() -> None:
    for name, status in (("ami-factory-image-ready.json", "SUCCEEDED"), ("ami-factory-run-failed.json", "FAILED")):
        event = json.loads(Path(EVENTS / name).read_text())
        assert event["source"] == EVENT_SOURCE and event["detail-type"] == DETAIL_TYPES[status]
        assert Summary.model_validate(event["detail"]).status == status
