"""``make bench``: what one run costs, per scenario. A report, not a test: it asserts nothing.

Per run: EC2 API calls by operation, Step Functions state transitions (what Standard workflows
bill), Lambda invocations, and virtual elapsed time against the images' own time (how long EC2
itself took to make and copy them): the gap is what polling adds. Then each handler's import time
(what a cold start pays before the first line of the step runs) against ``import boto3`` alone,
measured in fresh interpreters in the same run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .emulator import Emulator
from .template import load_template, parameter_values

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "111122223333"
IMPORT_SAMPLES = 7
REGIONS = ["eu-west-1", "ap-southeast-2"]


@dataclass
class Scenario:
    name: str
    arrange: Callable[[Emulator, str], None]  # the emulator, and the instance to image
    regions: list[str]
    request: dict[str, Any] = field(default_factory=dict)


def _typical(emu: Emulator, instance_id: str) -> None:
    emu.world.instances_take_to_stop(90)
    emu.world.images_take(20 * 60)
    for region in REGIONS:
        emu.world.images_take(45 * 60, region=region)


def _throttled(emu: Emulator, instance_id: str) -> None:
    _typical(emu, instance_id)
    emu.world.throttle("CopyImage", times=3)
    emu.world.hide_new_images(describes=2)


def _one_region_fails(emu: Emulator, instance_id: str) -> None:
    _typical(emu, instance_id)
    emu.world.images_fail("ap-southeast-2")


def _booting(emu: Emulator, instance_id: str) -> None:
    _typical(emu, instance_id)
    emu.world.status_checks_take(3 * 60)


def _windows_clone(emu: Emulator, instance_id: str) -> None:
    """Seed and final image 20 min each, the clone online in SSM after 3 min, sysprep 12 min."""
    _typical(emu, instance_id)
    emu.world.set_platform(emu.region, instance_id, "windows")
    emu.world.ssm_manage(instance_id, "Windows")
    emu.world.clones_take_to_register(3 * 60)
    emu.world.generalize_takes(12 * 60)


SCENARIOS = [
    Scenario("typical: 3 Regions, 20 min image, 45 min copies", _typical, REGIONS),
    Scenario("throttled CopyImage x3 in each Region, image invisible x2", _throttled, REGIONS),
    Scenario("one Region's copy fails", _one_region_fails, REGIONS),
    Scenario("generalize (Windows) on a clone", _windows_clone, REGIONS, {"mode": "generalize"}),
    Scenario("launch check in 3 Regions (status checks ok after 3 min)", _booting, REGIONS, {"launch_check": True}),
    Scenario(
        "9 Regions",
        _typical,
        [*REGIONS, "us-west-2", "eu-central-1", "ap-northeast-1", "sa-east-1", "ca-central-1", "eu-north-1"],
    ),
]


SCALE_REGIONS = [*REGIONS, "us-west-2", "eu-central-1", "ap-northeast-1", "sa-east-1", "ca-central-1", "eu-north-1"]
# The scenario is 100 instances; 40 finish in about two minutes of real time, 100 took over
# twenty once every run reached its copies (the emulator runs every step of every run on 2 cores).
SCALE_INSTANCES = 40
SCALE_SCENARIO = f"one firing: {SCALE_INSTANCES} instances, each to 10 Regions (20 min image, 45 min copies)"


def scale(out: TextIO, instances: int = SCALE_INSTANCES, destinations: list[str] = SCALE_REGIONS[:9]) -> None:
    """One firing over many instances at once: every run to the same Regions, all started at the same
    virtual time (as a schedule's StartRun starts them), sharing each Region's copy slots."""
    with Emulator(parameters={"AllowedShareAccounts": ACCOUNT, "AllowedRegions": ""}) as emu:
        emu.world.instances_take_to_stop(90)
        emu.world.images_take(20 * 60)
        for region in destinations:
            emu.world.images_take(45 * 60, region=region)
        peak: dict[str, int] = {}

        def count_copies() -> None:
            region = emu.world.sent("CopyImage")[-1].region
            peak[region] = max(peak.get(region, 0), len(emu.world.copies_in_flight(region)))
            emu.world.after_call("CopyImage", count_copies)

        emu.world.after_call("CopyImage", count_copies)
        requests = [
            ({"instance_id": emu.launch_instance(name=f"web{n}"), "regions": destinations}, f"firing-{n}")
            for n in range(instances)
        ]
        before, invocations = emu.world.calls("ec2"), len(emu.runtime.invocations)
        results = [emu.wait(arn, timeout=3600) for arn in emu.start_runs(requests)]
        calls = emu.world.calls("ec2") - before
        outcomes = Counter(str((result.output or {}).get("status", result.status)) for result in results)
        failed_regions = sum(len((result.output or {}).get("failed_regions", [])) for result in results)
        stopped = sum(
            1
            for reservation in emu.client("ec2").describe_instances()["Reservations"]
            for instance in reservation["Instances"]
            if instance["State"]["Name"] != "running"
        )
        throttled_results = sum(
            "ThrottledError" in f"{result.error} {json.dumps(result.output or {})}" for result in results
        )
        slots = int(
            parameter_values(load_template(ROOT / "template.yaml"), emu.parameter_overrides)["CopySlotsPerRegion"]
        )
        waves = -(-instances // slots)
        critical_path = 90 + 20 * 60 + waves * 45 * 60
        print(f"\n== {SCALE_SCENARIO}: {dict(outcomes)}", file=out)
        print(f"   failed Regions: {failed_regions}; instances not running at the end: {stopped}", file=out)
        print(f"   runs failed or partial by throttling (ThrottledError): {throttled_results}", file=out)
        print(f"   EC2 refusals by its token buckets (retried): {emu.world.limits.refused}", file=out)
        print(f"   most copies in flight into one Region: {max(peak.values(), default=0)} (slots: {slots})", file=out)
        print(
            f"   virtual elapsed: {emu.clock.elapsed() / 60:.1f} min; critical path the copy slots allow "
            f"({waves} waves of copies): {critical_path / 60:.1f} min",
            file=out,
        )
        print(f"   state transitions: {sum(result.transitions for result in results)}", file=out)
        print(f"   Lambda invocations: {len(emu.runtime.invocations) - invocations}", file=out)
        ec2_calls(out, calls)


def ec2_calls(out: TextIO, calls: Counter[str]) -> None:
    """The EC2 calls, in all and by operation (most first)."""
    print(f"   EC2 calls: {sum(calls.values())}", file=out)
    for operation, count in sorted(calls.items(), key=lambda item: (-item[1], item[0])):
        print(f"     {operation:<24}{count:>5}", file=out)


def import_seconds(module: str, cwd: Path, samples: int) -> float:
    """The median time a fresh interpreter takes to import ``module`` (interpreter start not counted)."""
    timing = f"import time; start = time.perf_counter(); import {module}; print(time.perf_counter() - start)"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "", "AWS_DEFAULT_REGION": "us-east-1"}
    taken = [
        float(
            subprocess.run(
                [sys.executable, "-c", timing], cwd=cwd, env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(samples)
    ]
    return statistics.median(taken)


def cold_starts(out: TextIO, samples: int = IMPORT_SAMPLES) -> None:
    baseline = import_seconds("boto3", ROOT, samples)
    print(
        f"\n== handler import time (median of {samples}), against import boto3: {baseline * 1000:.0f} ms",
        file=out,
    )
    for function in sorted(path.parent for path in (ROOT / "functions").glob("*/app.py")):
        seconds = import_seconds("app", function, samples)
        print(f"   {function.name:<22}{seconds * 1000:>6.0f} ms  {seconds / baseline:4.2f}x", file=out)


def main(
    out: TextIO, scenarios: list[Scenario] = SCENARIOS, import_samples: int = IMPORT_SAMPLES, with_scale: bool = True
) -> int:
    for scenario in scenarios:
        with Emulator(parameters={"AllowedShareAccounts": ACCOUNT}) as emu:
            instance_id = emu.launch_instance(name="bench")
            scenario.arrange(emu, instance_id)
            before = emu.world.calls("ec2")
            invocations = len(emu.runtime.invocations)
            start = emu.clock.elapsed()
            request = {"instance_id": instance_id, "regions": scenario.regions, "share": {"accounts": [ACCOUNT]}}
            result = emu.run({**request, **scenario.request})
            calls = emu.world.calls("ec2") - before
            print(
                f"\n== {scenario.name}: {result.status} ({(result.output or {}).get('status', result.error)})", file=out
            )
            print(f"   state transitions: {result.transitions}", file=out)
            print(f"   Lambda invocations: {len(emu.runtime.invocations) - invocations}", file=out)
            print(
                f"   virtual elapsed: {(emu.clock.elapsed() - start) / 60:.1f} min; images' own time: "
                f"{emu.world.images_own_time() / 60:.1f} min",
                file=out,
            )
            evaluated = sum(emu.authorizer.used.values())
            print(f"   IAM: {evaluated} grants checked, {len(emu.authorizer.refusals)} calls refused", file=out)
            ec2_calls(out, calls)
    if with_scale:
        scale(out)
    cold_starts(out, import_samples)
    return 0
