"""The inotify observer: watchdog's lower layer (its inotify calls and event parser), read in batches.

watchdog's upper layer hands every event through three threads and pairs moves by scanning a delayed
queue per event; with a rename storm that queue scan alone was a fifth of the service's CPU. Here one
thread reads the kernel's buffer, turns the whole read into :class:`RawEvent` tuples and hands them to
the loop in one call. The mask asks only for what intake uses: a finished write, a rename in or out,
a creation and a deletion. A delivery's own ``link`` and ``unlink`` (IN_ATTRIB) raise nothing.

Folders are watched one by one as watchdog does: each watch maps to its folder's path; a new or
moved-in folder gets watches for its whole tree before its event is handed on (intake then walks it,
so a file made before its folder's watch existed is found anyway); a folder renamed inside the tree
keeps its watches under the new path; one moved out loses them. A kernel queue overflow re-reads the
tree's watches and counts the loss (the rescan finds what was missed).
"""

from __future__ import annotations

import errno
import math
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.inotify_c import (
    InotifyConstants,
    InotifyFD,
    WatchDescriptor,
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
)

from watcher.cluster.claims import RESERVED
from watcher.logging import get_logger
from watcher.pipeline.observer import RawEvent

log = get_logger(__name__)

C = InotifyConstants
WATCH_MASK = (
    C.IN_CLOSE_WRITE
    | C.IN_MOVED_FROM
    | C.IN_MOVED_TO
    | C.IN_CREATE
    | C.IN_DELETE
    | C.IN_DELETE_SELF
    | C.IN_ONLYDIR
    | C.IN_DONT_FOLLOW
    | C.IN_EXCL_UNLINK
)
_BUFFER = 256 * 1024  # bytes per read: about 8,000 events of short names
# Events that ask nothing of intake at once (a file created, moved out or deleted: it only starts or
# stops tracking it) wait up to this long for the next read, so that one hand-off to the loop carries
# a writer's create and its close, or another replica's claims, instead of one wake-up each. A close,
# a rename in or any folder event is handed on at once, with whatever waits.
HOLD_S = 0.005
HOLD_MAX = 4096  # events held at most


class InotifyReader(threading.Thread):
    """Reads the inbox tree's inotify events and hands each read to `sink` as one list (a thread)."""

    def __init__(
        self, root: Path, recursive: bool, sink: Callable[[list[RawEvent]], None], lost: Callable[[], None]
    ) -> None:
        """Watch `root` (and its folders when `recursive`); `lost` is called when the kernel dropped events.

        Raises OSError (ENOSPC, EMFILE, ENFILE among them) when the watches cannot be set up.
        """
        super().__init__(name="inotify-reader", daemon=True)
        self._root = os.fsencode(root)
        self._recursive = recursive
        self._sink = sink
        self._lost = lost
        self._fd = inotify_init()
        if self._fd < 0:
            InotifyFD._raise_error()
        os.set_inheritable(self._fd, False)
        self._kill_r, self._kill_w = os.pipe()
        self._closing = threading.Lock()  # stop() never writes to a descriptor closed (and reused) meanwhile
        self._closed = False
        self._paths: dict[WatchDescriptor, bytes] = {}  # watch descriptor -> folder path
        self._stopping = False
        try:
            self._watch_tree(self._root, strict=True)
        except BaseException:
            self._close()
            raise
        self.root_wd = next(iter(self._paths), -1)

    # ---- watches --------------------------------------------------------------------------------

    def _watch(self, path: bytes, strict: bool) -> bool:
        wd = inotify_add_watch(self._fd, path, WATCH_MASK)
        if wd < 0:
            if strict:
                InotifyFD._raise_error()
            return False  # gone meanwhile, or no watch left (the supervisor's audit sees the shortfall)
        self._paths[wd] = path
        return True

    def _watch_tree(self, top: bytes, strict: bool = False) -> None:
        """Watch `top` and (recursive) every folder below it; symlinks are never followed."""
        if not self._watch(top, strict) or not self._recursive:
            return
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if folder == self._root and entry.name == RESERVED.encode():
                            continue  # <inbox>/.watcher/: the service's own claims, never delivered
                        if entry.is_dir(follow_symlinks=False) and self._watch(entry.path, strict):
                            stack.append(entry.path)
            except OSError as exc:
                if strict and exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise

    def _moved(self, old: bytes, new: bytes) -> None:
        """A watched folder was renamed inside the tree: its watches (and those below) follow it."""
        prefix = old + b"/"
        for wd, path in list(self._paths.items()):
            if path == old:
                self._paths[wd] = new
            elif path.startswith(prefix):
                self._paths[wd] = new + path[len(old) :]

    def _unwatch_tree(self, top: bytes) -> None:
        """A watched folder left the tree: drop its watches (their IN_IGNORED follows)."""
        prefix = top + b"/"
        for wd, path in list(self._paths.items()):
            if path == top or path.startswith(prefix):
                inotify_rm_watch(self._fd, wd)
                del self._paths[wd]

    def watches(self) -> int:
        """Folders watched now."""
        return len(self._paths)

    # ---- reading --------------------------------------------------------------------------------

    def run(self) -> None:
        """Read until :meth:`stop` or until the inbox itself goes (the supervisor then restarts us)."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._kill_r, select.POLLIN)
        held: list[RawEvent] = []
        hand_at = 0.0
        try:
            while not self._stopping:
                wait_ms = None if not held else max(0, math.ceil((hand_at - time.monotonic()) * 1000))
                ready = poller.poll(wait_ms)
                if self._stopping or any(fd == self._kill_r for fd, _ in ready):
                    return
                if not ready:  # nothing more came while they waited
                    self._sink(held)
                    held = []
                    continue
                try:
                    buffer = os.read(self._fd, _BUFFER)
                except InterruptedError:
                    continue
                events, urgent, root_alive = self._handle(buffer)
                if not held:
                    hand_at = time.monotonic() + HOLD_S
                held += events
                if held and (urgent or not root_alive or len(held) >= HOLD_MAX):
                    self._sink(held)
                    held = []
                if not root_alive:
                    return
        finally:
            self._close()

    def _handle(self, buffer: bytes) -> tuple[list[RawEvent], bool, bool]:
        """Turn one read into events for the sink: (events, whether one must be handed on at once
        (see HOLD_S), whether the inbox itself is still there).
        """
        events: list[RawEvent] = []
        urgent = False
        moved_from: dict[int, bytes] = {}  # cookie -> folder that left its place in this read
        paths = self._paths
        root_alive = True
        for wd, mask, cookie, name in InotifyFD._parse_event_buffer(buffer):
            if mask & C.IN_Q_OVERFLOW:
                self._overflow()
                continue
            folder = paths.get(wd)
            if mask & C.IN_IGNORED:
                paths.pop(wd, None)
                root_alive = root_alive and wd != self.root_wd
                continue
            if folder is None:
                continue  # a watch dropped a moment ago
            if mask & C.IN_DELETE_SELF:
                root_alive = root_alive and wd != self.root_wd
                continue
            path = folder + b"/" + name if name else folder
            is_dir = bool(mask & C.IN_ISDIR)
            text = os.fsdecode(path)
            urgent = urgent or is_dir or bool(mask & (C.IN_CLOSE_WRITE | C.IN_MOVED_TO))
            if mask & C.IN_CLOSE_WRITE:
                events.append(RawEvent("closed", text, "", False))
            elif mask & C.IN_MOVED_TO:
                if is_dir and self._recursive:
                    old = moved_from.pop(cookie, None)
                    if old is not None:
                        self._moved(old, path)
                    else:
                        self._watch_tree(path)
                events.append(RawEvent("moved", "", text, is_dir))
            elif mask & C.IN_MOVED_FROM:
                if is_dir and self._recursive:
                    moved_from[cookie] = path
                events.append(RawEvent("moved", text, "", is_dir))
            elif mask & C.IN_CREATE:
                if is_dir and self._recursive:
                    self._watch_tree(path)
                events.append(RawEvent("created", text, "", is_dir))
            elif mask & C.IN_DELETE:
                events.append(RawEvent("deleted", text, "", is_dir))
        for gone in moved_from.values():
            self._unwatch_tree(gone)  # moved out of the tree (or its pair is in the next read: re-added then)
        return events, urgent, root_alive

    def _overflow(self) -> None:
        log.warning(
            "observer.events_lost", reason="inotify queue overflow", action="watches renewed; the rescan finds the rest"
        )
        for wd in list(self._paths):
            inotify_rm_watch(self._fd, wd)
        self._paths.clear()
        self._watch_tree(self._root)
        self.root_wd = next(iter(self._paths), -1)
        self._lost()

    # ---- life cycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the thread to end (it wakes at once)."""
        self._stopping = True
        with self._closing:
            if not self._closed:
                os.write(self._kill_w, b"!")

    def _close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            for fd in (self._fd, self._kill_r, self._kill_w):
                os.close(fd)
