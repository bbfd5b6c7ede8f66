"""Every relative link of README.md and docs/*.md, and every runbook_url of the rules, resolves.

A link resolves when its file (or folder) exists and its ``#anchor``, if any, is the GitHub anchor of a
heading of that file. A runbook_url points into this repository on GitHub, at a heading of
docs/operations.md.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GITHUB = "https://github.com/watcher/watcher/blob/main/"
RUNBOOKS = REPO / "docs" / "operations.md"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).+?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks: a link or a heading in a code block is neither."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of a markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for line in prose_lines(doc.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_anchor(match.group(1))
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def links(doc: Path) -> list[str]:
    """The link and image targets of a markdown file, outside code."""
    return [
        target
        for line in prose_lines(doc.read_text(encoding="utf-8"))
        for target in LINK.findall(CODE_SPAN.sub("", line))
    ]


def broken(doc: Path, target: str) -> str | None:
    """Why a relative link of doc does not resolve, or None when it does (or is not relative)."""
    if SCHEME.match(target):
        return None
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    if not file.exists():
        return f"{file.relative_to(REPO) if file.is_relative_to(REPO) else file} does not exist"
    if anchor:
        if file.suffix != ".md":
            return f"an anchor into {file.name}, which is not markdown"
        if anchor not in anchors(file):
            return f"no heading of {file.relative_to(REPO)} has the anchor #{anchor}"
    return None


def test_the_docs_exist_and_have_links() -> None:
    names = {doc.relative_to(REPO).as_posix() for doc in DOCS}
    assert {"README.md", "docs/operations.md", "docs/http-api.md"} <= names, names
    # The parser sees the README's links and the runbooks' cross-references (else it is wrong, not the docs).
    assert len(links(REPO / "README.md")) >= 7 and any(t.startswith("#runbook-") for t in links(RUNBOOKS))


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [
        f"{doc.relative_to(REPO)}: ({target}) {why}"
        for doc in DOCS
        for target in links(doc)
        if (why := broken(doc, target))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = REPO / "README.md"
    linked = {(readme.parent / target.partition("#")[0]).resolve() for target in links(readme)}
    unlinked = [doc.relative_to(REPO).as_posix() for doc in DOCS[1:] if doc.resolve() not in linked]
    assert not unlinked, f"docs the README does not lead to: {unlinked}"


def test_every_runbook_url_points_at_a_heading_of_the_operations_doc(rules: dict[str, Any]) -> None:
    urls = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert urls, "rules.yml has no alert"
    problems = []
    for alert, url in urls.items():
        path, _, anchor = url.removeprefix(GITHUB).partition("#")
        if not url.startswith(GITHUB) or REPO / path != RUNBOOKS:
            problems.append(f"{alert}: {url} is not {GITHUB}{RUNBOOKS.relative_to(REPO).as_posix()}#...")
        elif anchor not in anchors(RUNBOOKS):
            problems.append(f"{alert}: no heading of docs/operations.md has the anchor #{anchor}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Runbook: WatcherDown", "runbook-watcherdown"),
        ("Misfires, overlap, retention", "misfires-overlap-retention"),
        ("Delivery guarantees, in plain words", "delivery-guarantees-in-plain-words"),
        ("Raise the inotify limits on the nodes", "raise-the-inotify-limits-on-the-nodes"),
        ("`watcher_ready` and snake_case", "watcher_ready-and-snake_case"),
        ("Targets (watcher, medians)", "targets-watcher-medians"),
    ],
)
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor
