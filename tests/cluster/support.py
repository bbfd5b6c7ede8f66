"""What the cluster tests share: looking at the shared folders and at the shared record, and the one
list of broken promises (:func:`faults`) that every exactly-once scenario ends with.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.fs import digest_file
from tests.support.process import WatcherProcess
from watcher.pipeline.transfer import is_temp_name


def files_under(root: Path) -> dict[str, Path]:
    """Every non-folder below `root`, by relative path (folders that vanish meanwhile are skipped)."""
    found: dict[str, Path] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = path
    return found


def cluster_view(w: WatcherProcess) -> dict[str, Any]:
    """GET /cluster of one replica."""
    r = w.http.get("/cluster")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def record_rows(database: str) -> list[tuple[str, str, str, int, str | None]]:
    """(path, outcome, target, size, sha256) of every row of the shared delivery record."""
    import psycopg

    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT path, outcome, target, size, sha256 FROM watcher_deliveries").fetchall()
    return [(str(p), str(o), str(t), int(s), None if d is None else str(d)) for p, o, t, s, d in rows]


def faults(shared: Path, expected: Mapping[str, str], database: str, one_row_each: bool = True) -> list[str]:
    """Every broken promise once the cluster is done, in words (empty when all hold).

    `expected`: inbox-relative path → SHA-256 of the bytes written. Promised: every file in the outbox
    once under its own name with those bytes, and nothing else; nothing left in the inbox, in any
    claims folder or under a temporary name, nothing quarantined; the record has a delivered (or
    duplicate) row for every file (exactly one with `one_row_each`) and no row claims bytes that the
    outbox does not hold (size, and SHA-256 when the replicas computed it).
    """
    found: list[str] = []
    outbox = files_under(shared / "outbox")
    delivered = {rel: path for rel, path in outbox.items() if not is_temp_name(path.name)}
    found += [f"missing from the outbox: {rel}" for rel in sorted(set(expected) - set(delivered))]
    found += [f"in the outbox but never written: {rel}" for rel in sorted(set(delivered) - set(expected))]
    found += [
        f"bytes differ: {rel}"
        for rel in sorted(set(expected) & set(delivered))
        if digest_file(delivered[rel]) != expected[rel]
    ]
    found += [f"left in the inbox or a claims folder: {rel}" for rel in sorted(files_under(shared / "inbox"))]
    for name in ("outbox", "failed", "inbox"):
        found += [
            f"temporary name left in {name}: {rel}"
            for rel in files_under(shared / name)
            if is_temp_name(Path(rel).name)
        ]
    found += [f"quarantined: {rel}" for rel in sorted(files_under(shared / "failed"))]

    rows = record_rows(database)
    per_path = collections.Counter(path for path, outcome, *_ in rows if outcome in ("delivered", "duplicate"))
    for rel in sorted(expected):
        n = per_path[rel]
        if n == 0 or (one_row_each and n > 1):
            found.append(f"{n} delivered/duplicate rows for {rel}")
    for path, outcome, target, size, sha256 in rows:
        placed = delivered.get(target)
        if outcome not in ("delivered", "duplicate"):
            found.append(f"a {outcome} row for {path}")
        elif placed is None:
            found.append(f"the record says {path} went to {target}, which the outbox does not hold")
        elif placed.stat().st_size != size or (sha256 is not None and digest_file(placed) != sha256):
            found.append(f"the record's size or digest of {target} is not what the outbox holds")
    return found
