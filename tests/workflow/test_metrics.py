"""Metrics in CloudWatch embedded metric format, from the real handlers: runs started, succeeded,
partial and failed, images per run, how long images took, what the triggers skipped."""

from __future__ import annotations

import json

import pytest

from ami_factory_local import Emulator
from tests.helpers import emitted, sample, units


def test_a_run_reports_its_start_end_images_and_wait_times(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.images_take(20 * 60)
    emu.world.images_fail("ap-southeast-2")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="measured")
    assert result.output["status"] == "PARTIAL"
    documents = emitted(capsys.readouterr().out)
    assert {"RunsStarted": 1.0} in documents
    assert {"RunsPartial": 1.0, "ImagesAvailable": 2.0, "RegionsFailed": 1.0} in documents
    waits = [document["ImageWaitSeconds"] for document in documents if "ImageWaitSeconds" in document]
    # The source image and the one copy that became available, each measured from its wait's start to
    # EC2's event (the emulator stamps events with the wall clock the functions see: seconds, not 20 minutes).
    assert len(waits) == 2 and all(0 <= wait < 60 for wait in waits), waits


def test_a_failed_run_is_counted(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.images_fail()
    assert emu.run(sample("request-basic.json", instance_id=instance_id), name="counted").status == "FAILED"
    out = capsys.readouterr().out
    assert {"RunsFailed": 1.0} in emitted(out)
    assert units(out)["RunsFailed"] == "Count"


def test_copy_slots_in_use_are_reported_per_region_as_they_are_taken_and_given_back(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    instance_id = emu.launch_instance(name="web")
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="gauged")
    assert result.output["status"] == "SUCCEEDED", result.cause
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"CopySlotsInUse"' in line]
    levels = [(document["Region"], *document["CopySlotsInUse"]) for document in documents]
    for region in ("eu-west-1", "ap-southeast-2"):  # the copy's slot taken, then given back when it settled
        seen = [level for at, level in levels if at == region]
        assert (seen[0], max(seen), seen[-1]) == (1.0, 1.0, 0.0), levels
    (declared,) = {json.dumps(d["_aws"]["CloudWatchMetrics"], sort_keys=True) for d in documents}
    assert json.loads(declared) == [
        {
            "Namespace": "AMIFactory",
            "Dimensions": [["service", "Region"]],
            "Metrics": [{"Name": "CopySlotsInUse", "Unit": "Count"}],
        }
    ]
    assert emu.authorizer.refusals == [], "every function that takes or gives back a slot may read the slots"
