"""The stop's one deadline, and running the service in a process whose wedged threads cannot keep it.

:class:`StopDeadline` is WATCHER_SHUTDOWN_TIMEOUT + :data:`STOP_MARGIN` seconds, counted from the
moment the stop begins; every phase of the stop runs through :meth:`StopDeadline.bounded` and gets
what is left of it. :func:`run_until_exit` is ``asyncio.run`` with bounded executor shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from watcher.logging import get_logger

log = get_logger(__name__)

STOP_MARGIN = 5.0  # seconds beyond WATCHER_SHUTDOWN_TIMEOUT for everything but the drain
PHASE_CAP = 5.0  # the most one quick phase (scheduler, observer join, probes) may take


class StopDeadline:
    """One deadline for the whole stop; it starts counting at the first question asked of it."""

    def __init__(self, seconds: float) -> None:
        """`seconds`: the whole budget of the stop."""
        self.seconds = seconds
        self._at: float | None = None

    def start(self) -> None:
        """Start the clock now (idempotent)."""
        if self._at is None:
            self._at = time.monotonic() + self.seconds

    def left(self, cap: float | None = None, reserve: float = 0.0) -> float:
        """Seconds left (never negative), keeping `reserve` for later phases, at most `cap`."""
        self.start()
        assert self._at is not None
        left = max(0.0, self._at - time.monotonic() - reserve)
        return left if cap is None else min(cap, left)

    def used(self) -> float:
        """Seconds since the stop began."""
        return self.seconds - self.left()

    async def bounded(self, what: str, phase: Callable[[], Awaitable[object]], cap: float | None = None) -> None:
        """Run one phase within what is left (at most `cap` s); a phase that overruns is cancelled and
        logged, one that fails is logged, and the stop goes on.
        """
        try:
            await asyncio.wait_for(phase(), timeout=max(0.01, self.left(cap)))
        except TimeoutError:
            log.warning("service.stop_phase_timeout", phase=what, action="went on without it")
        except Exception as exc:  # one failed release must not skip the others
            log.error("service.stop_phase_failed", phase=what, error=str(exc), exc_info=exc)


def run_until_exit(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that threads wedged in a syscall (a copy on a dead mount, a store
    that does not answer) cannot hold the process past the stop deadline.

    asyncio.run() would wait for the default executor's threads without a bound, and the interpreter
    joins executor threads at exit; so the executor shutdown is bounded, and when such a thread is
    still alive after `main` returned, the process ends with ``os._exit``.
    """
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        with contextlib.suppress(TimeoutError):
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), 1.0))
    finally:
        loop.close()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    give_up = time.monotonic() + 1.0  # idle executor threads are on their way out: let them go
    for thread in others:
        thread.join(max(0.0, give_up - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        log.warning("service.threads_left", threads=stuck, action="exiting without waiting for them")
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(code)
    return code
