"""The outbox gate: delivery pauses while the outbox cannot take files, and resumes by itself.

A full disk or an unusable outbox is not a file's fault, so no attempt is charged: workers wait at
the gate (intake goes on finding and queueing files), readiness reports the reason, and a probe
writes a small file every few seconds until it succeeds. The gate does not wait for a delivery to
fail: while open it looks at the outbox on the same interval (a stat and a statvfs), so an outbox
that breaks with no traffic shows in readiness and ``watcher_delivery_paused`` at once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.logging import get_logger
from watcher.metrics import Metrics
from watcher.pipeline.transfer import TEMP_PREFIX, TEMP_SUFFIX

log = get_logger(__name__)
PROBE_BYTES = 64 * 1024


def outbox_problem(outbox: Path) -> str | None:
    """A cheap check that `outbox` can take files (blocking); None when it can, else the reason."""
    try:
        st = os.stat(outbox)
    except OSError as exc:
        return f"outbox {outbox} is unusable: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"outbox {outbox} is not a directory"
    if not os.access(outbox, os.W_OK | os.X_OK):
        return f"outbox {outbox} is not writable (permission denied or immutable)"
    try:
        vfs = os.statvfs(outbox)
    except OSError as exc:
        return f"outbox {outbox}: statvfs failed: {exc.strerror}"
    if vfs.f_flag & os.ST_RDONLY:
        return f"outbox {outbox} is on a read-only filesystem"
    if vfs.f_bavail == 0 and vfs.f_blocks > 0:
        return f"outbox {outbox} is full (no space left on device): free space or grow the volume"
    return None


def probe_write(outbox: Path) -> str | None:
    """Write, flush and remove a small file in `outbox` (blocking); None on success, else the reason."""
    problem = outbox_problem(outbox)
    if problem:
        return problem
    probe = outbox / f"{TEMP_PREFIX}probe-{os.getpid()}{TEMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot be written"
        return f"outbox {outbox} {what}: {exc.strerror} (errno {exc.errno})"
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


class OutboxGate:
    """Open while deliveries may run; closed (with a reason) while the outbox cannot take files."""

    def __init__(
        self,
        outbox: Path,
        metrics: Metrics,
        probe_interval: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
        also: Callable[[], str | None] | None = None,
    ) -> None:
        """Start open; every `probe_interval` seconds of `clock` the gate looks at (or, closed, tests) the
        outbox, and `also` (blocking: None when fine, else why not), another place every delivery must
        write to: the delivery record.
        """
        self.clock = clock
        self.outbox = outbox
        self._also = also
        self.metrics = metrics
        self.probe_interval = probe_interval
        self._open = asyncio.Event()
        self._open.set()
        self.reason = ""
        self._prober: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _problem(self, look: Callable[[Path], str | None]) -> str | None:
        """The outbox's problem (by `look`), else the other destination's (blocking)."""
        return look(self.outbox) or (self._also() if self._also is not None else None)

    @property
    def is_open(self) -> bool:
        """True while delivery is not paused."""
        return self._open.is_set()

    def start(self) -> None:
        """Start looking at the outbox while the gate is open (on the running loop)."""
        self._watcher = asyncio.create_task(self._watch(), name="outbox-gate")

    async def _watch(self) -> None:
        while not await self._stopped_within(self.probe_interval):
            if not self._open.is_set():
                continue
            problem = await asyncio.to_thread(self._problem, outbox_problem)
            if problem is not None and not self._stopping.is_set():
                self.close(problem)

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait up to `seconds` of the clock for stop(); True once stopping."""
        stopper = asyncio.ensure_future(self._stopping.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({stopper, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            sleeper.cancel()
        return self._stopping.is_set()

    async def wait_open(self) -> None:
        """Return when deliveries may run."""
        await self._open.wait()

    def close(self, reason: str) -> None:
        """Pause delivery because of `reason`, and start probing the outbox."""
        self.reason = reason
        if not self._open.is_set():
            return
        self._open.clear()
        self.metrics.delivery_paused.set(1)
        log.error("delivery.paused", reason=reason, action="free space or fix the outbox; delivery resumes by itself")
        self._prober = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        while True:
            if await self._stopped_within(self.probe_interval):
                return
            problem = await asyncio.to_thread(self._problem, probe_write)
            if problem is None:
                break
            self.reason = problem
        self.reason = ""
        self.metrics.delivery_paused.set(0)
        self._open.set()
        log.info("delivery.resumed", outbox=str(self.outbox))

    async def stop(self) -> None:
        """Stop probing (shutdown): the prober waits on this event, never on a bare sleep."""
        self._stopping.set()
        tasks = {task for task in (self._prober, self._watcher) if task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)  # a probe stuck on a dead mount
            for task in pending:
                task.cancel()
