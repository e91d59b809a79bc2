"""Metrics in CloudWatch embedded metric format, from the real handlers: runs started, succeeded,
partial and failed, images per run, how long images took, what the triggers skipped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ami_factory_local import Emulator
from tests.helpers import sample


def emitted(out: str) -> list[dict[str, Any]]:
    """Every EMF document a handler printed: its metric values by name."""
    documents = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]

    def value(raw: Any) -> float:
        return raw[0] if isinstance(raw, list) and len(raw) == 1 else raw

    return [
        {
            name: value(document[name])
            for d in document["_aws"]["CloudWatchMetrics"]
            for name in (m["Name"] for m in d["Metrics"])
        }
        for document in documents
    ]


def units(out: str) -> dict[str, str]:
    """The unit each metric was declared with, by name."""
    documents = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    return {
        metric["Name"]: metric["Unit"]
        for document in documents
        for declared in document["_aws"]["CloudWatchMetrics"]
        for metric in declared["Metrics"]
    }


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
