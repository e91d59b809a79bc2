"""Metrics in CloudWatch embedded metric format, from the real handlers: runs started, succeeded,
partial and failed, images per run, how long images took, what the triggers skipped."""

from __future__ import annotations

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
