"""OutboxGate on its own, with a fake clock: when it looks at the outbox, closes, probes and reopens.

The outbox is a real folder; breaking it is removing it (no root needed). The gate's checks run in
a thread, so after moving the clock a test waits for their effect, never for a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.clock import FakeClock
from tests.support.wait import await_until
from watcher.metrics import create_metrics
from watcher.pipeline.outbox_gate import OutboxGate

INTERVAL = 2.0


class Bench:
    def __init__(self, tmp_path: Path) -> None:
        self.outbox = tmp_path / "outbox"
        self.outbox.mkdir()
        self.clock = FakeClock(wall=time.time())
        self.metrics = create_metrics()
        self.gate = OutboxGate(self.outbox, self.metrics, probe_interval=INTERVAL, clock=self.clock)

    def paused(self) -> float | None:
        return self.metrics.registry.get_sample_value("watcher_delivery_paused")

    async def asleep(self, sleepers: int = 1) -> None:
        """Wait until the gate's tasks are all waiting on the clock again (their checks are done)."""
        await await_until(lambda: self.clock.sleeping == sleepers, 5, f"{sleepers} sleeper(s) on the clock")


def run(tmp_path: Path, scenario: Callable[[Bench], Awaitable[None]]) -> None:
    async def main() -> None:
        bench = Bench(tmp_path)
        try:
            await scenario(bench)
        finally:
            await bench.gate.stop()

    asyncio.run(main())


def test_an_open_gate_looks_at_the_outbox_every_interval(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.gate.start()
        await b.asleep()
        b.outbox.rmdir()  # the outbox breaks with no traffic
        b.clock.advance(INTERVAL - 0.1)
        await b.asleep()
        assert b.gate.is_open and b.paused() == 0
        b.clock.advance(0.1)
        await await_until(lambda: not b.gate.is_open, 5, "the gate to close")
        assert "is unusable" in b.gate.reason and b.paused() == 1

    run(tmp_path, scenario)


def test_a_closed_gate_probes_every_interval_and_reopens_by_itself(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.outbox.rmdir()
        b.gate.close("no space left on device")
        assert not b.gate.is_open and b.paused() == 1
        waiter = asyncio.create_task(b.gate.wait_open())
        await b.asleep()
        b.clock.advance(INTERVAL)  # first probe: still broken; the reason is the probe's
        await await_until(lambda: "is unusable" in b.gate.reason, 5, "the probe's reason")
        await b.asleep()
        assert not b.gate.is_open and not waiter.done()
        b.outbox.mkdir()  # fixed, but nobody looks before the next interval
        b.clock.advance(INTERVAL - 0.1)
        await b.asleep()
        assert not b.gate.is_open
        b.clock.advance(0.1)
        await asyncio.wait_for(waiter, 5)
        assert b.gate.is_open and b.gate.reason == "" and b.paused() == 0
        assert list(b.outbox.iterdir()) == [], "the probe file is removed"

    run(tmp_path, scenario)


def test_closing_twice_keeps_one_prober_and_the_latest_reason(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.gate.close("first")
        b.gate.close("second")
        assert b.gate.reason == "second"
        await b.asleep(1)

    run(tmp_path, scenario)


def test_stop_ends_the_watch_and_the_probe_without_the_clock_moving(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.gate.start()
        b.gate.close("broken")
        await b.asleep(2)
        tasks = [t for t in (b.gate._watcher, b.gate._prober) if t is not None]
        await asyncio.wait_for(b.gate.stop(), 1)
        assert all(t.done() and not t.cancelled() for t in tasks)
        assert b.clock.sleeping == 0

    run(tmp_path, scenario)
