"""Completeness rules: when is a file provably complete? (pure logic, no I/O)

A close-after-write event or a rename into the inbox proves it at once. Otherwise the file must be
quiet: its size and mtime unchanged, and either its mtime at least `settle` seconds in the past or
our own observation of it unchanged for `settle` seconds (clock skew on network filesystems makes
mtime alone untrustworthy). In both cases no local process may hold it open for writing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """What one stat saw: size and mtime, and when (monotonic and wall clock)."""

    size: int
    mtime_ns: int
    seen_mono: float
    seen_wall: float


def unchanged(a: Snapshot, b: Snapshot) -> bool:
    """True when two stats of a file saw the same size and mtime."""
    return a.size == b.size and a.mtime_ns == b.mtime_ns


def is_quiet(first: Snapshot, now: Snapshot, settle: float) -> bool:
    """True when the file has not changed for `settle` seconds, judged from two stats."""
    if not unchanged(first, now):
        return False
    mtime_age = now.seen_wall - now.mtime_ns / 1e9
    if mtime_age >= 0 and mtime_age >= settle:
        return True
    return now.seen_mono - first.seen_mono >= settle


def next_check_in(first: Snapshot, now: Snapshot, settle: float) -> float:
    """Seconds until `is_quiet` could become true, if nothing changes meanwhile."""
    mtime_age = now.seen_wall - now.mtime_ns / 1e9
    by_mtime = settle - mtime_age if mtime_age >= 0 else settle
    by_watch = settle - (now.seen_mono - first.seen_mono)
    return max(0.0, min(by_mtime, by_watch))
