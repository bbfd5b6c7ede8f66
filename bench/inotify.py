"""A minimal ctypes binding of Linux inotify and the harness's outbox observer.

The binding (``inotify_init1``, ``inotify_add_watch``, ``read``) is shared by the limit-loop baseline
(``bench/limit_loop.py``) and by :class:`OutboxObserver`, the thread of the harness that timestamps each
delivery the moment the kernel reports it: a file counts as delivered when it is complete under its final
name in the outbox, i.e. on ``IN_CLOSE_WRITE`` (written in place) or ``IN_MOVED_TO`` (renamed in).
``IN_CREATE`` is recorded too, because a delivery by ``link()`` raises only that event; such a name is
accepted once its size is the expected one. Timestamps come from ``time.monotonic()``
(``CLOCK_MONOTONIC``), the clock the writers use for their close times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Self

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name
READ_SIZE = 1 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def inotify_init(flags: int = IN_CLOEXEC) -> int:
    """Return a new inotify file descriptor (``inotify_init1``)."""
    return _check(_libc.inotify_init1(flags), "inotify_init1")


def add_watch(fd: int, path: str | os.PathLike[str], mask: int) -> int:
    """Watch ``path`` for the events in ``mask``; return the watch descriptor."""
    return _check(_libc.inotify_add_watch(fd, os.fsencode(path), mask), f"inotify_add_watch {path}")


def parse_events(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(wd, mask, name)`` for every ``struct inotify_event`` in ``buf``."""
    offset = 0
    size = len(buf)
    while offset < size:
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
        start = offset + _EVENT.size
        yield wd, mask, buf[start : start + length].rstrip(b"\0")
        offset = start + length


class _EventThread:
    """A background thread that reads one inotify watch and hands each event of a named file on.

    Subclasses say what to do with an event in :meth:`_record`; waiters block on ``_cond``, which is
    notified after every read. Names starting with ``.`` (temporary files) are never handed on.
    """

    def __init__(self, folder: Path, mask: int, name: str) -> None:
        self.folder = folder
        self.overflows = 0
        self._cond = threading.Condition()
        self._fd = inotify_init(IN_CLOEXEC | IN_NONBLOCK)
        add_watch(self._fd, folder, mask)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread and close the descriptors (idempotent)."""
        if self._stop_w < 0:
            return
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._stop_w = -1

    def _record(self, mask: int, name: str, now: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                continue
            now = time.monotonic()
            for _wd, mask, raw in parse_events(buf):
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    continue
                if not raw or mask & IN_ISDIR or raw.startswith(b"."):
                    continue
                self._record(mask, os.fsdecode(raw), now)
            with self._cond:
                self._cond.notify_all()


class OutboxObserver(_EventThread):
    """Timestamp deliveries into one (flat) outbox folder from a background thread.

    ``final`` maps a name to the first ``IN_CLOSE_WRITE``/``IN_MOVED_TO`` time, ``created`` to the first
    ``IN_CREATE`` time. Names starting with ``.`` are temporary files and ignored. If the kernel queue
    overflows, :meth:`wait_delivered` falls back to listing the folder for the names it still misses and
    counts them in ``found_by_scan`` (their latency is then an upper bound).
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE, "outbox-observer")
        self.final: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.found_by_scan = 0

    def _record(self, mask: int, name: str, now: float) -> None:
        if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
            self.final.setdefault(name, now)
        else:
            self.created.setdefault(name, now)

    def delivered_at(self, name: str) -> float | None:
        """Time the file became complete under its final name, or None if not (yet) seen."""
        return self.final.get(name, self.created.get(name))

    def wait_delivered(self, sizes: Mapping[str, int], timeout: float) -> set[str]:
        """Wait until every name in ``sizes`` is delivered; return the names still missing at the deadline."""
        remaining = set(sizes)
        deadline = time.monotonic() + timeout
        while True:
            remaining.difference_update([n for n in remaining if n in self.final])
            for name in [n for n in remaining if n in self.created]:
                if self._size_is(name, sizes[name]):
                    remaining.discard(name)
            if remaining and self.overflows:
                self._scan_for(remaining, sizes)
            left = deadline - time.monotonic()
            if not remaining or left <= 0:
                return remaining
            with self._cond:
                self._cond.wait(timeout=min(left, 0.25))

    def _size_is(self, name: str, size: int) -> bool:
        try:
            return (self.folder / name).lstat().st_size == size
        except FileNotFoundError:
            return False

    def _scan_for(self, remaining: set[str], sizes: Mapping[str, int]) -> None:
        now = time.monotonic()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name in remaining and entry.stat(follow_symlinks=False).st_size == sizes[name]:
                    remaining.discard(name)
                    if name not in self.final:
                        self.final[name] = now
                        self.found_by_scan += 1


class SourceDepartures(_EventThread):
    """Timestamp the moment each file leaves one (flat) inbox folder: ``IN_DELETE`` or ``IN_MOVED_FROM``.

    A delivery is durable once its source is gone for a subject that removes the source only after its
    flush (``watcher``, the ``limit-durable`` loop); for a subject that renames (``limit``, the
    ``inotifywait`` loop) the source goes with the rename. ``gone`` maps a name to the first such time.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, IN_DELETE | IN_MOVED_FROM, "inbox-departures")
        self.gone: dict[str, float] = {}

    def _record(self, mask: int, name: str, now: float) -> None:
        self.gone.setdefault(name, now)

    def wait_gone(self, names: Iterable[str], timeout: float) -> set[str]:
        """Wait until every one of ``names`` has left the inbox; return those still there at the deadline."""
        remaining = set(names)
        deadline = time.monotonic() + timeout
        while True:
            remaining.difference_update([n for n in remaining if n in self.gone])
            if remaining and self.overflows:  # the queue lost events: what is not there any more is gone
                now = time.monotonic()
                for name in [n for n in remaining if not (self.folder / n).exists()]:
                    self.gone[name] = now
                    remaining.discard(name)
            left = deadline - time.monotonic()
            if not remaining or left <= 0:
                return remaining
            with self._cond:
                self._cond.wait(timeout=min(left, 0.25))
