"""The schedule in PostgreSQL: a throwaway cluster, `watcher run` against it, a restart.

Needs the `postgres` extra (psycopg 3) and PostgreSQL's initdb/pg_ctl; without them the test is
skipped and says what was not checked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.process import AUTH, WatcherProcess

pytestmark = pytest.mark.timeout(90)


def test_the_schedule_and_history_live_in_postgresql(
    postgres_url: str, make_watcher: Callable[..., WatcherProcess], tmp_path: Path
) -> None:
    root = tmp_path / "svc"
    w = make_watcher(root, jobstore_url=postgres_url)
    ready = w.http.get("/health/ready").json()["checks"]["schedule_store"]
    assert ready["ok"] and ready["detail"].startswith("postgresql+psycopg://watcher@127.0.0.1")
    job = w.http.create({"id": "nightly", "kind": "purge", "trigger": {"type": "cron", "expression": "30 3 * * *"},
                    "args": {"target": "failed", "older_than_seconds": 86400}})  # fmt: skip
    run = w.http.run_now("nightly", before=0)
    assert run["outcome"] == "success", run
    assert w.terminate() == 0

    w = make_watcher(root, jobstore_url=postgres_url)
    assert w.http.get("/jobs/nightly").json() == job
    assert w.http.runs("nightly") == [run]
    assert not (root / "state" / "jobs.sqlite").exists()
    assert w.http.delete("/jobs/nightly", headers=AUTH).status_code == 204
