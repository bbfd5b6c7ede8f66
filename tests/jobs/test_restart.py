"""Jobs and their history survive a restart of `python -m watcher run` (SIGTERM, start again).

The `rescan` job follows WATCHER_RESCAN_INTERVAL at every start (a pause does not outlive a restart):
it runs on that interval, and 0 removes it while the start-up scan still delivers what is waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from tests.support.process import AUTH, WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(90)


def jobs_by_id(w: WatcherProcess) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in w.http.get("/jobs").json()["jobs"]}


def test_jobs_and_history_survive_a_restart(make_watcher: Callable[..., WatcherProcess], tmp_path: Path) -> None:
    root = tmp_path / "svc"
    w = make_watcher(root, rescan_interval="1")
    day = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    bodies = [
        {"id": "cron-fields", "kind": "purge", "trigger": {"type": "cron", "hour": "4", "minute": "30", "day_of_week": "sat,sun"}, "args": {"target": "outbox", "older_than_seconds": 604800}},
        {"id": "cron-expr", "kind": "sweep", "trigger": {"type": "cron", "expression": "15 */6 * * *"}, "args": {"older_than_seconds": 600}},
        {"id": "every-hour", "kind": "retry_failed", "trigger": {"type": "interval", "hours": 1}},
        {"id": "once", "kind": "rescan", "trigger": {"type": "date", "run_date": day}},
        {"id": "held", "kind": "purge", "trigger": {"type": "interval", "minutes": 5}, "args": {"target": "failed", "older_than_seconds": 0}},
    ]  # fmt: skip
    for body in bodies:
        w.http.create(body)
    assert w.http.post("/jobs/held/pause", headers=AUTH).json()["paused"] is True
    first_run = w.http.run_now("cron-expr", before=0)
    second_run = w.http.run_now("cron-expr", before=1)
    wait_until(lambda: len(w.http.runs("rescan")) >= 2, 10, "two runs of the rescan job on its 1 s interval")
    before = jobs_by_id(w)
    rescan_runs = w.http.runs("rescan")
    assert before["rescan"]["trigger"] == {"type": "interval", "seconds": 1}
    assert w.http.post("/jobs/rescan/pause", headers=AUTH).json()["paused"] is True

    assert w.terminate() == 0
    w = make_watcher(root, rescan_interval="1")

    after = jobs_by_id(w)
    assert set(after) == set(before)
    for job_id, job in before.items():
        if job_id == "rescan":
            continue  # re-created from the setting at each start, with a fresh next run time
        assert after[job_id] == job, job_id
    assert after["held"]["paused"] is True and after["held"]["next_run_time"] is None
    assert w.http.runs("cron-expr") == [second_run, first_run]
    assert w.http.runs("rescan")[-len(rescan_runs) :] == rescan_runs
    # the setting is the rescan job's source of truth at each start: paused no more
    assert after["rescan"]["paused"] is False and after["rescan"]["trigger"] == {"type": "interval", "seconds": 1}

    # WATCHER_RESCAN_INTERVAL=0: no rescan job (nor its history); the start-up scan still runs
    assert w.terminate() == 0
    (root / "inbox").mkdir(exist_ok=True)
    (root / "inbox" / "waiting.txt").write_bytes(b"found at start-up")
    w = make_watcher(root, rescan_interval="0")
    assert "rescan" not in jobs_by_id(w)
    assert w.http.get("/jobs/rescan").status_code == 404
    assert w.http.get("/jobs/rescan/runs").status_code == 404
    assert set(jobs_by_id(w)) == set(before) - {"rescan"}
    wait_until(lambda: (root / "outbox" / "waiting.txt").is_file(), 10, "the start-up scan to deliver")

    # and a new interval is the rescan job's new trigger
    assert w.terminate() == 0
    w = make_watcher(root, rescan_interval="7.5")
    assert jobs_by_id(w)["rescan"]["trigger"] == {"type": "interval", "seconds": 7.5}


def test_a_run_missed_by_more_than_the_grace_time_is_recorded_as_missed(
    make_watcher: Callable[..., WatcherProcess], tmp_path: Path
) -> None:
    root = tmp_path / "svc"
    w = make_watcher(root)
    w.http.create({"id": "yearly", "kind": "rescan", "trigger": {"type": "cron", "expression": "0 3 1 1 *"}})
    assert w.terminate() == 0
    # While the service is down, the job falls due two hours ago (beyond the 3600 s grace), written
    # through APScheduler's own job store as the scheduler itself would have left it.
    due = datetime.now(UTC) - timedelta(hours=2)
    store = SQLAlchemyJobStore(url=f"sqlite:///{root / 'state' / 'jobs.sqlite'}")
    store.start(SimpleNamespace(timezone=UTC), "default")
    job = store.lookup_job("yearly")
    job._scheduler = SimpleNamespace(timezone=UTC)
    job._modify(next_run_time=due)
    store.update_job(job)
    store.shutdown()

    w = make_watcher(root)
    runs = wait_until(lambda: w.http.runs("yearly"), 10, "the missed run to be recorded")
    assert [r["outcome"] for r in runs] == ["missed"]
    assert datetime.fromisoformat(runs[0]["started_at"]) == due
    assert "3600 s" in runs[0]["error"]
    assert 'watcher_job_runs_total{job_id="yearly",outcome="missed"} 1.0' in w.http.get("/metrics").text
    assert datetime.fromisoformat(w.http.get("/jobs/yearly").json()["next_run_time"]) > datetime.now(UTC)
