"""The docs hold together: every relative link in the README and docs/ reaches a file (and a heading
of it, for a #fragment), and the README's first screen is the quick start and the deploy steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text())) if "://" not in target]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_its_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.relative_to(ROOT)}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    assert sorted(str(page.relative_to(ROOT)) for page in (ROOT / "docs").glob("*.md") if page not in linked) == []


def test_the_readme_opens_with_the_two_commands_and_the_deploy_steps() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:90])
    for command in ("make demo", "make test", "sam build", "sam deploy --guided"):
        assert command in first_screen, f"{command} is not on the README's first screen"


def test_slugs_follow_githubs_rule() -> None:
    assert slug("What a run costs: `make bench`") == "what-a-run-costs-make-bench"
    assert slug("1. Tag an instance") == "1-tag-an-instance"
    assert slug("Driving it with the AWS CLI: `make serve`") == "driving-it-with-the-aws-cli-make-serve"
