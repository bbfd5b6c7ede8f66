"""Intake: turns event hints and walk results into work items, once per file, when each is ready.

Every path lives in `tracked` from the moment it is first seen until a worker is done with it, so
however many events a file raises it is queued and handled once at a time (delivery semantics 8).
Proof of completeness (close-after-write, rename in) queues a file at once; anything else waits in
the settling set until the readiness rules say it is quiet and no local writer holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.cluster.claims import is_reserved
from watcher.config import Settings
from watcher.logging import get_logger
from watcher.metrics import Metrics
from watcher.pipeline.completeness import Snapshot, is_quiet, next_check_in, unchanged
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.netfs import is_silly_rename, settle_stat
from watcher.pipeline.observer import EventBridge, RawEvent
from watcher.pipeline.rescan import Found, WalkNotes, walk
from watcher.pipeline.skipped import SkipLog
from watcher.pipeline.writers import open_for_writing

log = get_logger(__name__)


@contextlib.contextmanager
def _also_on(stop: asyncio.Event, flag: asyncio.Event) -> Iterator[None]:
    """While inside, `flag` is set when `stop` is: a loop waiting on `flag` alone also sees the stop."""
    watcher = asyncio.ensure_future(stop.wait())
    watcher.add_done_callback(lambda _: flag.set())
    try:
        yield
    finally:
        watcher.cancel()


# Cluster mode: how long an event's file is left to the replica it belongs to before this one takes it
# too (longer than a heartbeat, in which the replicas learn of one another).
OWNER_GRACE = 3.0
EMPTY_DIR_AGE = 3600.0  # seconds an empty inbox folder stays unchanged before a full scan removes it

Source = Literal["event", "rescan", "startup"]
State = Literal["settling", "queued", "running", "retrying"]


@dataclass(eq=False)
class Tracked:
    """One file between discovery and the end of its handling."""

    rel: str
    source: Source
    first_seen_wall: float
    state: State = "settling"
    first: Snapshot | None = None
    ready_wall: float = 0.0
    attempts: int = 0
    rerun: bool = False
    counted: bool = False
    due_mono: float = 0.0
    last_error: str = ""  # the last failed attempt's error (for GET /files)
    retry_at: float = 0.0  # wall time of the next attempt while retrying
    claimed: bool = False  # cluster mode: the file is in this replica's claims folder
    deferred: bool = False  # cluster mode: another replica's to take first (see Intake._hint)


class Intake:
    """Filters, de-duplicates and times files into the bounded work queue."""

    def __init__(
        self, settings: Settings, metrics: Metrics, queue: asyncio.Queue[Tracked], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        """Bind to the settings, the metrics and the queue the workers consume; `clock` times the settling."""
        self.clock = clock
        self.inbox = settings.inbox
        self._prefix = str(settings.inbox).rstrip("/") + "/"
        self.filter = PathFilter(settings.include, settings.exclude)
        self.skipped = SkipLog(metrics, self.filter)
        self.empty_dir_age = EMPTY_DIR_AGE
        self.recursive = settings.recursive
        self.settle = settings.settle_seconds
        self._settle_stat = settle_stat(settings)  # open + fstat where attribute caches may lie
        self.queue = queue
        self.metrics = metrics
        self.tracked: dict[str, Tracked] = {}
        self._settling_cap = max(settings.queue_size, 1024)
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._walks: set[asyncio.Task[int]] = set()
        self.stopping = False
        # Cluster mode: whether an event's new file is this replica's to take (Membership.owns); walks
        # take every file whatever this says.
        self.owns: Callable[[str], bool] | None = None
        # The labelled counters, looked up once: a file is counted on the hot path.
        self._discovered = {source: metrics.files_discovered.labels(source=source) for source in get_args(Source)}

    def stop_accepting(self) -> None:
        """Shutdown: no more retries, re-checks or walks; what is tracked stays in the inbox."""
        self.stopping = True

    # ---- bookkeeping -------------------------------------------------------------------------

    def oldest_pending_seconds(self) -> float:
        """Age of the oldest file seen but not yet delivered (0 when none)."""
        if not self.tracked:
            return 0.0
        return max(0.0, self.clock.time() - min(t.first_seen_wall for t in self.tracked.values()))

    def _rel(self, path: str) -> str | None:
        if not path.startswith(self._prefix):
            return None
        rel = path[len(self._prefix) :]
        if (not self.recursive and "/" in rel) or is_reserved(rel) or is_silly_rename(rel.rpartition("/")[2]):
            return None  # <inbox>/.watcher/ (claims) and NFS .nfs… names: never a file to deliver
        return rel

    def _offer(self, item: Tracked) -> bool:
        """Queue without waiting; when the queue is full the file is dropped, counted, and forgotten
        so that the next rescan finds it again.
        """
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.events_dropped.inc()
            self.tracked.pop(item.rel, None)
            return False
        self._queued(item)
        return True

    def _queued(self, item: Tracked) -> None:
        item.state = "queued"
        if not item.ready_wall:
            item.ready_wall = self.clock.time()
        if not item.counted:
            item.counted = True
            self._discovered[item.source].inc()

    def finish(self, item: Tracked) -> None:
        """A worker is done with `item` (any outcome); a change seen meanwhile is looked at again."""
        if self.tracked.get(item.rel) is item:
            del self.tracked[item.rel]
        if item.rerun and not self.stopping:
            self._hint(item.rel, proven=False)

    def retry_later(self, item: Tracked, delay: float) -> None:
        """Queue `item` again after `delay` seconds (backoff), keeping its attempt count."""
        item.state = "retrying"
        asyncio.get_running_loop().call_later(delay, self._requeue, item)

    def _requeue(self, item: Tracked) -> None:
        if self.stopping or self.tracked.get(item.rel) is not item:
            return
        self._offer(item)

    def resettle(self, item: Tracked) -> None:
        """The file changed under a transfer: wait for it to be quiet again."""
        self.tracked.pop(item.rel, None)
        if not self.stopping:
            self._hint(item.rel, proven=False)

    # ---- events ------------------------------------------------------------------------------

    async def run_events(self, bridge: EventBridge, stop: asyncio.Event) -> None:
        """Consume the observer's batches until `stop` is set."""
        # `stop` sets the bridge's flag too, so each batch costs one wait on one flag (no tasks per batch:
        # at a writer's pace a batch is an event or two, and the wake-up is most of its cost).
        with _also_on(stop, bridge.has_events):
            while True:
                await bridge.has_events.wait()
                if stop.is_set():
                    return
                batch, dropped = bridge.take()
                if dropped:
                    self.metrics.events_dropped.inc(dropped)
                self.handle_events(batch)

    def handle_events(self, batch: list[RawEvent]) -> None:
        """Turn one batch of raw events into hints (no I/O here: the transfer checks the file)."""
        for ev in batch:
            kind = ev.kind
            if ev.is_dir:
                if kind in ("created", "moved"):
                    rel_dir = self._rel(ev.dest if kind == "moved" else ev.src)
                    if rel_dir is None or not self.recursive:
                        continue
                    if self.filter.accepts_dir(rel_dir):
                        # A folder renamed in brings complete files; a new folder may still be filling.
                        self._walk_soon(rel_dir, proven=kind == "moved")
                    else:
                        self.skipped.filtered(rel_dir, is_dir=True)
                continue
            if kind == "closed":
                self._hint_path(ev.src, proven=True)
            elif kind == "moved":
                if ev.src:
                    self._forget(ev.src)
                if ev.dest:
                    self._hint_path(ev.dest, proven=True)
            elif kind in ("created", "modified"):
                self._hint_path(ev.src, proven=False)
            elif kind == "deleted":
                self._forget(ev.src)

    def _hint_path(self, path: str, proven: bool) -> None:
        rel = self._rel(path)
        if rel is None:
            return
        if self.filter.accepts(rel):
            self._hint(rel, proven)
        else:
            self.skipped.filtered(rel)

    def _forget(self, path: str) -> None:
        rel = self._rel(path)
        item = self.tracked.get(rel) if rel is not None else None
        if item is not None and item.state == "settling":
            del self.tracked[item.rel]

    def _hint(self, rel: str, proven: bool) -> None:
        item = self.tracked.get(rel)
        now = self.clock.time()
        if item is None:
            if self.owns is not None and not self.owns(rel):
                # Another live replica's file: it claims it now, and its rename out of the inbox reaches
                # us as a move (_forget drops this entry). Still here after the grace (that replica died,
                # or saw the live replicas otherwise for a moment), it is ours to take like any other.
                item = Tracked(rel, "event", now, deferred=True)
                self.tracked[rel] = item
                self._schedule(item, max(self.settle, OWNER_GRACE))
                return
            if proven:
                item = Tracked(rel, "event", now, ready_wall=now)
                self.tracked[rel] = item
                self._offer(item)
            else:
                if len(self.tracked) >= self._settling_cap + self.queue.maxsize:
                    self.metrics.events_dropped.inc()
                    return
                item = Tracked(rel, "event", now)
                self.tracked[rel] = item
                self._schedule(item, self.settle)
            return
        if item.state == "settling":
            if item.deferred:
                return  # another replica's until its grace is over
            item.source = "event"  # an event reported it before any rescan could queue it
            if proven:
                item.ready_wall = now
                self._offer(item)
        elif item.state in ("running", "retrying") and proven:
            item.rerun = True  # rewritten while being handled: look again afterwards

    # ---- settling ----------------------------------------------------------------------------

    def _schedule(self, item: Tracked, delay: float) -> None:
        item.state = "settling"
        item.due_mono = self.clock.monotonic() + delay
        self._seq += 1
        # The settler sleeps until the heap's first due time: wake it only when this one comes sooner
        # (not once per new file of a burst, each due a settle time later than the one before).
        if not self._heap or item.due_mono < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (item.due_mono, self._seq, item.rel))

    async def run_settler(self, stop: asyncio.Event) -> None:
        """Check settling files when they fall due, until `stop` is set."""
        loop = asyncio.get_running_loop()
        with _also_on(stop, self._wake):
            while not stop.is_set():
                # Sleep until the first file falls due (a timer sets the flag), a sooner one is scheduled
                # or `stop` is set; with nothing settling, until one of the last two.
                due_in = max(0.0, self._heap[0][0] - self.clock.monotonic()) if self._heap else None
                timer = loop.call_later(due_in, self._wake.set) if due_in else None
                self._wake.clear()
                if due_in != 0.0:
                    await self._wake.wait()
                if timer is not None:
                    timer.cancel()
                if stop.is_set():
                    return
                await self.check_due()

    async def check_due(self) -> None:
        """Look at the settling files that have fallen due on the clock (one step of the settler)."""
        due = self._pop_due()
        if due:
            await self._check(due)

    def _pop_due(self) -> list[Tracked]:
        now = self.clock.monotonic()
        due: list[Tracked] = []
        while self._heap and self._heap[0][0] <= now and len(due) < 2048:
            _, _, rel = heapq.heappop(self._heap)
            item = self.tracked.get(rel)
            if item is not None and item.state == "settling" and item.due_mono <= now:
                due.append(item)
        return due

    async def _check(self, items: list[Tracked]) -> None:
        inbox = self.inbox
        settle = self.settle
        clock = self.clock
        look_at = self._settle_stat
        Look = tuple[Tracked, Snapshot | None, Snapshot | None, tuple[int, int] | None]

        def look() -> tuple[list[Look], set[tuple[int, int]]]:
            seen: list[Look] = []
            for item in items:
                try:
                    st = look_at(os.path.join(inbox, item.rel))
                except OSError:
                    seen.append((item, None, None, None))
                    continue
                snap = Snapshot(st.st_size, st.st_mtime_ns, clock.monotonic(), clock.time())
                first = item.first if item.first is not None and unchanged(item.first, snap) else snap
                seen.append((item, first, snap, (st.st_dev, st.st_ino)))
            quiet = [ino for _, first, snap, ino in seen if first and snap and ino and is_quiet(first, snap, settle)]
            return seen, open_for_writing(quiet)

        seen, writing = await asyncio.to_thread(look)
        for item, first, snap, ino in seen:
            if self.tracked.get(item.rel) is not item or item.state != "settling":
                continue
            if first is None or snap is None:
                del self.tracked[item.rel]  # vanished before pickup (or claimed by its owner): not an error
                continue
            item.deferred = False  # its grace is over: from now on it is ours as much as anyone's
            item.first = first
            if not is_quiet(first, snap, settle):
                self._schedule(item, next_check_in(first, snap, settle))
            elif ino in writing:
                self._schedule(item, max(settle, 0.5))  # a local writer holds it open: never take it
            else:
                item.ready_wall = snap.mtime_ns / 1e9  # complete since its last write
                self._offer(item)

    # ---- walks -------------------------------------------------------------------------------

    def _walk_soon(self, rel_dir: str, proven: bool) -> None:
        task = asyncio.create_task(self.scan(rel_dir, source="event", proven=proven))
        self._walks.add(task)
        task.add_done_callback(self._walks.discard)

    async def scan(self, start_rel: str = "", source: Source = "rescan", proven: bool = False) -> int:
        """Walk the inbox (or one folder of it) and queue every file not yet tracked; return how
        many new files were found. Waits for queue room instead of dropping.
        """
        found = 0
        settle = self.settle
        # A full scan also removes empty folders left by uploads of trees (docs/operations.md).
        notes = WalkNotes(prune_age=None if start_rel else self.empty_dir_age)
        async for batch in walk(self.inbox, self.filter, self.recursive, start_rel, notes):
            self._take_notes(notes)
            if self.stopping:
                break
            fresh = [f for f in batch if f.rel not in self.tracked]
            if not fresh:
                continue
            now_wall, now_mono = self.clock.time(), self.clock.monotonic()
            quiet: list[Found] = []
            for f in fresh:
                if proven or now_wall - f.mtime_ns / 1e9 >= settle:
                    quiet.append(f)
                else:
                    item = Tracked(f.rel, source, now_wall)
                    item.first = Snapshot(f.size, f.mtime_ns, now_mono, now_wall)
                    self.tracked[f.rel] = item
                    self._schedule(item, next_check_in(item.first, item.first, settle))
                    found += 1
            writing = await asyncio.to_thread(open_for_writing, [(f.dev, f.ino) for f in quiet]) if quiet else set()
            queued = 0
            for f in quiet:
                if f.rel in self.tracked:
                    continue  # an event got there while we looked
                item = Tracked(f.rel, source, now_wall, ready_wall=f.mtime_ns / 1e9)
                item.first = Snapshot(f.size, f.mtime_ns, now_mono, now_wall)
                self.tracked[f.rel] = item
                found += 1
                if (f.dev, f.ino) in writing:
                    self._schedule(item, max(settle, 0.5))
                    continue
                item.state = "queued"
                try:
                    self.queue.put_nowait(item)  # no coroutine per file while the queue has room
                except asyncio.QueueFull:
                    await self.queue.put(item)
                item.counted = True  # counted below, once per batch
                queued += 1
            if queued:
                self._discovered[source].inc(queued)
        self._take_notes(notes)
        return found

    def _take_notes(self, notes: WalkNotes) -> None:
        """Report what the walk skipped and the empty folders it removed (on the loop)."""
        if notes.skipped:
            for rel, kind in notes.skipped:
                if kind == "symlink":
                    self.skipped.ignored(rel, "symlink", "symlinks are never followed")
                elif kind == "special":
                    self.skipped.ignored(rel, "special", "a fifo, socket or device is never read")
                else:
                    self.skipped.filtered(rel, is_dir=kind == "dir")
            notes.skipped.clear()
        if notes.pruned:
            for rel in notes.pruned:
                log.info("inbox.empty_folder_removed", path=rel + "/", unchanged_for_more_than_s=self.empty_dir_age)
            notes.pruned.clear()

    async def cancel_walks(self) -> None:
        """Stop folder walks started by events (shutdown)."""
        for task in list(self._walks):
            task.cancel()
        for task in list(self._walks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
