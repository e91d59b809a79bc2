"""``ami_factory_cli timeline EXECUTION``: where a run's time went, drawn in the terminal from its
execution history: one row per step that took time, the run's own steps first, then each Region's
(waits for a copy slot, copies, launch checks, sharing), each a bar on the run's time axis."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

import boto3

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions import SFNClient
    from mypy_boto3_stepfunctions.type_defs import HistoryEventTypeDef

RUN = "run"  # the row label of the steps that are the whole run's (no Region of their own)
TIMED_STATES = ("TaskStateEntered", "WaitStateEntered", "MapStateEntered")


@dataclass(frozen=True)
class Span:
    row: str  # a Region, or RUN
    state: str
    start: datetime
    end: datetime
    order: int  # the entry's place in the history: steps that start together keep their order

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def history(sfn: SFNClient, execution_arn: str) -> list[HistoryEventTypeDef]:
    pages = sfn.get_paginator("get_execution_history").paginate(
        executionArn=execution_arn, PaginationConfig={"PageSize": 1000}
    )
    return [event for page in pages for event in page["events"]]


def spans(events: list[HistoryEventTypeDef]) -> list[Span]:
    """Each Task, Wait or Map state that ended, from its entry to its exit. Parallel branches interleave
    in the history, so an exit is paired with its entry by walking back its branch (previousEventId)."""
    by_id = {event["id"]: event for event in events}
    found = []
    for event in events:
        if not event["type"].endswith("StateExited"):
            continue
        name = event.get("stateExitedEventDetails", {}).get("name", "")
        entered = by_id.get(event.get("previousEventId", 0))
        while entered is not None and not (
            entered["type"].endswith("StateEntered") and entered.get("stateEnteredEventDetails", {}).get("name") == name
        ):
            entered = by_id.get(entered.get("previousEventId", 0))
        if entered is None or entered["type"] not in TIMED_STATES:
            continue
        row = _region(entered.get("stateEnteredEventDetails", {}).get("input", "")) or RUN
        found.append(Span(row, name, entered["timestamp"], event["timestamp"], entered["id"]))
    return found


def _region(state_input: str) -> str:
    """The Region a Map item's step works in: its input's ``region`` (the item, ``{"name": …}``)."""
    try:
        value = json.loads(state_input)
    except ValueError:
        return ""
    region = value.get("region") if isinstance(value, dict) else None
    if isinstance(region, dict):
        region = region.get("name")
    return region if isinstance(region, str) else ""


def draw(found: list[Span], width: int = 48) -> list[str]:
    """The spans as rows of bars on one axis, the run's own steps first, then the Regions by name."""
    if not found:
        return ["no step has ended yet"]
    start = min(span.start for span in found)
    total = max((max(span.end for span in found) - start).total_seconds(), 1.0)
    order = sorted(found, key=lambda span: (span.row != RUN, span.row, span.start, span.order))
    lines = [f"{'':<16} {'step':<22} {'start':>7} {'took':>8}  0{'':<{width - 1}}{_duration(total)}"]
    for span in order:
        begin = int((span.start - start).total_seconds() / total * width)
        length = max(1, round(span.seconds / total * width))
        bar = " " * min(begin, width - 1) + "█" * min(length, width - min(begin, width - 1))
        offset = _duration((span.start - start).total_seconds())
        lines.append(f"{span.row:<16} {span.state:<22} {offset:>7} {_duration(span.seconds):>8}  |{bar:<{width}}|")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"


def timeline(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    session = boto3.session.Session(region_name=args.region or args.execution_arn.split(":")[3])
    sfn = session.client("stepfunctions", endpoint_url=args.endpoint_url)
    described = sfn.describe_execution(executionArn=args.execution_arn)
    print(f"execution {described['name']}: {described['status']}", file=out)
    for line in draw(spans(history(sfn, args.execution_arn))):
        print(line, file=out)
    return 0
