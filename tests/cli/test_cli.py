"""The demo, the emulator server and the CLI, driven the way a user drives them."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ami_factory.pricing import Prices
from ami_factory_cli import cli
from ami_factory_local import Emulator, bench
from tests.helpers import OTHER_ACCOUNT, ROOT, executions, sample

BIN = Path(sys.executable).parent


def user_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tools'}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.mark.slow
def test_demo_ends_succeeded_with_an_ami_in_each_of_three_regions_and_the_instance_running() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ami_factory_local", "demo"],
        cwd=ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"execution \S+: SUCCEEDED", out)
    rows = re.findall(
        r"^(us-east-1|eu-west-1|ap-southeast-2)\s+(ami-[0-9a-f]+)\s+available\s+111122223333\s+/ami-factory/demo-web/latest$",
        out,
        re.MULTILINE,
    )
    assert sorted(region for region, _ in rows) == ["ap-southeast-2", "eu-west-1", "us-east-1"]
    assert len({image for _, image in rows}) == 3
    assert re.search(r"instance i-[0-9a-f]+ is running", out)
    assert "[eu-west-1] CopyImage" in out, "the run is followed live, Region by Region"
    assert re.search(r"^  waiting for ami-[0-9a-f]+ \(pending\) until EC2 says it is available$", out, re.MULTILINE)
    assert re.search(r"^  \[ap-southeast-2\] done: ami-[0-9a-f]+$", out, re.MULTILINE)
    assert re.search(
        r"^keeping these images: \$\d+\.\d\d/month \(\d+ GiB of snapshots at most, in 3 Regions", out, re.MULTILINE
    )
    assert re.search(r"^this run: \$0\.\d{4} \(\d+ state transitions, \d+ Lambda invocations\)$", out, re.MULTILINE)


@pytest.mark.slow
def test_the_generalize_demo_sysprepps_a_clone_and_keeps_the_instance_running() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ami_factory_local", "demo", "--generalize"],
        cwd=ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"execution \S+: SUCCEEDED", out)
    steps = [
        line.strip()
        for line in out.splitlines()
        if line.strip() in ("CreateSeedImage", "LaunchClone", "Generalize", "CreateImage")
    ]
    assert steps == ["CreateSeedImage", "LaunchClone", "Generalize", "CreateImage"], out
    assert re.search(r"waiting for i-[0-9a-f]+ to generalize and shut itself down", out)
    clone = re.search(
        r"sysprep ran on the clone only \((i-[0-9a-f]+)\); clone terminated: True; seed image removed: True", out
    )
    source = re.search(r"instance (i-[0-9a-f]+) is running", out)
    assert clone and source and clone.group(1) != source.group(1)
    assert len(re.findall(r"available\s+111122223333\s+/ami-factory/demo-win/latest$", out, re.MULTILINE)) == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws(*args: str, endpoint: str) -> dict:
    result = subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", endpoint, "--output", "json", *args],
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


def finished(arn: str, endpoint: str) -> dict:
    """The execution once it has ended (bounded in real time: the server's clock is virtual)."""
    deadline = time.monotonic() + 90
    while True:
        described = aws("stepfunctions", "describe-execution", "--execution-arn", arn, endpoint=endpoint)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.2)


@pytest.mark.slow
def test_every_sample_request_runs_as_written_on_the_emulator_server(tmp_path: Path) -> None:
    """make serve's world: each events/request-*.json, sent unchanged with the AWS CLI, succeeds."""
    port = free_port()
    log = tmp_path / "server.log"  # a file, not a pipe: the functions' logs would fill a pipe nobody reads
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ami_factory_local", "serve", "--port", str(port)],
            cwd=ROOT,
            env=user_env(),
            stdout=out,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C" not in log.read_text() and time.monotonic() < deadline:
            assert server.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        banner = log.read_text()
        arn = re.search(r"state machine: (\S+)", banner).group(1)
        instance_id = re.search(r"sample instance: (\S+)", banner).group(1)
        endpoint = f"http://127.0.0.1:{port}"
        assert f"--endpoint-url {endpoint}" in banner, "the banner shows the copy-paste command"
        assert "--input file://events/request-basic.json" in banner, "the samples as they are, no file to edit"
        samples = sorted((ROOT / "events").glob("request-*.json"))
        assert len(samples) >= 12 and all(s.name in banner for s in samples)

        outcomes, summaries = {}, {}
        for sample_file in samples:
            started = aws(
                "stepfunctions",
                "start-execution",
                "--state-machine-arn",
                arn,
                "--name",
                f"{instance_id}-{sample_file.stem}",
                "--input",
                f"file://events/{sample_file.name}",
                endpoint=endpoint,
            )
            described = finished(started["executionArn"], endpoint)
            summary = json.loads(described.get("output") or "{}")
            outcomes[sample_file.name] = (described["status"], summary.get("status"), described.get("cause"))
            summaries[sample_file.name] = summary
        assert outcomes == {s.name: ("SUCCEEDED", "SUCCEEDED", None) for s in samples}

        (copy,) = [r["image_id"] for r in summaries["request-basic.json"]["regions"] if r["region"] == "ap-southeast-2"]
        copies = aws("ec2", "describe-images", "--region", "ap-southeast-2", "--owners", "self", endpoint=endpoint)
        assert copy in [image["ImageId"] for image in copies["Images"]], "the AWS CLI sees the run's copy"

        # The tag trigger, as on AWS: tagging the instance is all it takes.
        aws(
            "ec2",
            "create-tags",
            "--resources",
            instance_id,
            "--tags",
            "Key=ami-factory:regions,Value=eu-west-1",
            "Key=ami-factory:create,Value=true",
            endpoint=endpoint,
        )
        listed = aws("stepfunctions", "list-executions", "--state-machine-arn", arn, endpoint=endpoint)["executions"]
        (tagged,) = [e for e in listed if e["name"].startswith(f"{instance_id}-tag-")]
        assert finished(tagged["executionArn"], endpoint)["status"] == "SUCCEEDED"
        tags = aws("ec2", "describe-tags", "--filters", f"Name=resource-id,Values={instance_id}", endpoint=endpoint)[
            "Tags"
        ]
        assert {t["Key"]: t["Value"] for t in tags}["ami-factory:last-status"] == "SUCCEEDED"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cli_says_what_is_wrong_with_a_bad_request(make_emulator) -> None:
    emu: Emulator = make_emulator()
    instance_id = emu.launch_instance()
    out = io.StringIO()
    args = cli.parser().parse_args(
        [
            "run",
            "--instance-id",
            instance_id,
            "--share-accounts",
            OTHER_ACCOUNT,
            "--state-machine-arn",
            emu.state_machine_arn,
            "--poll-seconds",
            "0.01",
        ]
    )
    assert cli.run(args, out) == 1
    text = out.getvalue()
    assert "FAILED" in text
    assert (
        f"ShareTargetNotAllowedError: account(s) ['{OTHER_ACCOUNT}'] are not in the deployment's AllowedShareAccounts"
        in text
    )


def test_cli_redrives_a_partial_run_to_its_failed_region_only(make_emulator) -> None:
    emu: Emulator = make_emulator()
    instance_id = emu.launch_instance(name="web")
    emu.world.refuse("CopyImage", 1, region="ap-southeast-2")
    partial = emu.run(sample("request-basic.json", instance_id=instance_id), name="partial")
    assert partial.output["status"] == "PARTIAL"
    (source,) = [r["image_id"] for r in partial.output["regions"] if r["region"] == "us-east-1"]
    stops, copies = len(emu.world.sent("StopInstances")), len(emu.world.sent("CopyImage"))
    out = io.StringIO()

    code = cli.redrive(cli.parser().parse_args(["redrive", partial.execution_arn, "--poll-seconds", "0.01"]), out)

    text = out.getvalue()
    assert code == 0, text
    assert f"distributing {source} to ap-southeast-2" in text and "run status: SUCCEEDED" in text
    assert [r.region for r in emu.world.sent("CopyImage")[copies:]] == ["ap-southeast-2"]
    assert len(emu.world.sent("StopInstances")) == stops
    (again,) = [e for e in executions(emu) if e["name"] != "partial"]
    request = json.loads(emu.client("stepfunctions").describe_execution(executionArn=again["executionArn"])["input"])
    assert request == {
        "instance_id": instance_id,
        "regions": ["ap-southeast-2"],
        "share": {"accounts": ["111122223333"]},
        "source_image_id": source,
    }, "the run's own sharing, and nothing that touches the instance (its mode)"


def test_cli_runs_a_sample_request_file_with_the_instance_filled_in(make_emulator) -> None:
    emu: Emulator = make_emulator()
    instance_id = emu.launch_instance(name="web")
    out = io.StringIO()
    sample_file = str(ROOT / "events" / "request-basic.json")
    args = ["run", "--request", sample_file, "--instance-id", instance_id, "--name", "from-file"]
    code = cli.run(
        cli.parser().parse_args([*args, "--state-machine-arn", emu.state_machine_arn, "--poll-seconds", "0.01"]), out
    )
    assert code == 0, out.getvalue()
    sent = json.loads(
        emu.client("stepfunctions").describe_execution(executionArn=executions(emu)[0]["executionArn"])["input"]
    )
    assert sent == {**json.loads((ROOT / "events" / "request-basic.json").read_text()), "instance_id": instance_id}


def test_cli_redrives_only_a_partial_run(make_emulator) -> None:
    emu: Emulator = make_emulator()
    instance_id = emu.launch_instance(name="web")
    whole = emu.run(sample("request-basic.json", instance_id=instance_id), name="whole")
    out = io.StringIO()
    assert cli.redrive(cli.parser().parse_args(["redrive", whole.execution_arn]), out) == 1
    assert "execution whole is SUCCEEDED, not PARTIAL" in out.getvalue()
    assert [e["name"] for e in executions(emu)] == ["whole"], "nothing started"


def test_cli_finds_the_state_machine_and_builds_the_request(make_emulator) -> None:
    emu: Emulator = make_emulator()
    args = cli.parser().parse_args(
        [
            "run",
            "--instance-id",
            "i-0123456789abcdef0",
            "--regions",
            "eu-west-1",
            "--mode",
            "no-reboot",
            "--tag",
            "team=platform",
            "--share-ous",
            "ou-arn",
        ]
    )
    assert cli.build_request(args) == {
        "instance_id": "i-0123456789abcdef0",
        "mode": "no-reboot",
        "regions": ["eu-west-1"],
        "share": {"organizational_units": ["ou-arn"]},
        "tags": {"team": "platform"},
    }
    assert cli.find_state_machine(emu.client("stepfunctions"), None, None) == emu.state_machine_arn


@pytest.mark.slow
def test_bench_reports_counts_per_run() -> None:
    """The report's shape, on the scenarios that take different paths (`make bench` runs them all)."""
    out = io.StringIO()
    # `make bench` also runs 9 Regions and the launch check: the same paths, more of them.
    chosen = [scenario for scenario in bench.SCENARIOS if not scenario.name.startswith(("9 Regions", "launch check"))]
    assert bench.main(out, chosen, import_samples=1, with_scale=False) == 0
    report = out.getvalue()
    *sections, imports = report.split("\n== ")[1:]
    assert len(sections) == len(chosen) == 5
    assert imports.startswith("handler Init (median of 1): the import, the Tracer, the step's model and clients; ")
    timed = re.findall(r"^   (\w+) +\d+ ms +\d+\.\d\dx$", imports, re.MULTILINE)
    assert sorted(timed) == sorted(path.parent.name for path in (ROOT / "functions").glob("*/app.py"))
    parts = re.findall(r"^     (.+?) +(\d+) ms$", imports, re.MULTILINE)
    assert [name for name, _ in parts] == [name for name, _ in bench.INIT_PARTS]
    moved = sum(int(ms) for _, ms in parts[bench.ALWAYS_IMPORTED :])
    left_to_a_call = re.search(r"parts' (\d+) ms could take up to about (\d+) ms$", imports, re.MULTILINE)
    assert abs(int(left_to_a_call.group(1)) - moved) <= len(parts), "the parts Init took from the first call"
    assert int(left_to_a_call.group(2)) > 6 * int(left_to_a_call.group(1)), "a 256 MB call has a seventh of a vCPU"
    assert "(PARTIAL)" in sections[3]
    # The target scenario: each operation against the fewest the job needs.
    ratio = float(re.search(r"EC2 calls: \d+, minimum 20 \((\d\.\d\d)x\)", sections[1]).group(1))
    assert ratio <= 1.2, "the issue's target: EC2 calls at most 1.2 times the fewest the job needs"
    assert re.search(r"CopyImage\s+4  \(minimum 4\)$", sections[1], re.MULTILINE)
    for section in sections:
        transitions = int(re.search(r"state transitions: (\d+)", section).group(1))
        invocations = int(re.search(r"Lambda invocations: (\d+)", section).group(1))
        assert transitions > invocations > 0
        images = 2 if section.startswith("generalize") else 1  # the clone's seed, then the image
        assert re.search(rf"CreateImage\s+{images}(  \(minimum 1\))?$", section, re.MULTILINE)
        assert re.search(
            r"virtual elapsed: [\d.]+ min; EC2's own critical path \(stop, image, copies\): [\d.]+ min", section
        )
        assert int(re.search(r"history events: (\d+)", section).group(1)) > transitions
        dollars = float(
            re.search(rf"Step Functions \+ Lambda: \$([\d.]+) \({transitions} transitions, ", section).group(1)
        )
        assert 0 < dollars < 0.01, "a run's orchestration costs a fraction of a cent"
        checked = int(re.search(r"IAM: (\d+) grants checked, 0 calls refused", section).group(1))
        assert checked > invocations, "every call of every function was evaluated"
    assert re.search(r"RunInstances\s+1$", sections[4], re.MULTILINE)
    assert re.search(r"TerminateInstances\s+1$", sections[4], re.MULTILINE)


@pytest.mark.slow
def test_bench_reports_a_firing_over_many_instances() -> None:
    """The scale scenario's shape, small (`make bench` fires over 100 instances to 10 Regions)."""
    out = io.StringIO()
    bench.scale(out, instances=6, destinations=["eu-west-1", "ap-southeast-2"])
    report = out.getvalue()
    assert "{'SUCCEEDED': 6}" in report
    assert "instances the firing did not start: 0" in report
    assert "failed Regions: 0; instances not running at the end: 0" in report
    assert "most copies in flight into one Region: 6 (slots: 20)" in report
    assert re.search(r"CopyImage\s+12$", report, re.MULTILINE)
    assert "(AwaitCopySlot 12, CopyImage 12: " in report, "one wait and one copy per copy: none retried"


def test_cli_finds_the_state_machine_from_the_stack_outputs() -> None:
    import boto3
    from botocore.stub import Stubber

    cloudformation = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:ImagingStateMachine-AbC123"
    with Stubber(cloudformation) as stub:
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": "ami-factory",
                        "CreationTime": "2026-11-27T00:00:00Z",
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": [{"OutputKey": "StateMachineArn", "OutputValue": arn}],
                    }
                ]
            },
            {"StackName": "ami-factory"},
        )
        assert cli.find_state_machine(sfn=None, stack_name="ami-factory", cloudformation=cloudformation) == arn


def test_what_a_run_cost_counts_every_lambda_task_callbacks_included(emu: Emulator) -> None:
    instance_id = emu.launch_instance(name="web")
    emu.world.requests.clear()
    result = emu.run(sample("request-basic.json", instance_id=instance_id), name="counted")
    assert result.output["status"] == "SUCCEEDED", result.cause
    sfn = emu.client("stepfunctions")
    (execution,) = sfn.list_executions(stateMachineArn=emu.state_machine_arn)["executions"]
    events = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
    dollars, transitions, invocations = cli.run_cost(sfn, execution["executionArn"], Prices())
    # The state machine's Invoke calls, as the world saw them: the image and copy waits' included.
    assert invocations == len(emu.world.sent("Invoke")) > sum(e["type"] == "TaskSubmitted" for e in events) > 0
    assert transitions == sum(e["type"].endswith("StateEntered") for e in events)
    assert dollars > 0


def test_cli_redrives_copies_into_accounts_only_where_the_regions_failed(make_emulator) -> None:
    """A failed Region's account copies come with it; an account whose Regions all got their image
    is left out; a run where only account copies failed is not a redistribution."""
    emu: Emulator = make_emulator(AllowedCopyAccounts="111122223333,444455556666", CopyAccountExternalId="x" * 16)
    for account in ("111122223333", "444455556666"):
        emu.deploy_target_account(account)
    instance_id = emu.launch_instance(name="web")
    emu.world.refuse("CopyImage", 1, region="ap-southeast-2")
    accounts = [
        {"account_id": "111122223333"},
        {"account_id": "444455556666", "regions": ["eu-west-1"]},
    ]
    partial = emu.run(sample("request-basic.json", instance_id=instance_id, copy_to_accounts=accounts), name="p")
    assert partial.output["status"] == "PARTIAL", partial.cause
    described = emu.client("stepfunctions").describe_execution(executionArn=partial.execution_arn)

    request = cli.redistribution_request(described)

    assert request["regions"] == ["ap-southeast-2"]
    assert request["copy_to_accounts"] == [
        {"account_id": "111122223333", "regions": ["ap-southeast-2"], "kms_key_ids": {}}
    ]
    only_accounts = {**described, "output": json.dumps({**partial.output, "failed_regions": []})}
    with pytest.raises(ValueError, match="only its copies into accounts failed"):
        cli.redistribution_request(only_accounts)


def test_the_result_lists_each_accounts_own_copy_after_the_regions() -> None:
    summary = {
        "regions": [{"region": "eu-west-1", "image_id": "ami-1", "status": "AVAILABLE", "parameter_name": "/p"}],
        "accounts": [
            {
                "account_id": "111122223333",
                "region": "eu-west-1",
                "status": "DELIVERED",
                "image_id": "ami-2",
                "parameter_name": "/p",
            },
            {"account_id": "444455556666", "region": "eu-west-1", "status": "FAILED", "error": {"Error": "X"}},
        ],
    }

    lines = cli.result_table(summary).splitlines()

    assert lines[-4].split() == ["Account", "Region", "AMI", "id", "(the", "account's)", "State", "Parameter"]
    assert lines[-2].split() == ["111122223333", "eu-west-1", "ami-2", "delivered", "/p"]
    assert lines[-1].split() == ["444455556666", "eu-west-1", "-", "FAILED", "(X)", "-"]
    assert "Account" not in cli.result_table({"regions": summary["regions"]})
