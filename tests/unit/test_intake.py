"""Intake on its own, with a fake clock: when a file is queued, and that it is queued once.

No observer, no workers, no service: events go in through `handle_events`, the settler is stepped
with `check_due`, and time moves only by `FakeClock.advance`. The files are real (their sizes,
mtimes and open handles are what intake looks at); their mtimes are set on the fake wall clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.clock import FakeClock
from tests.support.fs import write_file
from tests.support.settings import make_settings
from watcher.metrics import create_metrics
from watcher.pipeline.intake import Intake, Tracked
from watcher.pipeline.observer import RawEvent

SETTLE = 5.0


class Bench:
    """An Intake over tmp_path/inbox with a fake clock and the queue it fills."""

    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, settle_seconds=str(SETTLE))
        self.inbox = settings.inbox
        self.inbox.mkdir()
        self.clock = FakeClock(wall=time.time())
        self.metrics = create_metrics()
        self.queue: asyncio.Queue[Tracked] = asyncio.Queue(maxsize=100)
        self.intake = Intake(settings, self.metrics, self.queue, self.clock)

    def write(self, rel: str, data: bytes, mtime_offset: float = 0.0) -> Path:
        """Write a file whose mtime is now on the fake wall clock (plus `mtime_offset`)."""
        path = write_file(self.inbox / rel, data)
        then = self.clock.time() + mtime_offset
        os.utime(path, (then, then))
        return path

    def event(self, kind: str, rel: str) -> None:
        self.intake.handle_events([RawEvent(kind, str(self.inbox / rel), "", False)])

    async def step(self, seconds: float) -> None:
        """Let `seconds` pass on the clock, then run the settler once."""
        self.clock.advance(seconds)
        await self.intake.check_due()

    def state(self, rel: str) -> str:
        return self.intake.tracked[rel].state

    def queued(self) -> list[str]:
        out: list[str] = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait().rel)
        return out


def run(tmp_path: Path, scenario: Callable[[Bench], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(Bench(tmp_path))

    asyncio.run(main())


def test_a_created_file_waits_for_the_settle_time_on_the_clock(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.write("a.txt", b"abc")
        b.event("created", "a.txt")
        await b.step(SETTLE - 0.1)
        assert b.queued() == [] and b.state("a.txt") == "settling"
        await b.step(0.1)
        assert b.queued() == ["a.txt"]
        assert b.state("a.txt") == "queued"

    run(tmp_path, scenario)


def test_a_write_during_the_settle_time_starts_it_again(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.write("grow.bin", b"first half")
        b.event("created", "grow.bin")
        await b.step(SETTLE - 1)
        b.write("grow.bin", b"first half, second half")  # written again at t = settle - 1
        b.event("modified", "grow.bin")
        await b.step(1)  # due now, but changed one second ago
        assert b.queued() == []
        await b.step(SETTLE - 1.1)
        assert b.queued() == []
        await b.step(0.1)  # quiet for the whole settle time since the last write
        assert b.queued() == ["grow.bin"]

    run(tmp_path, scenario)


def test_with_an_mtime_in_the_future_our_own_watch_decides(tmp_path: Path) -> None:
    # A writer whose clock is an hour ahead (a network filesystem): mtime says nothing, so the file
    # must look the same for the settle time as intake itself watches it.
    async def scenario(b: Bench) -> None:
        b.write("skewed.txt", b"data", mtime_offset=3600)
        b.event("created", "skewed.txt")
        await b.step(SETTLE)  # first look: the watch starts now
        assert b.queued() == []
        await b.step(SETTLE - 0.1)
        assert b.queued() == []
        await b.step(0.1)
        assert b.queued() == ["skewed.txt"]

    run(tmp_path, scenario)


def test_a_quiet_file_held_open_for_writing_is_not_taken(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        path = b.write("held.log", b"still writing", mtime_offset=-3600)
        with path.open("ab"):  # a local writer holds it open, silent for an hour
            b.event("created", "held.log")
            await b.step(SETTLE)
            assert b.queued() == []
            assert b.state("held.log") == "settling"
        await b.step(SETTLE)  # closed: taken at the next look
        assert b.queued() == ["held.log"]

    run(tmp_path, scenario)


def test_proof_of_completeness_queues_at_once_and_only_once(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.write("done.csv", b"a,b\n")
        b.event("closed", "done.csv")
        b.event("closed", "done.csv")
        b.event("modified", "done.csv")
        assert b.queued() == ["done.csv"]
        await b.step(SETTLE * 2)
        assert b.queued() == []
        assert b.metrics.registry.get_sample_value("watcher_files_discovered_total", {"source": "event"}) == 1

    run(tmp_path, scenario)


def test_a_settling_file_is_queued_at_once_when_its_writer_closes_it(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.write("slow.bin", b"part")
        b.event("created", "slow.bin")
        assert b.queued() == []
        b.event("closed", "slow.bin")  # close-after-write proves it complete: no settle time
        assert b.queued() == ["slow.bin"]
        await b.step(SETTLE)
        assert b.queued() == []

    run(tmp_path, scenario)


def test_a_file_deleted_while_settling_is_forgotten(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        path = b.write("gone.tmp", b"x")
        b.event("created", "gone.tmp")
        path.unlink()
        b.event("deleted", "gone.tmp")
        assert b.intake.tracked == {}
        await b.step(SETTLE)
        assert b.queued() == []

    run(tmp_path, scenario)


def test_the_oldest_pending_age_is_measured_on_the_clock(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        assert b.intake.oldest_pending_seconds() == 0
        b.write("old.txt", b"x")
        b.event("created", "old.txt")
        b.clock.advance(7)
        b.write("new.txt", b"y")
        b.event("created", "new.txt")
        b.clock.advance(2)
        assert b.intake.oldest_pending_seconds() == 9

    run(tmp_path, scenario)


def test_a_scan_queues_old_files_at_once_and_lets_fresh_ones_settle(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.write("old.txt", b"old", mtime_offset=-SETTLE)
        b.write("fresh.txt", b"fresh", mtime_offset=-1)
        assert await b.intake.scan() == 2
        assert b.queued() == ["old.txt"]
        await b.step(SETTLE - 1.1)
        assert b.queued() == []
        await b.step(0.1)  # the fresh file's mtime is now settle seconds old
        assert b.queued() == ["fresh.txt"]
        assert b.metrics.registry.get_sample_value("watcher_files_discovered_total", {"source": "rescan"}) == 2

    run(tmp_path, scenario)


def test_cluster_an_event_s_file_of_another_replica_is_left_to_it_then_taken_after_the_grace(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        b.intake.owns = lambda rel: rel.startswith("mine")
        b.write("mine.csv", b"1")
        b.write("theirs.csv", b"2")
        b.write("claimed.csv", b"3")
        for rel in ("mine.csv", "theirs.csv", "claimed.csv"):
            b.event("created", rel)
            b.event("closed", rel)
        assert b.queued() == ["mine.csv"], "only our own at once: no race for the others' claims"
        # The owner claims one: its rename out of the inbox reaches every replica as a move.
        os.rename(b.inbox / "claimed.csv", tmp_path / "claimed.csv")
        b.intake.handle_events([RawEvent("moved", str(b.inbox / "claimed.csv"), "", False)])
        assert "claimed.csv" not in b.intake.tracked
        await b.step(1.0)
        assert b.queued() == []
        # The other is still here after the grace (its owner died or saw the replicas otherwise): ours.
        await b.step(SETTLE)
        assert b.queued() == ["theirs.csv"]

    run(tmp_path, scenario)


def test_the_settler_wakes_for_a_file_due_sooner_than_the_one_it_sleeps_for(tmp_path: Path) -> None:
    async def scenario(b: Bench) -> None:
        stop = asyncio.Event()
        far = Tracked("far.txt", "event", b.clock.time())
        b.intake.tracked[far.rel] = far
        b.intake._schedule(far, 100.0)
        settler = asyncio.create_task(b.intake.run_settler(stop))
        await asyncio.sleep(0)  # let the settler go to sleep until the far file's time
        near = Tracked("near.txt", "event", b.clock.time())  # no such file: its check forgets it
        b.intake.tracked[near.rel] = near
        b.intake._schedule(near, 0.0)
        deadline = time.monotonic() + 5
        while near.rel in b.intake.tracked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert near.rel not in b.intake.tracked, "the settler slept past a file due sooner"
        assert b.intake.tracked[far.rel].state == "settling"
        stop.set()
        await asyncio.wait_for(settler, 5)

    run(tmp_path, scenario)
