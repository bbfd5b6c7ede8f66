"""Quarantine: a file that could not be delivered moves to the failed dir beside ``<name>.error.json``."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.pipeline.transfer import Recorder, TransferOutcome, TransferResult, deliver, write_beside

SIDECAR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class FailureReport:
    """Why a file was quarantined: the content of its ``.error.json``."""

    path: str
    attempts: int
    error: str
    error_type: str
    errno: int | None
    first_seen: float
    last_attempt: float

    def to_json(self) -> dict[str, Any]:
        """The sidecar document, timestamps as ISO-8601 with offset."""
        return {
            "path": self.path,
            "attempts": self.attempts,
            "error": self.error,
            "error_type": self.error_type,
            "errno": self.errno,
            "errno_name": _errno_name(self.errno),
            "first_seen": _iso(self.first_seen),
            "last_attempt": _iso(self.last_attempt),
            "quarantined_at": _iso(datetime.now(UTC).timestamp()),
            "action": "fix the cause, then POST /jobs/retry_failed/run or move the file back into the inbox",
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _errno_name(err: int | None) -> str | None:
    import errno as errno_mod

    return errno_mod.errorcode.get(err) if err is not None else None


def move_to_failed(
    src: Path, rel: str, failed_root: Path, fsync: bool, recorder: Recorder | None = None
) -> TransferResult:
    """Move the source into the failed dir with its relative path kept (blocking); `recorder` writes
    and flushes the record row before the source goes.
    """
    return deliver(src, rel, failed_root, on_conflict="rename", fsync=fsync, abort=threading.Event(), recorder=recorder)


def write_sidecar(failed_root: Path, dest: Path, report: FailureReport, fsync: bool = True) -> Path:
    """Write ``<dest>.error.json`` beside the quarantined file `dest` (blocking; atomic).

    Not through aiofiles: the sidecar is written relative to folder fds, by the same walk as the
    move itself, so that a symlink in the failed dir cannot redirect it (delivery semantics 10).
    """
    rel = str(dest.relative_to(failed_root))
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    return write_beside(failed_root, rel, dest.name + SIDECAR_SUFFIX, text.encode("utf-8"), fsync)


def quarantined(result: TransferResult) -> bool:
    """True when the move into the failed dir placed the file (or found it there already)."""
    return result.outcome in (TransferOutcome.DELIVERED, TransferOutcome.DUPLICATE)
