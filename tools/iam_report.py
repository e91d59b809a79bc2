"""Over-privilege, measured: per role, what template.yaml grants against what the test suite used.

``make iam-report`` runs the suite with every emulator recording, per role, the statements of its
policies and which of them allowed a call (``AMI_FACTORY_IAM_USAGE``), then prints this report. A
grant no path used is listed with its justification, or as UNUSED: remove it, or justify it here.
The same holds for what a handler makes at Init: a service in its ``clients=`` that no path called
is listed as UNCALLED (the emulator already fails a call to a service not listed).

    python tools/iam_report.py USAGE_DIR [--strict]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Grants no handler call can use, and why they stay. Keys: (role logical id or "*", action).
JUSTIFIED: dict[tuple[str, str], str] = {
    ("*", "logs:*"): "Lambda's runtime writes the function's logs (AWSLambdaBasicExecutionRole, added by SAM)",
    ("*", "xray:*"): "Tracing: Active - Lambda sends the traces (AWSXrayWriteOnlyAccess, added by SAM)",
    ("ImagingStateMachineRole", "logs:*"): "Step Functions sets up its log delivery when the stack deploys",
    ("ImagingStateMachineRole", "xray:*"): "Step Functions sends the state machine's traces",
}


def justification(role: str, action: str) -> str | None:
    service = action.split(":", 1)[0]
    for key in ((role, action), ("*", action), (role, f"{service}:*"), ("*", f"{service}:*"), (role, "*")):
        if key in JUSTIFIED:
            return JUSTIFIED[key]
    return None


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(folder.glob("usage-*.jsonl")) for line in path.read_text().splitlines()]


def load(folder: Path) -> dict[str, dict[str, set[tuple[str, str]]]]:
    """Per role: granted (statement, action) pairs and used (statement, action) pairs, over every emulator."""
    roles: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for record in records(folder):
        if "role" not in record:
            continue
        role = roles.setdefault(record["role"], {"granted": set(), "used": set()})
        for grant in record["granted"]:
            role["granted"] |= {(grant["statement"], action) for action in grant["actions"]}
        role["used"] |= {(statement, action) for action, statement in record["used"]}
    return roles


def uncalled_clients(folder: Path) -> dict[str, list[str]]:
    """Per function: the services its handler loads at Init (``clients=``) that no call of any test used."""
    made: dict[str, set[str]] = {}
    called: dict[str, set[str]] = {}
    for record in records(folder):
        if "function" in record:
            made.setdefault(record["function"], set()).update(record["made_at_init"])
            called.setdefault(record["function"], set()).update(record["called"])
    return {function: sorted(made[function] - called[function]) for function in sorted(made)}


def covers(grant: str, action: str) -> bool:
    from ami_factory_local.iam import like

    return like(grant, action, ignore_case=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("usage", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a grant is unused and unjustified")
    args = parser.parse_args()
    roles = load(args.usage)
    if not roles:
        print(f"no usage recorded in {args.usage}", file=sys.stderr)
        return 1
    unjustified = 0
    # A managed policy's statement is one grant, whichever of the roles it is attached to used it.
    used_anywhere = {pair for role in roles.values() for pair in role["used"]}
    for role in sorted(roles):
        granted, used = roles[role]["granted"], used_anywhere
        used_actions = sorted({action for _, action in roles[role]["used"]})
        print(f"{role}: {len({a for _, a in granted})} actions granted, {len(used_actions)} used")
        for action in used_actions:
            print(f"    used    {action}")
        kept: dict[str, list[str]] = {}
        for statement, grant in sorted(granted, key=lambda pair: (pair[1], pair[0])):
            if any(s == statement and covers(grant, action) for s, action in used):
                continue
            why = justification(role, grant)
            if why:
                kept.setdefault(why, []).append(grant)
            else:
                unjustified += 1
                print(f"    UNUSED  {grant} ({statement})")
        for why, grants in kept.items():
            print(f"    kept    {', '.join(sorted(set(grants)))}: {why}")
    print(f"{unjustified} grant(s) no test path used and nothing justifies")
    uncalled = {function: services for function, services in uncalled_clients(args.usage).items() if services}
    for function, services in uncalled.items():
        print(f"UNCALLED  {function} makes clients at Init for {', '.join(services)}, which no test path called")
    print(f"{len(uncalled)} function(s) with clients no test path called")
    return 1 if args.strict and (unjustified or uncalled) else 0


if __name__ == "__main__":
    sys.exit(main())
