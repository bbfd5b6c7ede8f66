"""The metrics say what /health/ready says, with no traffic needed to notice a broken outbox, and the
start-up scan is counted apart from the rescans that catch missed events.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_broken_outbox_with_no_traffic_shows_in_readiness_and_metrics(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def main() -> None:
        async with running(settings) as service:
            base = f"http://127.0.0.1:{settings.http_port}"
            async with httpx.AsyncClient() as client:
                scraped = samples((await client.get(f"{base}/metrics")).text)
                assert scraped[("watcher_ready", ())] == 1
                assert scraped[("watcher_ready_check", (("check", "outbox"),))] == 1
                moved = tmp_path / "outbox-away"
                os.rename(settings.outbox, moved)  # an unmounted volume, say; no file is in flight
                # The gate's own look at the outbox closes it: nobody asks /health/ready meanwhile.
                await await_until(lambda: not service.gate.is_open, 10, "the gate to see the outbox gone")
                assert metric_value(service, "watcher_delivery_paused") == 1
                scraped = samples((await client.get(f"{base}/metrics")).text)
                ready = await client.get(f"{base}/health/ready")
                assert ready.status_code == 503
                assert scraped[("watcher_ready", ())] == 0
                for name, check in ready.json()["checks"].items():
                    assert scraped[("watcher_ready_check", (("check", name),))] == float(check["ok"]), name
                assert scraped[("watcher_ready_check", (("check", "outbox"),))] == 0
                assert scraped[("watcher_ready_check", (("check", "delivery"),))] == 0
                os.rename(moved, settings.outbox)
                await await_until(lambda: service.gate.is_open, 15, "delivery to resume by itself")
                scraped = samples((await client.get(f"{base}/metrics")).text)
                assert scraped[("watcher_ready", ())] == 1
                assert scraped[("watcher_delivery_paused", ())] == 0

    asyncio.run(main())


def test_files_found_at_start_up_count_as_startup_not_as_missed_events(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.inbox.mkdir(parents=True)
    for i in range(3):
        (settings.inbox / f"old{i}.txt").write_bytes(b"waited through a restart")
        os.utime(settings.inbox / f"old{i}.txt", (0, 0))

    async def main() -> None:
        async with running(settings) as service:
            await await_until(lambda: len(os.listdir(settings.outbox)) == 3, 15, "the backlog delivered")
            assert metric_value(service, "watcher_files_discovered_total", {"source": "startup"}) == 3
            assert metric_value(service, "watcher_files_discovered_total", {"source": "rescan"}) == 0

    asyncio.run(main())


def test_transfer_duration_observes_each_files_own_time(tmp_path: Path) -> None:
    # Renamed in at once, the files reach the workers in batches that share one group commit. The
    # histogram's sum must stay within what the workers could have spent, not batch time x files.
    settings = make_settings(tmp_path, workers="2")
    staging = tmp_path / "staging"
    staging.mkdir()
    count = 600
    for i in range(count):
        (staging / f"f{i:04}.bin").write_bytes(os.urandom(512))

    async def main() -> None:
        async with running(settings) as service:
            began = time.monotonic()
            for name in os.listdir(staging):
                os.rename(staging / name, settings.inbox / name)
            await await_until(
                lambda: metric_value(service, "watcher_transfer_duration_seconds_count") == count,
                30,
                "every delivery observed",
            )
            wall = time.monotonic() - began
            total = metric_value(service, "watcher_transfer_duration_seconds_sum")
            assert total <= wall * int(settings.workers), (total, wall)

    asyncio.run(main())
