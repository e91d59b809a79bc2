"""Prints the mutation score of the last ``mutmut run`` (``make mutation``), per module and in all.

Killed counts timeouts too (a mutant that hangs a run is caught by the run's bounds); a mutant with
no test that reaches it counts as survived, since nothing would notice it.

    python tools/mutation_score.py [--min PERCENT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.__main__ import status_by_exit_code

MUTANTS = Path(__file__).resolve().parents[1] / "mutants"
CAUGHT = {"killed", "timeout", "caught by type check"}


def outcomes() -> dict[str, Counter[str]]:
    """Status counts by module, from mutmut's .meta files."""
    found: dict[str, Counter[str]] = {}
    for meta in sorted(MUTANTS.glob("src/**/*.py.meta")):
        module = str(meta.relative_to(MUTANTS / "src")).removesuffix(".py.meta").replace("/", ".")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        found[module] = Counter(status_by_exit_code[code] for code in codes.values())
    return found


def score(counts: Counter[str]) -> tuple[int, int]:
    total = sum(counts.values()) - counts["not checked"] - counts["skipped"]
    return sum(counts[status] for status in CAUGHT), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = parser.parse_args()
    found = outcomes()
    if not found:
        print("no mutation results: run `make mutation`", file=sys.stderr)
        return 1
    everything: Counter[str] = Counter()
    for module, counts in found.items():
        caught, total = score(counts)
        everything += counts
        print(
            f"{module:32} {caught:5}/{total:<5} {100 * caught / max(total, 1):5.1f}%  survived {counts['survived']:<3}"
            f" not checked {counts['not checked']}"
        )
    caught, total = score(everything)
    percent = 100 * caught / max(total, 1)
    print(f"{'mutation score':32} {caught:5}/{total:<5} {percent:5.1f}%  (`mutmut results` lists the survivors)")
    if everything["not checked"]:
        # mutmut keeps each result until its function changes: `make mutation` again goes on from here.
        print(f"{everything['not checked']} mutants not checked yet: the score is of those checked")
    return 1 if percent < args.min else 0


if __name__ == "__main__":
    sys.exit(main())
