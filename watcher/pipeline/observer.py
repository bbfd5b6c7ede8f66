"""The filesystem observer and its batched bridge into the event loop.

watchdog's emitter threads call the handler; the handler only appends a tiny tuple to a list and,
when the list was empty, wakes the loop once. The loop side swaps the whole list out, so one wake-up
carries every event that arrived meanwhile, never one ``call_soon_threadsafe`` per event.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from watcher.cluster.claims import RESERVED
from watcher.logging import get_logger

log = get_logger(__name__)

# Network and userspace filesystems whose changes on other hosts inotify never sees.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "afs", "ocfs2", "gfs2", "virtiofs", "davfs", "sshfs", "azurefile",
})  # fmt: skip

_EVENT_TYPES = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


class RawEvent(NamedTuple):
    """One watchdog event reduced to what intake needs."""

    kind: str  # watchdog's event_type: created, modified, closed, moved, deleted
    src: str
    dest: str
    is_dir: bool


class EventBridge(FileSystemEventHandler):
    """Thread-safe, batched hand-off of watchdog events to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        """Bind to `loop`; beyond `max_pending` buffered events, new ones are dropped and counted."""
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[RawEvent] = []
        self._max_pending = max_pending
        self.dropped = 0
        self.has_events = asyncio.Event()

    def dispatch(self, event: FileSystemEvent) -> None:
        """Called in the observer thread for every event."""
        item = RawEvent(event.event_type, _text(event.src_path), _text(event.dest_path), event.is_directory)
        with self._lock:
            if len(self._pending) >= self._max_pending:
                self.dropped += 1  # the rescan will find the file; memory stays bounded
                return
            self._pending.append(item)
            wake = len(self._pending) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self.has_events.set)
            except RuntimeError:
                pass  # loop closed during shutdown

    def extend(self, events: list[RawEvent]) -> None:
        """Called in the inotify reader's thread with one read's events: one lock, at most one wake-up."""
        with self._lock:
            room = self._max_pending - len(self._pending)
            if room < len(events):
                self.dropped += len(events) - max(room, 0)  # the rescan will find the files
                events = events[: max(room, 0)]
            wake = not self._pending and bool(events)
            self._pending.extend(events)
        if wake:
            try:
                self._loop.call_soon_threadsafe(self.has_events.set)
            except RuntimeError:
                pass  # loop closed during shutdown

    def lost(self) -> None:
        """The kernel dropped events (queue overflow): counted like events dropped here."""
        with self._lock:
            self.dropped += 1

    def take(self) -> tuple[list[RawEvent], int]:
        """Swap out every buffered event (on the loop) and the count dropped since the last call."""
        with self._lock:
            batch, self._pending = self._pending, []
            dropped, self.dropped = self.dropped, 0
            self.has_events.clear()
        return batch, dropped


def _text(path: str | bytes) -> str:
    return os.fsdecode(path) if isinstance(path, bytes) else path


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The filesystem type of the mount holding `path` (``unknown`` when it cannot be told)."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = fields[4].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, right.split()[0]
    except OSError:
        return "unknown"
    return fstype


def is_network_fs(fstype: str) -> bool:
    """True for network and FUSE filesystems, where only polling sees remote writes."""
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse") or fstype.startswith("nfs")


Mode = Literal["inotify", "polling"]


class ObserverThread(Protocol):
    """What supervision needs of an observer: watchdog's polling observer or our inotify reader."""

    def is_alive(self) -> bool:
        """True while it runs."""

    def stop(self) -> None:
        """Ask it to end."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for it to end."""


@dataclass
class ObserverChoice:
    """Which observer runs, and why (shown in logs and readiness detail)."""

    thread: ObserverThread  # the inotify reader, or watchdog's polling observer (with its emitter threads)
    mode: Mode
    reason: str
    fallback: bool


def count_dirs(root: Path, recursive: bool) -> int:
    """Folders an inotify observer must watch under `root` (itself included; symlinks not followed)."""
    if not recursive:
        return 1
    top = str(root)
    total, stack = 0, [top]  # <inbox>/.watcher/ (claims) is not watched: the service's own folder
    while stack:
        folder = stack.pop()
        total += 1
        try:
            with os.scandir(folder) as entries:
                stack.extend(
                    e.path
                    for e in entries
                    if e.is_dir(follow_symlinks=False) and not (folder == top and e.name == RESERVED)
                )
        except OSError:
            continue
    return total


def inotify_usage(proc_dir: str = "/proc/self") -> tuple[int, int]:
    """(instances, watches) of inotify held by one process (from its ``fd`` and ``fdinfo``)."""
    instances = watches = 0
    try:
        fds = os.listdir(f"{proc_dir}/fd")
    except OSError:
        return 0, 0
    for fd in fds:
        try:
            if os.readlink(f"{proc_dir}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"{proc_dir}/fdinfo/{fd}", encoding="ascii") as handle:
                watches += sum(1 for line in handle if line.startswith("inotify wd:"))
            instances += 1
        except OSError:
            continue
    return instances, watches


def watch_shortfall(inbox: Path, recursive: bool) -> int:
    """Folders that inotify does not watch. watchdog drops ENOSPC for subfolders silently, so an
    exhausted ``fs.inotify.max_user_watches`` shows only as fewer watches than folders.
    """
    return max(0, count_dirs(inbox, recursive) - inotify_usage()[1])


def _start(observer: BaseObserver, bridge: EventBridge, inbox: Path, recursive: bool) -> None:
    observer.schedule(bridge, str(inbox), recursive=recursive, event_filter=_EVENT_TYPES)
    observer.start()


def start_observer(
    requested: str, inbox: Path, recursive: bool, bridge: EventBridge, poll_interval: float = 1.0
) -> ObserverChoice:
    """Pick and start an observer: inotify where it works, polling on network filesystems or when
    inotify limits are exhausted (ENOSPC / EMFILE), with a loud log line naming the limit.
    """
    fstype = filesystem_type(inbox)
    reason = f"WATCHER_OBSERVER={requested}"
    if requested == "polling":
        mode: Mode = "polling"
    elif requested == "auto" and is_network_fs(fstype):
        mode = "polling"
        reason = f"inbox is on a {fstype} filesystem, where inotify misses writes made on other hosts"
        log.warning("observer.network_filesystem", fstype=fstype, inbox=str(inbox), mode="polling")
    else:
        mode = "inotify"
        reason = f"{reason}, inbox filesystem {fstype}"
    if mode == "inotify":
        from watcher.pipeline.inotify_reader import InotifyReader  # Linux only

        observer: InotifyReader | None = None
        try:
            observer = InotifyReader(inbox, recursive, bridge.extend, bridge.lost)
            observer.start()
            if watch_shortfall(inbox, recursive) and watch_shortfall(inbox, recursive):  # twice: folders come and go
                raise OSError(errno.ENOSPC, "inotify watch limit reached for part of the tree")
            return ObserverChoice(observer, "inotify", reason, fallback=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
                raise
            limit = "fs.inotify.max_user_watches" if exc.errno == errno.ENOSPC else "fs.inotify.max_user_instances"
            reason = f"inotify exhausted ({os.strerror(exc.errno or 0)}): raise {limit} on the node; polling instead"
            log.error("observer.inotify_exhausted", error=str(exc), limit_to_raise=limit, mode="polling")
            if observer is not None and observer.is_alive():
                observer.stop()
            return _polling(bridge, inbox, recursive, poll_interval, reason, fallback=True)
    return _polling(bridge, inbox, recursive, poll_interval, reason, fallback=False)


def polling_fallback(bridge: EventBridge, inbox: Path, recursive: bool, reason: str) -> ObserverChoice:
    """Start a polling observer in place of an inotify one that cannot do the job."""
    return _polling(bridge, inbox, recursive, 1.0, reason, fallback=True)


def _polling(
    bridge: EventBridge, inbox: Path, recursive: bool, interval: float, reason: str, fallback: bool
) -> ObserverChoice:
    observer = PollingObserver(timeout=interval)
    _start(observer, bridge, inbox, recursive)
    return ObserverChoice(observer, "polling", reason, fallback=fallback)


def observer_alive(observer: Any) -> bool:
    """True while the observer thread, its emitter threads and (inotify) its reader thread run."""
    if not observer.is_alive():
        return False
    reader = getattr(observer, "_inotify_fd", None)  # watchdog's inotify reader thread
    if reader is not None and not reader.is_alive():
        return False
    return all(emitter.is_alive() for emitter in getattr(observer, "emitters", ()))
