"""``ami-factory-local``: the emulator's commands.

- ``demo``: image an instance on the in-process emulator with the ``ami-factory`` CLI, live
  (``--generalize``: a Windows instance, sysprepped on a temporary clone).
- ``serve``: the emulator on a local port, for the AWS CLI and SDKs (``--endpoint-url``).
- ``bench``: run scenarios and report API calls, transitions, invocations and virtual time.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import bench, demo, samples
from .server import EmulatorServer


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(
        prog="ami-factory-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True)
    demo_command = commands.add_parser("demo", help="image a demo instance on the emulator, with the CLI")
    demo_command.add_argument("--generalize", action="store_true", help="a Windows instance, sysprepped on a clone")
    serve = commands.add_parser("serve", help="serve the emulator on a local port")
    serve.add_argument("--port", type=int, default=5005)
    serve.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="template parameter override (repeatable)",
    )
    commands.add_parser("bench", help="report per-run counts for a few scenarios")
    args = top.parse_args(argv)
    # moto's interpreter logs every failed task with a stack trace; the CLI output says it better.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    if args.command == "demo":
        return demo.main(sys.stdout, generalize=args.generalize)
    if args.command == "bench":
        return bench.main(sys.stdout)
    overrides = dict(item.split("=", 1) for item in args.parameter)
    parameters = {**demo.DEMO_PARAMETERS, **samples.PARAMETERS, **overrides}
    EmulatorServer(port=args.port, parameters=parameters).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
