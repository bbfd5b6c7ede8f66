"""The schedule in PostgreSQL: a throwaway cluster, `watcher run` against it, a restart.

Needs the `postgres` extra (psycopg 3) and PostgreSQL's initdb/pg_ctl; without them the test is
skipped and says what was not checked.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.jobs.conftest import AUTH, Watcher, free_port

pytestmark = pytest.mark.timeout(90)


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL job store NOT checked: psycopg missing (pip install -e '.[postgres]')")
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL job store NOT checked: initdb/pg_ctl not found")
    prefix: list[str] = []
    # Not under tmp_path: when we are root the cluster runs as `postgres`, which cannot enter
    # pytest's private base directory.
    data = Path(tempfile.mkdtemp(prefix="watcher-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL job store NOT checked: running as root without runuser")
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "watcher", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://watcher@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_the_schedule_and_history_live_in_postgresql(
    postgres_url: str, make_watcher: Callable[..., Watcher], tmp_path: Path
) -> None:
    root = tmp_path / "svc"
    w = make_watcher(root, jobstore_url=postgres_url)
    ready = w.http.get("/health/ready").json()["checks"]["schedule_store"]
    assert ready["ok"] and ready["detail"].startswith("postgresql+psycopg://watcher@127.0.0.1")
    job = w.create({"id": "nightly", "kind": "purge", "trigger": {"type": "cron", "expression": "30 3 * * *"},
                    "args": {"target": "failed", "older_than_seconds": 86400}})  # fmt: skip
    run = w.run_now("nightly", before=0)
    assert run["outcome"] == "success", run
    assert w.terminate() == 0

    w = make_watcher(root, jobstore_url=postgres_url)
    assert w.http.get("/jobs/nightly").json() == job
    assert w.runs("nightly") == [run]
    assert not (root / "state" / "jobs.sqlite").exists()
    assert w.http.delete("/jobs/nightly", headers=AUTH).status_code == 204
