"""``make mutation``: mutmut in two passes, so that a run over the rules takes an hour, not a day.

mutmut runs every test that reaches a mutated function, fastest first, until one fails. The rules are
reached by nearly every workflow test (200 to 300 tests, 200 s and more, per function), so each
surviving mutant cost minutes and a whole run most of a day on 2 cores. So:

1. ``run``: each mutant is tried against the ``FASTEST_TESTS`` fastest tests that reach its function
   (nearly every mutant that dies, dies there);
2. ``recheck``: the mutants that survived are tried again against the ``RECHECK_TESTS`` fastest
   (every test, for most functions).

A mutant that only a slower test would catch still counts as survived: the score is a lower bound of
mutmut's own, never more.

    python tools/mutation.py run --max-children 2
    python tools/mutation.py recheck [NAME...]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from mutmut import __main__ as mutmut_main

FASTEST_TESTS = 20
RECHECK_TESTS = 100
RECHECKING = "AMI_FACTORY_MUTATION_RECHECK"  # set by ``recheck``
MUTANTS = Path(__file__).resolve().parents[1] / "mutants"

_run_tests = mutmut_main.PytestRunner.run_tests


def _run_fastest(self: mutmut_main.PytestRunner, *, mutant_name: str | None, tests: Iterable[str]) -> int:
    if mutant_name is not None:  # the clean run takes every test
        tests = list(tests)[: RECHECK_TESTS if os.environ.get(RECHECKING) else FASTEST_TESTS]
    return _run_tests(self, mutant_name=mutant_name, tests=tests)


mutmut_main.PytestRunner.run_tests = _run_fastest  # type: ignore[method-assign]


def survivors() -> list[str]:
    """The mutants the last run left alive, by name."""
    names: list[str] = []
    for meta in sorted(MUTANTS.glob("src/**/*.py.meta")):
        codes: dict[str, int] = json.loads(meta.read_text())["exit_code_by_key"]
        names += [name for name, code in codes.items() if mutmut_main.status_by_exit_code[code] == "survived"]
    return names


def main(arguments: list[str]) -> int:
    if arguments[:1] == ["recheck"]:
        names = arguments[1:] or survivors()
        if not names:
            print("no surviving mutants to check again")
            return 0
        os.environ[RECHECKING] = "1"
        arguments = ["run", "--max-children", "2", *names]
    sys.argv = ["mutmut", *arguments]
    mutmut_main.cli()  # click exits with mutmut's status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
