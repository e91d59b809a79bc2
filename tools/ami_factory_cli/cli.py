"""The command line for people: boto3, and AMI Factory's own prices (``ami_factory.pricing``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import boto3

from ami_factory.aws import volume_gib
from ami_factory.errors import error_message
from ami_factory.pricing import Prices, estimate_images, load_prices, orchestration_cost

from .doctor import doctor
from .timeline import history, timeline

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_ec2.type_defs import FilterTypeDef, ImageTypeDef
    from mypy_boto3_stepfunctions import SFNClient
    from mypy_boto3_stepfunctions.type_defs import (
        DescribeExecutionOutputTypeDef,
        GetExecutionHistoryInputTypeDef,
        HistoryEventTypeDef,
    )


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request: a file's (``--request``, e.g. a sample from events/) with the instance filled in,
    else the one the options describe."""
    if args.request:
        with open(args.request, encoding="utf-8") as file:
            loaded: dict[str, Any] = json.load(file)
        return {**loaded, "instance_id": args.instance_id}
    request: dict[str, Any] = {"instance_id": args.instance_id, "mode": args.mode}
    if args.regions is not None:
        request["regions"] = [region for region in args.regions.split(",") if region]
    share = {
        "accounts": _csv(args.share_accounts),
        "organizations": _csv(args.share_organizations),
        "organizational_units": _csv(args.share_ous),
        "public": args.public,
    }
    request["share"] = {key: value for key, value in share.items() if value}
    for field in ("image_name", "description"):
        if getattr(args, field):
            request[field] = getattr(args, field)
    if args.tag:
        request["tags"] = dict(tag.split("=", 1) for tag in args.tag)
    if args.cleanup:
        request["cleanup"] = True
    if args.confirm_generalize_in_place:
        request["confirm_generalize_in_place"] = True
    windows = {"admin_password": args.admin_password, "admin_password_parameter": args.admin_password_parameter}
    clone = {
        "instance_type": args.clone_instance_type,
        "subnet_id": args.clone_subnet,
        "security_group_ids": _csv(args.clone_security_groups),
        "instance_profile": args.clone_instance_profile,
    }
    for field, options in (("windows", windows), ("clone", clone)):
        if any(options.values()):
            request[field] = {key: value for key, value in options.items() if value}
    return request


def _csv(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


def find_state_machine(sfn: SFNClient, stack_name: str | None, cloudformation: CloudFormationClient | None) -> str:
    """The stack's output when there is a stack; else the one state machine named *ImagingStateMachine*."""
    if stack_name and cloudformation is not None:
        outputs = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0].get("Outputs", [])
        for output in outputs:
            if output["OutputKey"] == "StateMachineArn":
                return str(output["OutputValue"])
    machines = [
        machine["stateMachineArn"]
        for page in sfn.get_paginator("list_state_machines").paginate()
        for machine in page["stateMachines"]
        if "ImagingStateMachine" in machine["name"]
    ]
    if len(machines) != 1:
        raise SystemExit(f"found {len(machines)} AMI Factory state machines; pass --state-machine-arn")
    return str(machines[0])


def execution_name(instance_id: str) -> str:
    return f"{instance_id}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"


def new_events(sfn: SFNClient, execution_arn: str, after_id: int) -> list[HistoryEventTypeDef]:
    """Events with an id above ``after_id``, oldest first: read newest-first and stop at the seen ones,
    so following a long run costs one small page per poll, not the whole history."""
    kwargs: GetExecutionHistoryInputTypeDef = {"executionArn": execution_arn, "maxResults": 100, "reverseOrder": True}
    fresh: list[HistoryEventTypeDef] = []
    while True:
        page = sfn.get_execution_history(**kwargs)
        fresh.extend(event for event in page["events"] if event["id"] > after_id)
        if not page.get("nextToken") or any(event["id"] <= after_id for event in page["events"]):
            return sorted(fresh, key=lambda event: event["id"])
        kwargs["nextToken"] = page["nextToken"]


WAITS = {
    "WaitForCleanup": "command",
    "WaitForInstanceStop": "instance",
    "WaitForImage": "image",
    "WaitForCopy": "image",
    "WaitForSeed": "seed",
    "WaitForClone": "clone",
    "WaitForGeneralize": "generalize",
    "WaitForLaunch": "launched",
}
# Waits that end on AWS's own event (a callback task), not on a check every poll interval: what it waits to hear.
EVENT_WAITS = {
    "WaitForImage": "until EC2 says it is available",
    "WaitForCopy": "until EC2 says it is available",
    "WaitForSeed": "until EC2 says it is available",
    "WaitForInstanceStop": "until EC2 says it has stopped",
    "WaitForGeneralize": "until EC2 says it has shut down",
    "WaitForCleanup": "until Systems Manager says it has ended",
}
UNTIL = {
    "WaitForCleanup": "(its clean-up command)",
    "WaitForSeed": "(the seed image for the clone)",
    "WaitForClone": "(the clone) to come online in SSM",
    "WaitForGeneralize": "to generalize and shut itself down",
    "WaitForLaunch": "(launch check) to boot and pass its status checks",
}


SLOT_WAIT = re.compile(r"^waiting for a copy slot in (\S+):")


def describe_event(event: HistoryEventTypeDef) -> str | None:
    """One line for each step a user cares about, with the Region when it runs inside Distribute."""
    if (slot := _copy_slot_wait(event)) is not None:  # a copy queued for its Region's semaphore
        return slot
    failed = event.get("taskFailedEventDetails", {})
    if failed.get("error") == "CopySlotBusyError":  # EC2's own copy quota is full: tried again later
        message = error_message(failed.get("cause")) or "waiting for a copy slot"
        waiting = SLOT_WAIT.match(message)
        return f"  [{waiting.group(1)}] {message}" if waiting else f"  {message}"
    details = event.get("stateEnteredEventDetails")
    if not details:
        return None
    name, kind = details["name"], event["type"].removesuffix("StateEntered")
    try:
        state_input = json.loads(details.get("input") or "{}")
    except ValueError:
        state_input = {}
    region = state_input.get("region")
    prefix = f"  [{region['name']}] " if isinstance(region, dict) else "  "
    if name == "RegionSucceeded":
        return f"{prefix}done: {state_input.get('image', {}).get('image_id')}"
    if name == "RegionFailed":
        return f"{prefix}FAILED: {state_input.get('error', {}).get('Error')}"
    if name in WAITS:
        subject = state_input.get(WAITS[name], {})
        if subject.get("polls", 0) == 0:  # announce a wait once, not every poll
            what = subject.get("image_id") or subject.get("instance_id")
            until = UNTIL.get(name, f"({subject.get('state')})")
            if name in EVENT_WAITS:
                return f"{prefix}waiting for {what} {until} {EVENT_WAITS[name]}"
            return f"{prefix}waiting for {what} {until}, checking every {state_input.get('poll_seconds')} s"
        return None
    if kind != "Task" or name.startswith("Check"):
        return None
    return f"{prefix}{name}"


def _copy_slot_wait(event: HistoryEventTypeDef) -> str | None:
    """What a copy's wait for a slot said when it began, if it found none free (its Lambda's answer, in
    the TaskSubmitted event); a copy that got its slot at once says nothing."""
    submitted = event.get("taskSubmittedEventDetails", {})
    try:
        answer = json.loads(submitted.get("output") or "{}").get("Payload") or {}
    except (ValueError, AttributeError):
        return None
    if not isinstance(answer, dict) or answer.get("waiting") is not True:
        return None
    return f"  [{answer.get('region')}] {answer.get('message') or 'waiting for a copy slot'}"


def follow(
    sfn: SFNClient, execution_arn: str, out: TextIO, poll_seconds: float, sleep: Callable[[float], None] = time.sleep
) -> DescribeExecutionOutputTypeDef:
    last_id = 0
    said: set[str] = set()  # a copy waiting for a slot tries every few minutes: said once
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        for event in new_events(sfn, execution_arn, last_id):
            last_id = event["id"]
            line = describe_event(event)
            if not line or line in said:
                continue
            print(line, file=out, flush=True)
            if "waiting for a copy slot" in line:
                said.add(line)
        if described["status"] in TERMINAL:
            return described
        sleep(poll_seconds)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, the first row a header underlined with dashes."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def result_table(summary: dict[str, Any]) -> str:
    header = ("Region", "AMI id", "State", "Shared with", "Parameter")
    return table(
        [header]
        + [
            (
                region["region"],
                region.get("image_id") or "-",
                region["status"].lower()
                if region["status"] != "FAILED"
                else f"FAILED ({(region.get('error') or {}).get('Error')})",
                ", ".join(region.get("shared_with") or []) or "-",
                region.get("parameter_name") or "-",
            )
            for region in summary.get("regions", [])
        ]
    ) + (f"\n\n{account_table(summary['accounts'])}" if summary.get("accounts") else "")


def account_table(accounts: list[dict[str, Any]]) -> str:
    """copy_to_accounts: each account's own copy, per Region."""
    header = ("Account", "Region", "AMI id (the account's)", "State", "Parameter")
    return table(
        [header]
        + [
            (
                cell["account_id"],
                cell["region"],
                cell.get("image_id") or "-",
                "delivered" if cell["status"] == "DELIVERED" else f"FAILED ({(cell.get('error') or {}).get('Error')})",
                "-" if cell.get("parameter_note") else cell.get("parameter_name") or "-",
            )
            for cell in accounts
        ]
    )


LAMBDA_GB = 0.25  # the template's MemorySize (256 MB), for the run's Lambda GB-seconds
LAMBDA_ENDS = ("TaskSucceeded", "TaskFailed", "TaskTimedOut", "TaskSubmitted")


def run_cost(sfn: SFNClient, execution_arn: str, prices: Prices) -> tuple[float, int, int]:
    """What the run itself cost: (dollars, state transitions, Lambda invocations), from its history."""
    events = history(sfn, execution_arn)
    transitions = sum(1 for event in events if event["type"].endswith("StateEntered"))
    # Every TaskStarted is one Lambda invocation. It runs until its task ends, or, for a task that waits
    # for a callback (.waitForTaskToken), until it has handed over its token (TaskSubmitted).
    started = {event["id"]: event["timestamp"] for event in events if event["type"] == "TaskStarted"}
    seconds = 0.0
    for event in events:
        if event["type"] in LAMBDA_ENDS and event.get("previousEventId") in started:
            seconds += max((event["timestamp"] - started[event["previousEventId"]]).total_seconds(), 0.001)
    invocations = len(started)
    return orchestration_cost(transitions, invocations, seconds * LAMBDA_GB, prices), transitions, invocations


def cost_lines(cost: dict[str, Any], run: tuple[float, int, int] | None) -> str:
    gib = sum(region["snapshot_gib"] for region in cost["regions"])
    lines = [
        f"keeping these images: ${cost['monthly_standard']:.2f}/month ({gib:g} GiB of snapshots at most, in "
        f"{len(cost['regions'])} Regions; archive tier ${cost['monthly_archive']:.2f}/month)",
        f"copying them: ${cost['copy_transfer_once']:.2f} once (inter-Region transfer)",
    ]
    if run:
        lines.append(f"this run: ${run[0]:.4f} ({run[1]} state transitions, {run[2]} Lambda invocations)")
    return "\n".join(lines)


def report(
    described: DescribeExecutionOutputTypeDef, out: TextIO, sfn: SFNClient | None = None, prices: Prices | None = None
) -> int:
    status = described["status"]
    print(f"\nexecution {described['name']}: {status}", file=out)
    if status != "SUCCEEDED":
        print(f"error: {described.get('error')}: {error_message(described.get('cause'))}", file=out)
        return 1
    summary = json.loads(described.get("output") or "{}")
    print(result_table(summary), file=out)
    if summary.get("cost"):
        run = run_cost(sfn, described["executionArn"], prices or Prices()) if sfn is not None else None
        print("\n" + cost_lines(summary["cost"], run), file=out)
    print(
        f"\nrun status: {summary.get('status')}; instance {summary.get('instance_id')} is {summary.get('instance_state')}",
        file=out,
    )
    return 0 if summary.get("status") == "SUCCEEDED" else 2


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    session = boto3.session.Session(region_name=args.region)
    sfn = session.client("stepfunctions", endpoint_url=args.endpoint_url)
    cloudformation = session.client("cloudformation", endpoint_url=args.endpoint_url) if args.stack_name else None
    arn = args.state_machine_arn or find_state_machine(sfn, args.stack_name, cloudformation)
    return start(sfn, arn, build_request(args), args, out)


def start(
    sfn: SFNClient, state_machine_arn: str, request: dict[str, Any], args: argparse.Namespace, out: TextIO
) -> int:
    """Start a run of ``request``; with ``--follow`` (the default), say how it goes and how it ended."""
    name = args.name or execution_name(request["instance_id"])
    execution_arn = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(request))[
        "executionArn"
    ]
    print(f"started {name}\n  {execution_arn}", file=out, flush=True)
    if not args.follow:
        return 0
    return report(follow(sfn, execution_arn, out, args.poll_seconds), out, sfn, load_prices(args.prices))


# What only imaging the instance uses (a run that distributes an existing image never touches it), and
# adopt_family: redriving must never take a family back from an instance that adopted it since.
NOT_REDRIVEN = ("mode", "cleanup", "confirm_generalize_in_place", "windows", "clone", "volumes", "adopt_family")


def redistribution_request(described: DescribeExecutionOutputTypeDef) -> dict[str, Any]:
    """The request that distributes a PARTIAL run's image to the Regions that failed, with the run's own
    sharing, protection, tags and checks. Raises ValueError (what to do instead) for any other run."""
    name, status = described["name"], described["status"]
    summary = json.loads(described.get("output") or "{}") if status == "SUCCEEDED" else {}
    if summary.get("status") != "PARTIAL":
        raise ValueError(
            f"execution {name} is {summary.get('status', status)}, not PARTIAL: only a run that delivered its image in "
            f"some Regions is redriven. Start a new run (ami_factory_cli run) to image the instance again"
        )
    request = {key: value for key, value in json.loads(described["input"]).items() if key not in NOT_REDRIVEN}
    home = described["executionArn"].split(":")[3]
    delivered = [r["image_id"] for r in summary["regions"] if r["region"] == home and r["status"] == "AVAILABLE"]
    source = request.get("source_image_id") or next(iter(delivered), None)  # a redrive's own source, once more
    if not source:
        raise ValueError(
            f"execution {name} has no image in {home}, the stack's Region, to copy from: start a new run "
            f"(ami_factory_cli run) for the Regions {summary['failed_regions']}"
        )
    failed = summary["failed_regions"]
    if not failed:  # only copies into accounts failed: their Regions have the image, which is not copied again
        cells = [f"{c['account_id']} {c['region']}" for c in summary.get("accounts", []) if c["status"] == "FAILED"]
        raise ValueError(
            f"execution {name} delivered its image in every Region; only its copies into accounts failed ({cells}): "
            f"redrive distributes to failed Regions. Start a run with copy_to_accounts for those accounts"
        )
    templates = [t for t in request.get("launch_templates", []) if t.get("region") in failed]
    request.pop("launch_templates", None)  # only the failed Regions' templates: the others have their version
    # Copies into accounts in the failed Regions only (the others got theirs, or failed on their own).
    accounts = [
        {**target, "regions": [r for r in target.get("regions") or failed if r in failed]}
        for target in request.pop("copy_to_accounts", [])
    ]
    accounts = [target for target in accounts if target["regions"]]
    for target in accounts:
        target["kms_key_ids"] = {r: key for r, key in target.get("kms_key_ids", {}).items() if r in failed}
    return {
        **request,
        "source_image_id": source,
        "regions": failed,
        **({"launch_templates": templates} if templates else {}),
        **({"copy_to_accounts": accounts} if accounts else {}),
    }


def decide_function(session: boto3.session.Session, args: argparse.Namespace) -> str:
    """The DecideApproval function: given, or from the stack's outputs."""
    if args.function_name:
        return str(args.function_name)
    if not args.stack_name:
        raise ValueError("name the stack (--stack-name) or the DecideApproval function (--function-name)")
    cloudformation = session.client("cloudformation", endpoint_url=args.endpoint_url)
    outputs = cloudformation.describe_stacks(StackName=args.stack_name)["Stacks"][0].get("Outputs", [])
    found = [o["OutputValue"] for o in outputs if o["OutputKey"] == "DecideApprovalFunctionName"]
    if not found:
        raise ValueError(f"stack {args.stack_name} has no DecideApprovalFunctionName output: is it AMI Factory's?")
    return found[0]


def answer(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """approve: the run shares and publishes its images; reject: they are removed as on a failure. The
    answer goes through the DecideApproval function, which records it where ShareImage looks."""
    session = boto3.session.Session(region_name=args.region or args.execution_arn.split(":")[3])
    decision = {
        "execution_arn": args.execution_arn,
        "decision": args.command,
        "reason": getattr(args, "reason", None) or "",
        "approver": args.approver or "",
    }
    try:
        function = decide_function(session, args)
    except ValueError as error:
        print(f"cannot {args.command}: {error}", file=out)
        return 1
    called = session.client("lambda", endpoint_url=args.endpoint_url).invoke(
        FunctionName=function, Payload=json.dumps(decision)
    )
    result = json.loads(called["Payload"].read() or b"{}")
    if called.get("FunctionError"):
        print(f"cannot {args.command}: {error_message(json.dumps(result))}", file=out)
        return 1
    print(f"{args.command}d {args.execution_arn}", file=out)
    return 0


def redrive(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    session = boto3.session.Session(region_name=args.region or args.execution_arn.split(":")[3])
    sfn = session.client("stepfunctions", endpoint_url=args.endpoint_url)
    described = sfn.describe_execution(executionArn=args.execution_arn)
    try:
        request = redistribution_request(described)
    except ValueError as error:
        print(f"cannot redrive: {error}", file=out)
        return 1
    print(f"distributing {request['source_image_id']} to {', '.join(request['regions'])}", file=out)
    if args.dry_run:
        print(json.dumps(request, indent=2), file=out)
        return 0
    return start(sfn, described["stateMachineArn"], request, args, out)


def estimate(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """What existing images cost to keep: the ids given, or every image AMI Factory made of an instance."""
    session = boto3.session.Session(region_name=args.region)
    source = session.region_name
    found: list[tuple[str, ImageTypeDef]] = []
    for region in [source, *_csv(args.regions)]:
        ec2 = session.client("ec2", region_name=region, endpoint_url=args.endpoint_url)
        if args.image_id:
            images = ec2.describe_images(ImageIds=args.image_id)["Images"] if region == source else []
        else:
            filters: list[FilterTypeDef] = [
                {"Name": "tag:ami-factory:source-instance", "Values": [args.instance_id]},
                {"Name": "tag:ami-factory:managed", "Values": ["true"]},
            ]
            images = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        found += [(region, image) for image in images]
    if not found:
        print("no images found", file=out)
        return 1
    prices = load_prices(args.prices)
    rows = [("Region", "AMI id", "Name", "GiB", "$/month", "archive $/month")]
    total = 0.0
    for region, image in sorted(found, key=lambda item: (item[0], item[1].get("CreationDate", ""))):
        gib = volume_gib(image)
        cost = estimate_images({region: gib}, region, prices).regions[0]
        total += cost.monthly_standard
        rows.append(
            (
                region,
                image["ImageId"],
                image.get("Name", ""),
                f"{gib}",
                f"{cost.monthly_standard:.2f}",
                f"{cost.monthly_archive:.2f}",
            )
        )
    print(table(rows) + f"\n\n{len(found)} images: ${total:.2f}/month at most (standard tier)", file=out)
    return 0


def _starts_and_follows(command: argparse.ArgumentParser) -> None:
    """The options of a command that starts a run and follows it."""
    command.add_argument("--name", help="execution name (default: INSTANCE-UTCTIMESTAMP)")
    command.add_argument("--region", help="the stack's Region")
    command.add_argument("--endpoint-url", help="e.g. http://127.0.0.1:5005 for the local emulator")
    command.add_argument("--no-follow", dest="follow", action="store_false", help="start and return")
    command.add_argument("--poll-seconds", type=float, default=5.0)
    command.add_argument("--prices", help="JSON price overrides (see src/ami_factory/pricing.py)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ami-factory", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="image an instance and distribute the image")
    start.add_argument("--instance-id", required=True)
    start.add_argument(
        "--request",
        metavar="FILE",
        help="a request file (e.g. events/request-basic.json) whose instance_id "
        "--instance-id replaces; the other request options are not used with it",
    )
    start.add_argument("--regions", help="comma-separated target Regions (default: the stack's DefaultRegions)")
    start.add_argument("--mode", choices=["stop", "no-reboot", "generalize", "generalize-in-place"], default="stop")
    start.add_argument("--cleanup", action="store_true", help="clean temp files and caches through SSM first")
    start.add_argument(
        "--confirm-generalize-in-place", action="store_true", help="accept that the instance loses its identity"
    )
    start.add_argument(
        "--admin-password", choices=["random", "specify", "do-nothing"], help="Windows, generalize modes"
    )
    start.add_argument("--admin-password-parameter", help="SSM SecureString holding the password (with specify)")
    start.add_argument("--clone-instance-type")
    start.add_argument("--clone-subnet")
    start.add_argument("--clone-security-groups", help="comma-separated security group ids")
    start.add_argument("--clone-instance-profile", help="instance profile name or ARN")
    start.add_argument("--image-name", help="image family name (default: the instance's Name tag)")
    start.add_argument("--description")
    start.add_argument("--share-accounts", help="comma-separated account ids (must be in AllowedShareAccounts)")
    start.add_argument("--share-organizations", help="comma-separated organization ARNs")
    start.add_argument("--share-ous", help="comma-separated OU ARNs")
    start.add_argument("--public", action="store_true", help="make the image public (only if the stack allows it)")
    start.add_argument("--tag", action="append", metavar="KEY=VALUE", help="extra image tag (repeatable)")
    start.add_argument("--state-machine-arn")
    start.add_argument("--stack-name", help="find the state machine from this stack's outputs")
    _starts_and_follows(start)
    again = commands.add_parser(
        "redrive", help="distribute a PARTIAL run's image to the Regions that failed, without touching the instance"
    )
    again.add_argument("execution_arn", help="the PARTIAL run's execution ARN")
    again.add_argument("--dry-run", action="store_true", help="print the request, start nothing")
    _starts_and_follows(again)
    for verb, what in (("approve", "share and publish"), ("reject", "remove")):
        decide = commands.add_parser(verb, help=f"{what} the images of a run that waits for approval")
        decide.add_argument("execution_arn", help="the run's execution ARN (the approval notification names it)")
        decide.add_argument("--stack-name", help="find the DecideApproval function from this stack's outputs")
        decide.add_argument("--function-name", help="the DecideApproval function (its name or ARN)")
        decide.add_argument("--approver", help="who answers, for the run's ledger and log (CloudTrail has the caller)")
        decide.add_argument("--region", help="the stack's Region (default: the ARN's)")
        decide.add_argument("--endpoint-url", help="e.g. http://127.0.0.1:5005 for the local emulator")
        if verb == "reject":
            decide.add_argument("--reason", help="why, for the run's error (up to 256 characters)")
    cost = commands.add_parser("estimate", help="what existing images cost to keep")
    which = cost.add_mutually_exclusive_group(required=True)
    which.add_argument("--instance-id", help="every image AMI Factory made of this instance")
    which.add_argument("--image-id", action="append", help="an image in --region (repeatable)")
    cost.add_argument("--regions", help="comma-separated other Regions to look in")
    cost.add_argument("--region", help="the source Region")
    cost.add_argument("--endpoint-url")
    cost.add_argument("--prices", help="JSON price overrides")
    drawn = commands.add_parser("timeline", help="draw where a run's time went, per Region, from its history")
    drawn.add_argument("execution_arn")
    drawn.add_argument("--region", help="default: the execution's")
    drawn.add_argument("--endpoint-url")
    check = commands.add_parser("doctor", help="check a deployed stack and its account before the first run")
    check.add_argument("--stack-name", required=True)
    check.add_argument("--region", help="the stack's Region (default: the session's)")
    check.add_argument("--endpoint-url")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "approve": answer,
        "doctor": doctor,
        "estimate": estimate,
        "redrive": redrive,
        "reject": answer,
        "run": run,
        "timeline": timeline,
    }
    return commands[args.command](args)
