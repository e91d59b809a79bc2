"""``make bench``: what one run costs, per scenario. A report, not a test: it asserts nothing.

Per run: EC2 API calls by operation, Step Functions state transitions (what Standard workflows
bill), Lambda invocations, and virtual elapsed time against the images' own time (how long EC2
itself took to make and copy them): the gap is what polling adds. Then each handler's Init (what
a cold start pays before the first line of the step runs: the import, the Tracer, the step's model
and clients) against ``import boto3`` alone, measured in fresh interpreters in the same run, and
where one handler's Init goes.
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

from ami_factory.pricing import Prices, orchestration_cost
from ami_factory.rules import execution_arn
from ami_factory.triggers import start_spacing

from .emulator import Emulator
from .template import functions, load_template, parameter_values

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "111122223333"
IMPORT_SAMPLES = 7
# What Lambda's Init has in a function's environment: Powertools traces only with LAMBDA_TASK_ROOT set
# (it is set to the function's folder), and credentials come from the environment, not a chain.
LAMBDA_ENVIRONMENT = {
    "AWS_LAMBDA_FUNCTION_NAME": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
}
ONE_VCPU_MB = 1769  # Lambda: 1,769 MB earn one vCPU-second per second, a smaller function its share
# CopyImage's Init, part by part, each timed after the one before. The first two were always the
# import; the other three were the first call's until Init made them (``ami_factory.handler``).
INIT_PARTS = (
    ("boto3", "import boto3"),
    (
        "the import: Powertools, pydantic, the package's modules",
        "import ami_factory.observability, ami_factory.contracts, ami_factory.distribution, ami_factory.handler",
    ),
    (
        "the Tracer (X-Ray SDK, botocore patched)",
        "from ami_factory.observability import tracer; import botocore.client; tracer(); "
        "assert type(botocore.client.BaseClient._make_api_call).__name__.endswith('FunctionWrapper')",
    ),
    (
        "its clients (dynamodb, ec2, stepfunctions)",
        "from ami_factory.clients import client; [client(s, 'us-east-1') for s in ('dynamodb', 'ec2', 'stepfunctions')]",
    ),
    ("the handler and its input model", "import app"),
)
ALWAYS_IMPORTED = 2  # INIT_PARTS before the first that Init took over from the first call

# The emulator runs handlers in-process, so Lambda's billed duration is assumed: each invocation a
# second at the template's 256 MB (most take a fraction of that; StartRun's pacing is not counted).
ASSUMED_INVOCATION_GB_SECONDS = 1.0 * 0.25
REGIONS = ["eu-west-1", "ap-southeast-2"]


@dataclass
class Scenario:
    name: str
    arrange: Callable[[Emulator, str], None]  # the emulator, and the instance to image
    regions: list[str]
    request: dict[str, Any] = field(default_factory=dict)
    # The fewest EC2 calls the job needs, by operation: the bench prints each against it.
    minimum: dict[str, int] | None = None


def minimum_calls(regions: int) -> dict[str, int]:
    """The fewest EC2 calls that capture one instance and share it in ``regions`` Regions (the stack's
    own included), each for a reason no design avoids:"""
    return {
        "DescribeInstances": 1,  # the instance's state, root device and platform, before touching it
        "DescribeVolumes": 1,  # whether its volumes are encrypted (DescribeInstances does not say)
        "StopInstances": 1,
        "CreateImage": 1,  # the image and its snapshots tagged in the same call
        "CopyImage": regions - 1,
        "DescribeImages": regions,  # an event is a reason to look: each image's state confirmed once
        "ModifyImageAttribute": regions,  # the launch permission in each Region
        "StartInstances": 1,
        "CreateTags": 1,  # the instance's last-image tag
    }


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


FIVE_REGIONS = [*REGIONS, "us-west-2", "eu-central-1"]

SCENARIOS = [
    Scenario("typical: 3 Regions, 20 min image, 45 min copies", _typical, REGIONS),
    Scenario(
        "the issue's target: 5 Regions, 20 min image, 45 min copies", _typical, FIVE_REGIONS, {}, minimum_calls(5)
    ),
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


# The nine Regions every run of the scale scenario copies to (ten with the stack's own).
SCALE_REGIONS = [
    *REGIONS,
    "us-west-2",
    "eu-central-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
    "eu-north-1",
    "ap-south-1",
]
SCALE_INSTANCES = 100
FIRING = "2026-11-29T03:00:00Z"


def scale(out: TextIO, instances: int = SCALE_INSTANCES, destinations: list[str] = SCALE_REGIONS) -> None:
    """One schedule firing over many instances: StartRun starts their runs at RunStartsPerMinute, every
    run copies to the same Regions, and all share each Region's copy slots."""
    parameters = {
        "AllowedShareAccounts": ACCOUNT,
        "AllowedRegions": "",
        "DefaultRegions": ",".join(destinations),
        "ScheduleExpression": "cron(0 3 ? * SUN *)",
    }
    with Emulator(parameters=parameters) as emu:
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
        for n in range(instances):
            emu.launch_instance(name=f"web{n}", tags={"ami-factory:schedule": "true"})
        before, invocations = emu.world.calls("ec2"), len(emu.runtime.invocations)
        (firing,) = emu.fire_schedule(FIRING)
        results = [emu.wait(execution_arn(emu.state_machine_arn, name), timeout=7200) for name in firing["started"]]
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
        settings = parameter_values(load_template(ROOT / "template.yaml"), emu.parameter_overrides)
        slots = int(settings["CopySlotsPerRegion"])
        spacing = start_spacing(instances, int(settings["RunStartsPerMinute"]))
        waves = -(-instances // slots)
        # The first wave's last run starts (slots - 1) spacings after the first; each later wave's
        # copies start as the one before settles.
        critical_path = (min(instances, slots) - 1) * spacing + 90 + 20 * 60 + waves * 45 * 60
        histories = sorted(len(result.history) for result in results)
        print(
            f"\n== one firing: {instances} instances, each to {len(destinations) + 1} Regions (20 min image, "
            f"45 min copies), started {spacing:g} s apart: {dict(outcomes)}",
            file=out,
        )
        not_started = len(firing["skipped"]) + len(firing["rejected"])
        print(f"   instances the firing did not start: {not_started}", file=out)
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
        by_function = Counter(name.rsplit("-", 1)[-1] for name in emu.runtime.invocations[invocations:])
        print(
            f"   Lambda invocations: {sum(by_function.values())} (AwaitCopySlot "
            f"{by_function['AwaitCopySlotFunction']}, CopyImage {by_function['CopyImageFunction']}: a copy waiting "
            "for its slot is handed one, never retried)",
            file=out,
        )
        print(f"   history events per run: median {histories[len(histories) // 2]}, most {histories[-1]}", file=out)
        orchestration(out, sum(result.transitions for result in results), sum(by_function.values()))
        ec2_calls(out, calls)


def orchestration(out: TextIO, transitions: int, invocations: int) -> None:
    """What Step Functions and Lambda bill for the work, at list prices (``ami_factory.pricing``)."""
    dollars = orchestration_cost(transitions, invocations, invocations * ASSUMED_INVOCATION_GB_SECONDS, Prices())
    print(
        f"   Step Functions + Lambda: ${dollars:.4f} ({transitions} transitions, {invocations} invocations of "
        "1 s at 256 MB assumed)",
        file=out,
    )


def ec2_calls(out: TextIO, calls: Counter[str], minimum: dict[str, int] | None = None) -> None:
    """The EC2 calls, in all and by operation (most first); with ``minimum``, each against it."""
    if minimum is None:
        print(f"   EC2 calls: {sum(calls.values())}", file=out)
    else:
        least = sum(minimum.values())
        print(f"   EC2 calls: {sum(calls.values())}, minimum {least} ({sum(calls.values()) / least:.2f}x)", file=out)
    for operation, count in sorted(calls.items(), key=lambda item: (-item[1], item[0])):
        against = f"  (minimum {minimum.get(operation, 0)})" if minimum is not None else ""
        print(f"     {operation:<24}{count:>5}{against}", file=out)


def _fresh_interpreter(script: str, cwd: Path) -> list[float]:
    """The seconds a fresh interpreter printed, one per line, from ``script`` run in a Lambda's Init
    environment (interpreter start not counted)."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "", "LAMBDA_TASK_ROOT": str(cwd), **LAMBDA_ENVIRONMENT}
    ran = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return [float(line) for line in ran.stdout.split()]


def import_seconds(module: str, cwd: Path, samples: int) -> float:
    """The median time a fresh interpreter takes to import ``module``."""
    timing = f"import time; start = time.perf_counter(); import {module}; print(time.perf_counter() - start)"
    return statistics.median(_fresh_interpreter(timing, cwd)[0] for _ in range(samples))


def init_parts(cwd: Path, samples: int) -> list[float]:
    """The median seconds of each of INIT_PARTS, each timed after the one before."""
    lines = ["import time", "mark = time.perf_counter()"]
    for _, statement in INIT_PARTS:
        lines += [statement, "now = time.perf_counter(); print(now - mark); mark = now"]
    runs = [_fresh_interpreter("\n".join(lines), cwd) for _ in range(samples)]
    return [statistics.median(run[part] for run in runs) for part in range(len(INIT_PARTS))]


def cold_starts(out: TextIO, samples: int = IMPORT_SAMPLES) -> None:
    baseline = import_seconds("boto3", ROOT, samples)
    print(
        f"\n== handler Init (median of {samples}): the import, the Tracer, the step's model and clients; "
        f"against import boto3: {baseline * 1000:.0f} ms",
        file=out,
    )
    for function in sorted(path.parent for path in (ROOT / "functions").glob("*/app.py")):
        seconds = import_seconds("app", function, samples)
        print(f"   {function.name:<22}{seconds * 1000:>6.0f} ms  {seconds / baseline:4.2f}x", file=out)
    parts = init_parts(ROOT / "functions" / "copy_image", samples)
    print("   copy_image's Init, part by part:", file=out)
    for (name, _), seconds in zip(INIT_PARTS, parts, strict=True):
        print(f"     {name:<58}{seconds * 1000:>6.0f} ms", file=out)
    memory = int(functions(load_template(ROOT / "template.yaml"))["CopyImageFunction"]["MemorySize"])
    moved = sum(parts[ALWAYS_IMPORTED:])
    print(
        f"   Init runs on a full vCPU; a call of a {memory} MB function on {memory / ONE_VCPU_MB:.3f} of one: "
        f"left to the first call, the last {len(INIT_PARTS) - ALWAYS_IMPORTED} parts' {moved * 1000:.0f} ms "
        f"could take up to about {moved * ONE_VCPU_MB / memory * 1000:.0f} ms",
        file=out,
    )


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
            elapsed = emu.clock.elapsed() - start
            # EC2's own critical path: the instance stopping (mode generalize images a clone without
            # stopping it), then the image and its copies.
            stopping = emu.world.instance_stop_seconds if calls["StopInstances"] else 0.0
            critical = stopping + emu.world.images_own_time()
            print(
                f"   virtual elapsed: {elapsed / 60:.1f} min; EC2's own critical path (stop, image, copies): "
                f"{critical / 60:.1f} min ({elapsed / critical:.3f}x)",
                file=out,
            )
            print(f"   history events: {len(result.history)}", file=out)
            evaluated = sum(emu.authorizer.used.values())
            print(f"   IAM: {evaluated} grants checked, {len(emu.authorizer.refusals)} calls refused", file=out)
            orchestration(out, result.transitions, len(emu.runtime.invocations) - invocations)
            ec2_calls(out, calls, scenario.minimum)
    if with_scale:
        scale(out)
    cold_starts(out, import_samples)
    return 0
