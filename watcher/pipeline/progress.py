"""Progress through a backlog: a line every few seconds while one drains, and one line at its end.

A backlog is the start-up (whatever the start-up scan finds), or any moment at which at least
:data:`BACKLOG_MIN` files wait. It ends when no file waits and no start-up scan is still walking.
Nothing here runs per file: a task looks at two numbers the pipeline keeps anyway (files waiting,
files handled) a few times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watcher.logging import get_logger

log = get_logger(__name__)

BACKLOG_MIN = 100  # files waiting at one look that make a backlog
PROGRESS_EVERY = 5.0  # seconds between two progress lines
LOOK_EVERY = 0.5  # seconds between two looks (the end of a backlog is seen this soon)


@dataclass
class _Backlog:
    started: float
    base_done: int
    last_at: float
    last_done: int


class BacklogProgress:
    """Turns looks at (waiting, handled) into ``backlog.progress`` and ``backlog.drained`` lines.

    :meth:`look` is pure bookkeeping on the numbers and the clock it is given, so tests drive it
    with made-up times; :meth:`run` calls it on the live service.
    """

    def __init__(self, every: float = PROGRESS_EVERY, threshold: int = BACKLOG_MIN) -> None:
        """Log progress every `every` s once `threshold` files wait."""
        self.every = every
        self.threshold = threshold
        self._current: _Backlog | None = None

    def begin(self, now: float, done: int) -> None:
        """Start a backlog now (the start-up), counting files handled from `done` on."""
        if self._current is None:
            self._current = _Backlog(now, done, now, done)

    def look(self, now: float, waiting: int, done: int, scanning: bool = False) -> tuple[str, dict[str, Any]] | None:
        """One look: the event to log, if any, as (name, fields)."""
        current = self._current
        if current is None:
            if waiting >= self.threshold:
                self.begin(now, done)
            return None
        if waiting == 0 and not scanning:
            self._current = None
            files = done - current.base_done
            if files == 0:
                return None  # a start-up with an empty inbox
            return "backlog.drained", {"files": files, "seconds": round(now - current.started, 3)}
        if now - current.last_at < self.every:
            return None
        rate = (done - current.last_done) / (now - current.last_at)
        current.last_at, current.last_done = now, done
        fields: dict[str, Any] = {
            "done": done - current.base_done,
            "left": waiting,
            "files_per_s": round(rate, 1),
            # While the start-up scan walks, `left` counts only what it found so far.
            "eta_s": round(waiting / rate, 1) if rate > 0 and not scanning else None,
            "scanning": scanning or None,
        }
        return "backlog.progress", fields

    async def run(
        self,
        stop: asyncio.Event,
        waiting: Callable[[], int],
        done: Callable[[], int],
        scanning: Callable[[], bool],
        interval: float = LOOK_EVERY,
    ) -> None:
        """Look every `interval` s until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            event = self.look(time.monotonic(), waiting(), done(), scanning())
            if event is not None:
                name, fields = event
                log.info(name, **fields)
