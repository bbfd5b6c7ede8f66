"""A throwaway PostgreSQL server for the cluster workloads (initdb and pg_ctl, as the cluster tests make one).

The server runs with PostgreSQL's defaults (``fsync`` and ``synchronous_commit`` on: the delivery record
of a cluster lives there, and its durability is part of the cost measured), on a free port on 127.0.0.1,
its data folder under ``bench/.work``. As root, initdb and the server run as ``postgres`` (initdb refuses
root). Each run gets a fresh database (:func:`create_database`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_databases = itertools.count()


def pg_tool(name: str) -> str | None:
    """A PostgreSQL program on PATH or in Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def as_postgres() -> list[str]:
    """The command prefix that runs a program as `postgres` when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def server(parent: Path, port: int) -> Iterator[str]:
    """Start a fresh server under ``parent`` on ``port``; yield its URL; stop and remove it afterwards.

    RuntimeError (with the tool's output) when it cannot be made or started.
    """
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("initdb/pg_ctl not found")
    parent.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="postgres-", dir=parent))
    prefix = as_postgres()
    if prefix:
        shutil.chown(data, "postgres")
    db = str(data / "db")
    try:
        _run("initdb", [*prefix, initdb, "-D", db, "-A", "trust", "-U", "watcher", "--no-sync"])
        options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200"
        _run("pg_ctl start", [*prefix, pg_ctl, "-D", db, "-o", options, "-l", str(data / "log"), "-w", "start"])
        try:
            yield f"postgresql://watcher@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*prefix, pg_ctl, "-D", db, "-m", "immediate", "stop"], capture_output=True, check=False)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run(label: str, args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: {(done.stderr or done.stdout).strip()[-500:]}")


def create_database(server_url: str) -> str:
    """Create a new, empty database on the server of ``server_url``; its URL."""
    import psycopg

    name = f"bench_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name
