"""A throwaway PostgreSQL cluster for the job-store tests (psycopg 3 and initdb/pg_ctl, else a skip).

Not under tmp_path: when we are root the cluster runs as `postgres`, which cannot enter pytest's
private base directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.postgres import as_postgres, pg_tool  # one way to find and run PostgreSQL's programs
from tests.support.net import free_port


def pg_ctl(data: str, *args: str) -> None:
    """pg_ctl on the throwaway cluster (as `postgres` when we are root, as `cluster` started it)."""
    tool = pg_tool("pg_ctl")
    assert tool is not None
    subprocess.run([*as_postgres(), tool, "-D", data, *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a fresh cluster on a free port; yield its URL; stop and remove it afterwards."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL job store NOT checked: psycopg missing (pip install -e '.[postgres]')")
    initdb, pg_ctl_bin = pg_tool("initdb"), pg_tool("pg_ctl")
    if initdb is None or pg_ctl_bin is None:
        pytest.skip("PostgreSQL job store NOT checked: initdb/pg_ctl not found")
    data = Path(tempfile.mkdtemp(prefix="watcher-pg-"))
    prefix = as_postgres()
    if prefix:
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL job store NOT checked: running as root without runuser")
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "watcher", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl_bin, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://watcher@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl_bin, "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
