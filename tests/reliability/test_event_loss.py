"""Event loss: a queue of 16 under a burst of 20 000 files. Events are dropped and counted, and the
rescan delivers every file anyway; /metrics accounts for it (dropped events, files found by rescan).

The quick form (3 000 files) is tests/integration/test_delivery.py::test_small_queue_burst_recovered_by_rescan.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.reliability.support import sample, scrape, temp_files
from tests.support.fs import count_files
from tests.support.service import running
from tests.support.settings import make_settings
from tests.support.wait import await_until


def burst(inbox: Path, n: int) -> None:
    for i in range(n):
        folder = inbox / f"d{i % 20:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"b{i:05d}.txt").write_bytes(f"{i:08d}".encode() * 8)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_small_queue_20000_file_burst_recovered_by_rescan(tmp_path: Path) -> None:
    n = 20_000
    settings = make_settings(tmp_path, queue_size="16", rescan_interval="2", workers="4")

    async def main() -> None:
        async with running(settings) as service:
            settings.inbox.mkdir(exist_ok=True)
            await asyncio.to_thread(burst, settings.inbox, n)
            await await_until(lambda: count_files(settings.inbox) == 0, 600, f"{n} files delivered")
            await await_until(lambda: not service.intake.tracked, 30, "nothing pending")
            metrics = await asyncio.to_thread(scrape, settings.http_port)
            dropped = sample(metrics, "watcher_events_dropped_total")
            by_rescan = sample(metrics, "watcher_files_discovered_total", source="rescan")
            by_event = sample(metrics, "watcher_files_discovered_total", source="event")
            delivered = sample(metrics, "watcher_files_delivered_total")
            print(f"events dropped={dropped:.0f} discovered event={by_event:.0f} rescan={by_rescan:.0f}")
            assert dropped > 0, "a queue of 16 must overflow under this burst"
            assert by_rescan > 0, "files whose events were dropped must be found by the rescan"
            assert by_event + by_rescan >= n
            assert delivered == n
            assert sample(metrics, "watcher_files_failed_total") == 0

    asyncio.run(main())
    assert count_files(settings.outbox) == n
    for i in (0, 1, n // 2, n - 1):
        path = settings.outbox / f"d{i % 20:02d}" / f"b{i:05d}.txt"
        assert path.read_bytes() == f"{i:08d}".encode() * 8
    assert not temp_files(settings.outbox) and not os.listdir(settings.failed_path)
