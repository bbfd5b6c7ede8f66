"""The closed registry of job kinds: ``rescan``, ``purge``, ``retry_failed``, ``sweep``.

Each kind is an async function of the live :class:`KindContext` and its validated arguments that
returns the run's ``detail``. File-system work runs in a thread and checks the context's `abort`
event between files, so a shutdown never waits for a long walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from watcher.jobs.specs import ARGS_MODELS, PurgeArgs, SweepArgs
from watcher.pipeline.netfs import is_silly_rename
from watcher.pipeline.quarantine import SIDECAR_SUFFIX
from watcher.pipeline.rescan import regular_files, sweep_temp_files
from watcher.pipeline.transfer import (
    ConflictRefused,
    OutboxUnavailable,
    SourceChanged,
    TransferAborted,
    TransferOutcome,
    deliver,
    is_temp_name,
)

Detail = dict[str, Any]


@dataclass(frozen=True)
class KindContext:
    """The parts of the running service a job kind may use."""

    inbox: Path
    outbox: Path
    failed: Path
    fsync: bool
    rescan: Callable[[], Awaitable[int]]
    abort: threading.Event


class KindFailed(Exception):
    """A run that did part of its work: recorded as ``error`` with its detail."""

    def __init__(self, message: str, detail: Detail) -> None:
        """Keep the message and what was done."""
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class Kind:
    """One entry of the registry."""

    name: str
    args: type[BaseModel]
    run: Callable[[KindContext, Any], Awaitable[Detail]]


def in_progress(name: str) -> bool:
    """Names that belong to a write in progress: our delivery temp files and sidecar temp files, and
    NFS silly-rename names (``.nfs…``: a removed file that a process on some client still holds open).
    """
    return (
        is_temp_name(name)
        or (name.startswith(".") and name.endswith(".partial") and SIDECAR_SUFFIX in name)
        or is_silly_rename(name)
    )


def _remove_emptied_dirs(root: Path, touched: set[str]) -> int:
    """Remove the folders (never `root`) that only held files this run removed; deepest first."""
    top = str(root)
    candidates: set[str] = set()
    for folder in touched:
        while folder != top and folder.startswith(top + os.sep):
            candidates.add(folder)
            folder = os.path.dirname(folder)
    removed = 0
    for folder in sorted(candidates, key=lambda p: p.count(os.sep), reverse=True):
        try:
            os.rmdir(folder)  # only succeeds when empty: a folder that got a new file stays
            removed += 1
        except OSError:
            continue
    return removed


def purge_files(root: Path, older_than: float, abort: threading.Event) -> Detail:
    """Remove regular files under `root` whose mtime is older than `older_than` s (blocking)."""
    now = time.time()
    files = freed = errors = 0
    first_error = ""
    touched: set[str] = set()
    for entry, st in regular_files(root, abort):
        if in_progress(entry.name):
            continue
        if older_than > 0 and now - st.st_mtime < older_than:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors += 1
            first_error = first_error or f"{entry.path}: {exc.strerror}"
            continue
        files += 1
        freed += st.st_size
        touched.add(os.path.dirname(entry.path))
    detail: Detail = {
        "files_removed": files,
        "bytes_removed": freed,
        "dirs_removed": _remove_emptied_dirs(root, touched),
    }
    if errors:
        detail["errors"] = errors
        raise KindFailed(f"{errors} file(s) could not be removed, e.g. {first_error}", detail)
    return detail


def retry_failed(failed: Path, inbox: Path, fsync: bool, abort: threading.Event) -> Detail:
    """Move every quarantined file back to its relative path in the inbox and drop its sidecar.

    The move is the pipeline's own transfer (link then unlink on one filesystem; otherwise a copy
    to a hidden temporary name, fsync, then link into place) with ``on_conflict="fail"``: a file
    already waiting in the inbox under that name is never overwritten, and the quarantined one stays.
    Sidecars never go to the inbox. The files get fresh attempts: the intake has forgotten them.
    """
    moved = sidecars = conflicts = errors = 0
    first_error = ""
    for entry, _ in list(regular_files(failed, abort)):
        name = entry.name
        if name.endswith(SIDECAR_SUFFIX) or in_progress(name):
            continue
        rel = Path(entry.path).relative_to(failed).as_posix()
        try:
            result = deliver(Path(entry.path), rel, inbox, on_conflict="fail", fsync=fsync, abort=abort)
        except TransferAborted:
            break
        except ConflictRefused:
            conflicts += 1
            continue
        except (OutboxUnavailable, SourceChanged, OSError) as exc:
            errors += 1
            first_error = first_error or f"{rel}: {exc}"
            continue
        if result.outcome in (TransferOutcome.DELIVERED, TransferOutcome.DUPLICATE):
            moved += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path + SIDECAR_SUFFIX)
                sidecars += 1
    detail: Detail = {"files_moved": moved, "sidecars_removed": sidecars, "conflicts": conflicts}
    if errors:
        detail["errors"] = errors
        raise KindFailed(f"{errors} file(s) could not be moved back, e.g. {first_error}", detail)
    return detail


async def _rescan(ctx: KindContext, _: BaseModel) -> Detail:
    return {"files_found": await ctx.rescan()}


async def _purge(ctx: KindContext, args: PurgeArgs) -> Detail:
    root = ctx.outbox if args.target == "outbox" else ctx.failed
    detail = await asyncio.to_thread(purge_files, root, args.older_than_seconds, ctx.abort)
    return {"target": args.target, **detail}


async def _retry_failed(ctx: KindContext, _: BaseModel) -> Detail:
    return await asyncio.to_thread(retry_failed, ctx.failed, ctx.inbox, ctx.fsync, ctx.abort)


async def _sweep(ctx: KindContext, args: SweepArgs) -> Detail:
    # The inbox too: a cross-filesystem retry_failed interrupted by a crash leaves its hidden
    # temporary file there (ignored by the default excludes, but litter all the same).
    def sweep_all() -> Detail:
        files = freed = 0
        for root in (ctx.outbox, ctx.failed, ctx.inbox):
            n, size = sweep_temp_files(root, args.older_than_seconds)
            files, freed = files + n, freed + size
        return {"files_removed": files, "bytes_removed": freed}

    return await asyncio.to_thread(sweep_all)


KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        "rescan": Kind("rescan", ARGS_MODELS["rescan"], _rescan),
        "purge": Kind("purge", ARGS_MODELS["purge"], _purge),
        "retry_failed": Kind("retry_failed", ARGS_MODELS["retry_failed"], _retry_failed),
        "sweep": Kind("sweep", ARGS_MODELS["sweep"], _sweep),
    }
)
