"""The schedule survives a PostgreSQL restart: readiness fails while it is down, the run it could not
do is counted, and the rescan job runs again by itself once the database is back (issue 10, item 3).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.postgres import pg_ctl
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


def data_directory(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return str(row[0])


def counted(w: WatcherProcess, outcome: str) -> float:
    match = re.search(
        rf'watcher_job_runs_total\{{job_id="rescan",outcome="{outcome}"\}} (\S+)', w.http.get("/metrics").text
    )
    return float(match.group(1)) if match else 0.0


def store_check(w: WatcherProcess) -> dict[str, object]:
    check: dict[str, object] = w.http.get("/health/ready").json()["checks"]["schedule_store"]
    return check


def test_the_schedule_recovers_after_postgresql_restarts(
    postgres_url: str,
    make_watcher: Callable[..., WatcherProcess],
    tmp_path: Path,
) -> None:
    w = make_watcher(tmp_path / "svc", jobstore_url=postgres_url, rescan_interval="1")
    wait_until(lambda: counted(w, "success") >= 1, 10, "a first rescan")
    data = data_directory(postgres_url)
    pg_ctl(data, "-m", "fast", "-w", "stop")
    try:
        wait_until(lambda: not store_check(w)["ok"], 15, "schedule_store failing while PostgreSQL is down")
        assert w.http.get("/health/ready").status_code == 503
        wait_until(lambda: counted(w, "error") >= 1, 15, "the rescan that could not run counted as an error")
    finally:
        # not running: `restart` starts it with the options of the first start (postmaster.opts)
        # -l: the server must not inherit our captured stdout
        pg_ctl(data, "-w", "-l", str(Path(data).parent / "log"), "restart")
    back = time.time()

    def new_success() -> bool:
        return any(
            r["outcome"] == "success" and datetime.fromisoformat(r["started_at"]).timestamp() > back
            for r in w.http.runs("rescan")
        )

    wait_until(new_success, 30, "a rescan run after PostgreSQL came back")
    wait_until(lambda: store_check(w)["ok"], 15, "schedule_store passing again")
    job = w.http.get("/jobs/rescan").json()
    assert datetime.fromisoformat(job["next_run_time"]).timestamp() > time.time() - 0.5, job
