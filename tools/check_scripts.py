"""Checks the scripts AMI Factory sends to instances (``make lint``): every shell script is
shellcheck clean, every PowerShell script parses with no error node (tree-sitter-powershell).

    python tools/check_scripts.py [FILE ...]     # default: every script in src/ami_factory/scripts
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "src" / "ami_factory" / "scripts"
POWERSHELL = Language(tree_sitter_powershell.language())


def parse_powershell(text: str) -> Node:
    return Parser(POWERSHELL).parse(text.encode("utf-8")).root_node


def powershell_problems(text: str) -> list[str]:
    """Every place the parser could not make sense of: ``line N: what``."""
    return [
        f"line {node.start_point[0] + 1}: {'missing ' + node.type if node.is_missing else 'cannot parse ' + repr((node.text or b'').decode(errors='replace')[:60])}"
        for node in _nodes(parse_powershell(text))
        if node.is_error or node.is_missing
    ]


def _nodes(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _nodes(child)


def shell_problems(path: Path) -> list[str]:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    result = subprocess.run([shellcheck, "--format=gcc", str(path)], capture_output=True, text=True, check=False)
    return [line for line in result.stdout.splitlines() if line.strip()] + (
        [result.stderr.strip()] if result.returncode not in (0, 1) else []
    )


def problems(path: Path) -> list[str]:
    if path.suffix == ".ps1":
        return [f"{path}: {problem}" for problem in powershell_problems(path.read_text(encoding="utf-8"))]
    if path.suffix == ".sh":
        return shell_problems(path)
    return [f"{path}: neither .sh nor .ps1"]


def main(paths: list[str]) -> int:
    files = [Path(path) for path in paths] or sorted(SCRIPTS.glob("*.*"))
    found = [problem for path in files for problem in problems(path)]
    for problem in found:
        print(problem)
    print(f"scripts: {len(files)} checked, {len(found)} problems", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
