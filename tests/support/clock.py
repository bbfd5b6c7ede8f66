"""A fake clock for the parts that take one (`watcher.clock.Clock`): time moves only when a test says."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    """Monotonic and wall time that move only by `advance`; `sleep` returns when enough has passed.

    The wall clock starts at the real time (files written by the test have real mtimes), the
    monotonic one at 1000.
    """

    def __init__(self, wall: float, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._mono = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move both clocks on by `seconds` and wake every sleep that has fallen due."""
        self._mono += seconds
        self._wall += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock (a cancelled one no longer counts)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())
