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
from pathlib import Path
from typing import NamedTuple

from watcher.pipeline.filters import PathFilter
from watcher.pipeline.transfer import is_temp_name

BATCH = 512


class Found(NamedTuple):
    """A regular file met by a walk."""

    rel: str
    size: int
    mtime_ns: int
    dev: int
    ino: int


def _walk(root: Path, start_rel: str, path_filter: PathFilter, recursive: bool) -> Iterator[list[Found]]:
    stack = [start_rel]
    batch: list[Found] = []
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else str(root)
        try:
            entries = os.scandir(folder)
        except OSError:
            continue  # vanished or unreadable; readiness reports an unreadable inbox root
        with entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive and path_filter.accepts_dir(rel):
                            stack.append(rel)
                        continue
                    if not entry.is_file(follow_symlinks=False) or not path_filter.accepts(rel):
                        continue  # symlinks, fifos, sockets and devices are never delivered
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                batch.append(Found(rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
    if batch:
        yield batch


async def walk(root: Path, path_filter: PathFilter, recursive: bool, start_rel: str = "") -> AsyncIterator[list[Found]]:
    """Yield batches of the regular, accepted files under ``root/start_rel``, walking in a thread."""
    iterator = _walk(root, start_rel, path_filter, recursive)
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
