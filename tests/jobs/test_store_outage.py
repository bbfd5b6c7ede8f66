"""A schedule store that fails for a while never stops the schedule (issue 10, item 3).

The fault is the one of the issue: the state dir, which holds ``jobs.sqlite``, made immutable
(``chattr +i``, which stops root too): SQLite can still read the database but cannot create its
journal, so every write fails with ``unable to open database file``. APScheduler 3.11 let that error
escape its wake-up from ``SQLAlchemyJobStore.update_job`` and never armed its timer again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.support import chattr_works, immutable
from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from watcher.config import Settings
from watcher.service import Service

pytestmark = pytest.mark.timeout(90)


async def poll(cond: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Await `cond` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := await cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


def runs_counted(service: Service, outcome: str, job_id: str = "rescan") -> float:
    return metric_value(service, "watcher_job_runs_total", {"job_id": job_id, "outcome": outcome})


async def schedule_store(client: httpx.AsyncClient, settings: Settings) -> dict[str, Any]:
    check: dict[str, Any] = (await client.get(f"http://127.0.0.1:{settings.http_port}/health/ready")).json()["checks"][
        "schedule_store"
    ]
    return check


@pytest.fixture
def chattr(tmp_path: Path) -> None:
    if not chattr_works(tmp_path):
        pytest.skip("schedule store outage NOT checked: needs root and chattr on this filesystem")


@pytest.mark.usefixtures("chattr")
def test_an_unwritable_store_fails_readiness_counts_the_runs_and_the_schedule_recovers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rescan_interval="1")

    async def main() -> None:
        async with running(settings) as service, httpx.AsyncClient(timeout=10) as client:
            base = f"http://127.0.0.1:{settings.http_port}"
            await poll(lambda: asyncio.sleep(0, runs_counted(service, "success") >= 1), 10, "a first rescan")
            assert (await schedule_store(client, settings))["ok"] is True
            with immutable(settings.state_dir):
                check = await _failing_check(client, settings)
                assert "unable to open database file" in check["detail"], check
                # the rescan due during the outage did not happen, and that is counted
                await poll(lambda: asyncio.sleep(0, runs_counted(service, "error") >= 1), 10, "an error run counted")
                assert (await client.get(f"{base}/health/ready")).status_code == 503
                metrics = (await client.get(f"{base}/metrics")).text
                assert 'watcher_ready_check{check="schedule_store"} 0.0' in metrics
                await asyncio.sleep(2.5)  # several due times pass: still one error for the one outage
                assert runs_counted(service, "error") == 1
            cleared = time.time()

            async def new_success() -> bool:
                runs = (await client.get(f"{base}/jobs/rescan/runs")).json()["runs"]
                return any(
                    r["outcome"] == "success" and datetime.fromisoformat(r["started_at"]).timestamp() > cleared
                    for r in runs
                )

            # recovery by itself: the retry wake-up (5 s) finds the store writable again
            await poll(new_success, 15, "a rescan run after the store came back")
            job = (await client.get(f"{base}/jobs/rescan")).json()
            assert datetime.fromisoformat(job["next_run_time"]).timestamp() > time.time() - 0.5, job
            check = await poll(lambda: _passing(client, settings), 10, "schedule_store passing again after the outage")
            assert check["detail"].endswith("writable"), check

    asyncio.run(main())


async def _failing_check(client: httpx.AsyncClient, settings: Settings) -> dict[str, Any]:
    async def failing() -> dict[str, Any] | None:
        check = await schedule_store(client, settings)
        return None if check["ok"] else check

    result: dict[str, Any] = await poll(failing, 10, "schedule_store failing")
    return result


async def _passing(client: httpx.AsyncClient, settings: Settings) -> dict[str, Any] | None:
    check = await schedule_store(client, settings)
    return check if check["ok"] else None


@pytest.mark.usefixtures("chattr")
def test_readiness_writes_to_the_store_even_when_no_job_is_due(tmp_path: Path) -> None:
    # No rescan job and the built-in retry_failed paused: no scheduler wake-up touches the store, so
    # only the readiness check's own write can notice that the store refuses writes.
    settings = make_settings(tmp_path, rescan_interval="0")

    async def main() -> None:
        async with running(settings), httpx.AsyncClient(timeout=10) as client:
            assert (await schedule_store(client, settings))["ok"] is True
            with immutable(settings.state_dir):
                check = await _failing_check(client, settings)
                assert "refuses writes" in check["detail"], check
            await poll(lambda: _passing(client, settings), 10, "schedule_store passing again")

    asyncio.run(main())


def test_a_wake_up_that_fails_in_an_unforeseen_way_is_re_armed_by_the_watchdog(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rescan_interval="1")

    async def main() -> None:
        async with running(settings) as service:
            scheduler = service.jobs.scheduler
            assert scheduler is not None
            await poll(lambda: asyncio.sleep(0, runs_counted(service, "success") >= 1), 10, "a first rescan")
            failed = asyncio.Event()

            def broken() -> float | None:
                # once: an error that nothing in the scheduler catches (the timer is not re-armed)
                del scheduler.__dict__["_process_jobs"]
                failed.set()
                raise RuntimeError("injected: a wake-up that raises")

            scheduler.__dict__["_process_jobs"] = broken  # an instance attribute shadows the method
            await asyncio.wait_for(failed.wait(), 10)
            await asyncio.sleep(0.1)
            assert scheduler.stalled
            ok, detail = await service.jobs.check()
            assert not ok and "stopped" in detail, detail
            before = runs_counted(service, "success")
            await poll(
                lambda: asyncio.sleep(0, runs_counted(service, "success") > before), 15, "a rescan after re-arming"
            )
            assert not scheduler.stalled

    asyncio.run(main())
