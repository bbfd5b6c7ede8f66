"""The integrity check run after every benchmark run.

Every expected file must be in the outbox exactly once under its relative path with the sha256 the
writer recorded; the inbox must hold no file except those the workload expects to stay (the idle
workload's excluded dot-files); no temporary file (any name starting with ``.``) may be left in the outbox;
any other file in the outbox (a duplicate such as ``name (1)``, a stray) is a fault too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def walk_files(root: Path) -> Iterator[str]:
    """Relative paths (with ``/``) of every non-directory entry under ``root``, symlinks not followed."""
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in files:
            yield name if rel == "." else f"{rel}/{name}"
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                yield name if rel == "." else f"{rel}/{name}"


def _is_temp(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith(".")


@dataclass
class IntegrityReport:
    """What the check found; ``faults`` is the number of problems (0 is a pass)."""

    expected: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    temp_left: list[str] = field(default_factory=list)
    inbox_left: list[str] = field(default_factory=list)

    @property
    def faults(self) -> int:
        """Total number of problems."""
        return sum(len(x) for x in (self.missing, self.corrupt, self.unexpected, self.temp_left, self.inbox_left))

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.faults == 0

    def summary(self) -> str:
        """``ok`` or a short list of the kinds of problems with counts and an example each."""
        if self.ok:
            return "ok"
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("corrupt", self.corrupt),
            ("unexpected", self.unexpected),
            ("temp left", self.temp_left),
            ("left in inbox", self.inbox_left),
        ):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {sorted(items)[0]!r})")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (at most 20 names per list)."""
        return {
            "ok": self.ok,
            "faults": self.faults,
            "expected": self.expected,
            **{
                k: sorted(getattr(self, k))[:20]
                for k in ("missing", "corrupt", "unexpected", "temp_left", "inbox_left")
            },
        }


def check(
    inbox: Path,
    outbox: Path,
    expected: Mapping[str, str],
    inbox_allowed: frozenset[str] = frozenset(),
) -> IntegrityReport:
    """Compare ``outbox`` with ``expected`` (relative path -> sha256) and look for leftovers in ``inbox``."""
    report = IntegrityReport(expected=len(expected))
    present = set()
    for rel in walk_files(outbox):
        if _is_temp(rel):
            report.temp_left.append(rel)
        elif rel not in expected:
            report.unexpected.append(rel)
        else:
            present.add(rel)
            if sha256_file(outbox / rel) != expected[rel]:
                report.corrupt.append(rel)
    report.missing = [rel for rel in expected if rel not in present]
    report.inbox_left = [rel for rel in walk_files(inbox) if rel not in inbox_allowed]
    return report
