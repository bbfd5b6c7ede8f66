"""Why is this file where it is? The answer of ``GET /files/{path}``, from what the service knows now.

While the file is in the inbox: intake's tracking (settling, queued, transferring, retrying), the
writers that hold it open (/proc), the gate (delivery paused), the include and exclude rules, and
whether a walk or an event has seen it at all. Once it has left: the newest record's outcome. The
records of the path come along either way, newest first.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.cluster.claims import claimed_by
from watcher.logging import printable
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.intake import Intake
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.pipeline.skipped import RESERVED_DIR, rejection
from watcher.pipeline.writers import writers_of
from watcher.record.store import DeliveryRecord, Entry

MAX_PATH_BYTES = 4096


class BadPath(ValueError):
    """A path that cannot name a file in the inbox (absolute, ``..``, NUL, too long): 400."""


class UnknownPath(LookupError):
    """Neither in the inbox nor in the record: 404."""


def check_relative(rel: str) -> str:
    """`rel` as an inbox-relative path, or BadPath saying what is wrong with it."""
    if not rel:
        raise BadPath("path: give a path relative to the inbox, e.g. GET /files/reports/q3.csv")
    if "\0" in rel:
        raise BadPath("path: contains a NUL byte")
    if len(os.fsencode(rel)) > MAX_PATH_BYTES:
        raise BadPath(f"path: longer than {MAX_PATH_BYTES} bytes")
    if rel.startswith("/"):
        raise BadPath("path: must be relative to the inbox, not absolute")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise BadPath("path: no empty, '.' or '..' segments")
    return rel


def lstat_beneath(base: Path, rel: str) -> os.stat_result | None:
    """``lstat`` of ``base/rel`` without following a symlinked folder on the way (None when absent).

    A folder on the way that is a symlink or not a folder counts as absent: asking about a path
    must not tell anything about what lies outside the inbox.
    """
    parts = rel.split("/")
    try:
        dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                return None
            os.close(dfd)
            dfd = nfd
        try:
            return os.lstat(parts[-1], dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
                return None
            raise
    finally:
        os.close(dfd)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_SHOWN = {"settling": "waiting", "queued": "queued", "running": "transferring", "retrying": "retrying"}
_KIND = {stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}


@dataclass
class Explainer:
    """Answers for one service: its intake, gate, rules and record."""

    inbox: Path
    settle_seconds: float
    intake: Intake
    gate: OutboxGate
    path_filter: PathFilter
    record: DeliveryRecord
    next_rescan: Callable[[], Awaitable[float | None]]  # Unix time of the next rescan, if scheduled
    replica: str | None = None  # cluster mode: this replica's id (files in transit sit in claims folders)

    async def explain(self, rel: str) -> dict[str, Any]:
        """``{"path", "state", "detail", "records"}`` for the inbox-relative `rel`; UnknownPath if unknown."""
        rel = check_relative(rel)
        st = await asyncio.to_thread(lstat_beneath, self.inbox, rel) if not _reserved(rel) else None
        records = await asyncio.to_thread(self.record.history, printable(rel))
        owner = None
        if self.replica is not None and (st is None or stat.S_ISDIR(st.st_mode)) and not _reserved(rel):
            owner = await asyncio.to_thread(claimed_by, self.inbox, rel)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            state, detail = await self._in_inbox(rel, st)
        elif owner is not None:
            state, detail = self._claimed(rel, owner)
        elif records:
            state, detail = records[0].outcome, _left(records[0])
        else:
            raise UnknownPath(f"{printable(rel)!r} is neither in the inbox nor in the delivery record")
        return {
            "path": printable(rel),
            "state": state,
            "detail": detail,
            "records": [entry.to_json() for entry in records],
        }

    async def status(self) -> dict[str, Any]:
        """Waiting files by state, the oldest named and explained, the gate, the latest failures."""
        tracked = list(self.intake.tracked.values())
        by_state: dict[str, int] = {}
        for item in tracked:
            shown = "paused" if item.state == "queued" and not self.gate.is_open else _SHOWN[item.state]
            by_state[shown] = by_state.get(shown, 0) + 1
        oldest: dict[str, Any] | None = None
        if tracked:
            first = min(tracked, key=lambda t: t.first_seen_wall)
            try:
                about = await self.explain(first.rel)
                state, detail = about["state"], about["detail"]
            except (UnknownPath, BadPath):
                state, detail = _SHOWN[first.state], "gone from the inbox meanwhile"
            oldest = {
                "path": printable(first.rel),
                "age_seconds": round(time.time() - first.first_seen_wall, 3),
                "state": state,
                "detail": detail,
            }
        failures = await asyncio.to_thread(self.record.latest_failures)
        return {
            "delivery": "running" if self.gate.is_open else f"paused: {self.gate.reason}",
            "waiting": {"total": len(tracked), "by_state": by_state, "oldest": oldest},
            "latest_failures": [entry.to_json() for entry in failures],
        }

    async def _in_inbox(self, rel: str, st: os.stat_result) -> tuple[str, str]:
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFREG:
            what = _KIND.get(kind, "a device")
            return "ignored", f"it is {what}: only regular files are delivered (symlinks are never followed)"
        if not self.path_filter.accepts(rel):
            return "excluded", f"kept out by {rejection(self.path_filter, rel)[1]}"
        item = self.intake.tracked.get(rel)
        if item is None:
            return "waiting", await self._not_seen()
        if item.state == "settling":
            return "waiting", await self._settling(st)
        if item.state == "retrying":
            left = max(0.0, item.retry_at - time.time())
            return (
                "retrying",
                f"attempt {item.attempts} failed: {item.last_error}; next try at {_iso(item.retry_at)} "
                f"(in {left:.1f} s)",
            )
        if not self.gate.is_open:
            return "paused", f"delivery is paused: {self.gate.reason}; it resumes by itself once that is fixed"
        if item.state == "running":
            return "transferring", "a worker is moving it to the outbox now"
        return "queued", f"complete since {_iso(item.ready_wall)}; waiting for a free worker"

    def _claimed(self, rel: str, owner: str) -> tuple[str, str]:
        """Cluster mode: the file is in the claims folder of replica `owner`."""
        item = self.intake.tracked.get(rel) if owner == self.replica else None
        if item is not None and item.state == "retrying":
            return "retrying", f"attempt {item.attempts} failed: {item.last_error}; next try at {_iso(item.retry_at)}"
        if item is not None and not self.gate.is_open:
            return "paused", f"delivery is paused: {self.gate.reason}; it resumes by itself once that is fixed"
        return "transferring", f"claimed by replica {owner}, which is moving it to the outbox"

    async def _settling(self, st: os.stat_result) -> str:
        holders = await asyncio.to_thread(writers_of, (st.st_dev, st.st_ino))
        if holders:
            who = ", ".join(f"pid {pid} ({program})" for pid, program in holders)
            return f"held open for writing by {who}: it is delivered once closed"
        quiet = max(0.0, time.time() - st.st_mtime)
        return (
            f"not provably complete yet: quiet for {min(quiet, self.settle_seconds):.1f} of "
            f"WATCHER_SETTLE_SECONDS={self.settle_seconds:g} s (size and mtime must stay unchanged)"
        )

    async def _not_seen(self) -> str:
        upcoming = await self.next_rescan()
        when = f"the next rescan at {_iso(upcoming)}" if upcoming else "the next rescan (the rescan job is off)"
        return f"not seen yet (no event reported it and no walk has reached it); {when} will find it"


def _reserved(rel: str) -> bool:
    return rel.split("/", 1)[0] == RESERVED_DIR


def _left(entry: Entry) -> str:
    if entry.outcome == "quarantined":
        return f"quarantined at {_iso(entry.finished_at)} after {entry.attempts} attempt(s): {entry.error}"
    if entry.outcome == "duplicate":
        return f"identical bytes were already at {entry.target}; removed from the inbox at {_iso(entry.finished_at)}"
    return f"delivered to {entry.target} at {_iso(entry.finished_at)}"
