"""Record rows from what the pipeline knows about a file when it leaves the inbox."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from watcher.logging import printable
from watcher.pipeline.intake import Tracked
from watcher.pipeline.transfer import TransferOutcome, TransferResult
from watcher.record.store import DeliveryRecord, Entry, RecordOutcome


def delivery_entry(item: Tracked, result: TransferResult, root: Path, replica: str, now: float) -> Entry | None:
    """The row of a delivered or duplicate file (None for any other outcome)."""
    outcome: RecordOutcome
    if result.outcome is TransferOutcome.DELIVERED:
        outcome = "delivered"
    elif result.outcome is TransferOutcome.DUPLICATE:
        outcome = "duplicate"
    else:
        return None
    return Entry(
        path=printable(item.rel),
        outcome=outcome,
        target=_relative(result.dest, root, item.rel),
        size=result.size,
        sha256=result.sha256,
        first_seen=item.first_seen_wall,
        # Found complete: never before it was first seen (a walk dates an old file by its mtime).
        completed_at=max(item.ready_wall, item.first_seen_wall) if item.ready_wall else now,
        finished_at=now,
        attempts=item.attempts + 1,
        error=None,
        replica=replica,
        source=item.source,
    )


def quarantine_entry(
    item: Tracked, result: TransferResult, root: Path, replica: str, error: str, attempt_began: float
) -> Entry:
    """The row of a file moved to the failed dir; `completed_at` is when its last attempt began."""
    now = time.time()
    return Entry(
        path=printable(item.rel),
        outcome="quarantined",
        target=_relative(result.dest, root, item.rel),
        size=result.size,
        sha256=result.sha256,
        first_seen=item.first_seen_wall,
        completed_at=attempt_began,
        finished_at=now,
        attempts=max(item.attempts, 1),
        error=error,
        replica=replica,
        source=item.source,
    )


def _relative(dest: Path | None, root: Path, fallback: str) -> str:
    # String work, not Path.relative_to: this runs once per delivered file.
    if dest is not None:
        text, base = str(dest), str(root).rstrip("/")
        if text.startswith(base) and text[len(base) : len(base) + 1] == "/":
            return printable(text[len(base) + 1 :])
    return printable(fallback)


class BatchRecorder:
    """The :class:`~watcher.pipeline.transfer.Recorder` of one batch: its rows, then their flush."""

    def __init__(self, record: DeliveryRecord, rows: Callable[[list[tuple[int, TransferResult]]], list[Entry]]) -> None:
        """`rows` turns the placed files (index in the batch, result) into record rows."""
        self._record = record
        self._rows = rows

    def write(self, placed: list[tuple[int, TransferResult]]) -> None:
        """Write the rows in one transaction (RecordUnavailable when the record refuses)."""
        self._record.write(self._rows(placed))

    def flush(self, synced_devs: set[int]) -> None:
        """Make the rows durable unless the batch's syncfs covered the record's filesystem."""
        self._record.flush(synced_devs)
