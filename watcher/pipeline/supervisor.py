"""Observer supervision: start the watchdog observer, restart it when its thread dies, and fall back
to polling when folders created after start-up exhaust the node's inotify watches.

Either way a rescan follows at once, so no failure of the event source strands files until the next
interval rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from watcher.config import Settings
from watcher.logging import get_logger
from watcher.pipeline.observer import (
    EventBridge,
    ObserverChoice,
    observer_alive,
    polling_fallback,
    start_observer,
    watch_shortfall,
)

log = get_logger(__name__)
CHECK_INTERVAL = 5.0
AUDIT_EVERY = 6  # checks between two audits of inotify watches against folders (about 30 s)


class ObserverSupervisor:
    """Owns the observer thread: start, watch, restart or fall back, stop."""

    def __init__(
        self,
        settings: Settings,
        bridge: EventBridge,
        rescan: Callable[[], Awaitable[int]],
        interval: float = CHECK_INTERVAL,
    ) -> None:
        """Nothing starts before :meth:`start`; `rescan` runs after every restart or fallback."""
        self._inbox: Path = settings.inbox
        self._recursive = settings.recursive
        self._requested = settings.observer
        self._bridge = bridge
        self._rescan = rescan
        self._interval = interval
        self.choice: ObserverChoice | None = None

    async def start(self) -> ObserverChoice:
        """Pick and start the observer (in a thread: scheduling watches walks the tree)."""
        self.choice = await asyncio.to_thread(
            start_observer, self._requested, self._inbox, self._recursive, self._bridge
        )
        return self.choice

    def alive(self) -> bool:
        """True while the observer and all its threads run."""
        return self.choice is not None and observer_alive(self.choice.thread)

    def polling(self) -> bool:
        """True when the observer polls (configured, network filesystem, or inotify exhausted)."""
        return self.choice is not None and self.choice.mode == "polling"

    def status(self) -> tuple[bool, str]:
        """The ``observer`` readiness check."""
        choice = self.choice
        if choice is None:
            return False, "not started yet"
        if observer_alive(choice.thread):
            return True, f"{choice.mode}: {choice.reason}"
        return False, f"{choice.mode} observer stopped"

    async def run(self, stop: asyncio.Event) -> None:
        """Check the observer every few seconds until `stop` is set."""
        ticks = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            ticks += 1
            choice = self.choice
            if stop.is_set() or choice is None:
                continue
            if choice.mode == "inotify" and ticks % AUDIT_EVERY == 0 and await asyncio.to_thread(self._watches_short):
                await self._fall_back_to_polling(choice)
            elif not observer_alive(choice.thread):
                await self._restart(choice)

    def _watches_short(self) -> bool:
        # Twice: folders come and go between the count and the read of the watches.
        return bool(watch_shortfall(self._inbox, self._recursive) and watch_shortfall(self._inbox, self._recursive))

    async def _fall_back_to_polling(self, choice: ObserverChoice) -> None:
        # Folders created since start-up can exhaust fs.inotify.max_user_watches too.
        log.error(
            "observer.inotify_exhausted",
            error="fewer inotify watches than folders",
            limit_to_raise="fs.inotify.max_user_watches",
            mode="polling",
        )
        choice.thread.stop()
        self.choice = await asyncio.to_thread(
            polling_fallback,
            self._bridge,
            self._inbox,
            self._recursive,
            "inotify watches exhausted: raise fs.inotify.max_user_watches on the node; polling instead",
        )
        await self._rescan()

    async def _restart(self, choice: ObserverChoice) -> None:
        log.error("observer.died", mode=choice.mode, action="restarting the observer and rescanning")
        with contextlib.suppress(Exception):
            choice.thread.stop()
        await self.start()
        await self._rescan()

    async def stop(self, timeout: float) -> None:
        """Stop the observer and wait up to `timeout` s for its thread (a daemon: a wedged one is left)."""
        choice, self.choice = self.choice, None
        if choice is None:
            return
        choice.thread.stop()
        await asyncio.to_thread(choice.thread.join, max(0.0, timeout))
