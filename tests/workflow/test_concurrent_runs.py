"""Runs at once, on one virtual clock (``ami_factory_local.clock``): runs started together make exactly
N times the calls of one, in the time of one, and share each Region's copy slots without ever
holding more than the limit."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ami_factory_local import Emulator
from ami_factory_local.emulator import RunResult
from tests.helpers import TEST_PARAMETERS

IMAGE_MINUTES, COPY_MINUTES = 20, 45


def typical(emu: Emulator, regions: list[str]) -> None:
    emu.world.images_take(IMAGE_MINUTES * 60)
    for region in regions:
        emu.world.images_take(COPY_MINUTES * 60, region=region)


def start_together(emu: Emulator, count: int, regions: list[str], prefix: str) -> list[RunResult]:
    """``count`` instances, each imaged to ``regions`` by its own run, all started at one time."""
    requests: list[tuple[dict[str, Any], str]] = [
        ({"instance_id": emu.launch_instance(name=f"web{n}"), "regions": regions}, f"{prefix}-{n}")
        for n in range(count)
    ]
    results = [emu.wait(arn) for arn in emu.start_runs(requests)]
    for result in results:
        assert result.status == "SUCCEEDED" and result.output["status"] == "SUCCEEDED", result.cause
    return results


def test_runs_at_once_make_n_times_the_calls_of_one_in_the_time_of_one() -> None:
    regions = ["eu-west-1", "ap-southeast-2"]
    calls: list[Counter[str]] = []
    elapsed: list[float] = []
    for count in (1, 4):
        with Emulator(parameters=TEST_PARAMETERS) as emu:
            typical(emu, regions)
            before = emu.world.calls("ec2")
            start_together(emu, count, regions, "together")
            calls.append(emu.world.calls("ec2") - before)
            elapsed.append(emu.clock.elapsed())
    one, four = calls
    assert four == Counter({operation: 4 * count for operation, count in one.items()})
    assert elapsed[0] == elapsed[1], "four runs side by side take the time of one"
    assert (IMAGE_MINUTES + COPY_MINUTES) * 60 <= elapsed[0] <= (IMAGE_MINUTES + COPY_MINUTES + 5) * 60


def test_runs_copying_into_one_region_never_hold_more_copies_than_its_slots(make_emulator) -> None:
    emu: Emulator = make_emulator(CopySlotsPerRegion="2")
    typical(emu, ["eu-west-1"])
    in_flight: list[int] = []

    def count_copies() -> None:  # after every CopyImage that took effect
        in_flight.append(len(emu.world.copies_in_flight("eu-west-1")))
        emu.world.after_call("CopyImage", count_copies)

    emu.world.after_call("CopyImage", count_copies)
    results = start_together(emu, 5, ["eu-west-1"], "slots")
    assert len(in_flight) == 5 and max(in_flight) == 2, in_flight
    # Three waves of copies (2, 2, 1), each as the last settled: a settling copy hands its slot to the
    # copy that has waited longest (no retry, and no fallback sweep, comes round in between).
    assert emu.clock.elapsed() >= (IMAGE_MINUTES + 3 * COPY_MINUTES) * 60
    assert emu.clock.elapsed() <= (IMAGE_MINUTES + 3 * COPY_MINUTES + 5) * 60
    failed = [event for result in results for event in result.history if event["type"] == "TaskFailed"]
    assert failed == [], "no copy asked for a slot twice"
