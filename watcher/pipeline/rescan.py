"""Streaming walks of the inbox (start-up scan, the rescan job, new folders) and the outbox sweep.

The walk runs in a worker thread and hands over fixed-size batches, so a tree of a million files
never sits in memory as one listing, and the event loop is never blocked by ``scandir``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from watcher.cluster.claims import RESERVED
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.netfs import is_silly_rename
from watcher.pipeline.transfer import is_temp_name

BATCH = 512


class Found(NamedTuple):
    """A regular file met by a walk."""

    rel: str
    size: int
    mtime_ns: int
    dev: int
    ino: int


SkipKind = Literal["file", "dir", "symlink", "special"]


@dataclass
class WalkNotes:
    """What a walk passed by, besides the files it yields: paths it skipped (``file`` and ``dir``: by
    the filter) and the empty folders it removed. Filled in the walk's thread between two batches and
    read on the loop after each one, never at the same time.
    """

    prune_age: float | None = None  # remove empty folders unchanged for this many seconds
    skipped: list[tuple[str, SkipKind]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


def _prune(root: str, rel_dir: str, before: float, pruned: list[str]) -> None:
    """Remove the empty folder `rel_dir` when it is unchanged since `before`, then each parent that
    this leaves empty and that was unchanged since `before` too (never the root).

    ``rmdir`` removes only an empty folder, atomically: a file or folder a client makes in it at any
    moment before makes it fail (ENOTEMPTY), and the folder stays. The age rule covers a client that
    made the folder and has not written yet: its mtime is fresh.
    """
    old = False  # a parent's age is read before our rmdir of its child makes its mtime fresh
    while rel_dir:
        parent_rel = rel_dir.rpartition("/")[0]
        try:
            if not old and os.lstat(os.path.join(root, rel_dir)).st_mtime >= before:
                return
            old = bool(parent_rel) and os.lstat(os.path.join(root, parent_rel)).st_mtime < before
            os.rmdir(os.path.join(root, rel_dir))
        except OSError:  # not empty (a client got there first), gone, or not ours to remove
            return
        pruned.append(rel_dir)
        rel_dir = parent_rel if old else ""


def _walk(
    root: Path, start_rel: str, path_filter: PathFilter, recursive: bool, notes: WalkNotes | None = None
) -> Iterator[list[Found]]:
    stack = [start_rel]
    batch: list[Found] = []
    skipped = notes.skipped if notes is not None else None
    prune_before = time.time() - notes.prune_age if notes is not None and notes.prune_age is not None else None
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else str(root)
        try:
            entries = os.scandir(folder)
        except OSError:
            continue  # vanished or unreadable; readiness reports an unreadable inbox root
        empty = True
        with entries:
            for entry in entries:
                empty = False
                if not rel_dir and entry.name == RESERVED:
                    continue  # <inbox>/.watcher/: the service's own (claims), never delivered nor reported
                if is_silly_rename(entry.name):
                    continue  # an NFS client's .nfs… name: a removed file still open somewhere, never ours
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            if path_filter.accepts_dir(rel):
                                stack.append(rel)
                            elif skipped is not None:
                                skipped.append((rel, "dir"))
                        continue
                    if not path_filter.accepts(rel):
                        if skipped is not None:
                            skipped.append((rel, "file"))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        # Symlinks, fifos, sockets and devices are never delivered.
                        if skipped is not None:
                            skipped.append((rel, "symlink" if entry.is_symlink() else "special"))
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                batch.append(Found(rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if empty and rel_dir and prune_before is not None and notes is not None:
            _prune(str(root), rel_dir, prune_before, notes.pruned)
    if batch:
        yield batch


async def walk(
    root: Path, path_filter: PathFilter, recursive: bool, start_rel: str = "", notes: WalkNotes | None = None
) -> AsyncIterator[list[Found]]:
    """Yield batches of the regular, accepted files under ``root/start_rel``, walking in a thread.

    With `notes`, the skipped paths and removed empty folders are collected there: read them after
    each batch (the walk adds more only while the next batch is being made).
    """
    iterator = _walk(root, start_rel, path_filter, recursive, notes)
    done = object()
    while True:
        batch = await asyncio.to_thread(next, iterator, done)
        if batch is done:
            return
        assert isinstance(batch, list)
        yield batch


def regular_files(
    root: Path, abort: threading.Event | None = None
) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """Every regular file under `root` with its lstat (symlinks neither followed nor listed), until
    `abort` is set (blocking; for maintenance walks of the outbox and the failed dir).
    """
    stack = [str(root)]
    while stack and not (abort is not None and abort.is_set()):
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                if abort is not None and abort.is_set():
                    return
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield entry, st


def sweep_temp_files(root: Path, older_than: float = 0.0) -> tuple[int, int]:
    """Remove our stale temporary files under `root` (blocking); return (files, bytes) removed.

    Only names of the form ``.watcher-<hex>.tmp`` are touched, and only when their ctime is older
    than `older_than` seconds, so a sweep while transfers run never removes one in progress.
    """
    removed = freed = 0
    now = time.time()
    for entry, st in regular_files(root):
        # ctime, not mtime: a temp file carries its source's old mtime while in progress.
        if is_temp_name(entry.name) and now - st.st_ctime >= older_than:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
            freed += st.st_size
    return removed, freed
