"""Fixtures of the cluster tests: one throwaway PostgreSQL for them all, a fresh database per test, and
real `python -m watcher run` replicas that share one inbox, outbox and failed dir.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.process import WatcherProcess, api_watcher

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster's URL, shared by the cluster tests (skipped, saying why, without it);
    one server, not one a module: its start costs seconds of `make test`.
    """
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def database(postgres_server: str) -> str:
    """The URL of a fresh, empty database on the module's server."""
    import psycopg

    name = f"cluster_{next(_databases)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """The shared volume: inbox, outbox and failed dir, as one filesystem."""
    for name in ("inbox", "outbox", "failed"):
        (tmp_path / "shared" / name).mkdir(parents=True)
    return tmp_path / "shared"


Replicas = Callable[..., WatcherProcess]


@pytest.fixture
def replica(tmp_path: Path, shared: Path, database: str) -> Iterator[Replicas]:
    """Make (not start) a replica with id `name` on the shared folders and the test's database."""
    made: list[WatcherProcess] = []

    def make(name: str, **settings: str | None) -> WatcherProcess:
        options: dict[str, str | None] = {
            "inbox": str(shared / "inbox"),
            "outbox": str(shared / "outbox"),
            "failed_dir": str(shared / "failed"),
            "cluster": "true",
            "replica_id": name,
            "jobstore_url": database,
            "rescan_interval": "2",
            **settings,
        }
        w = api_watcher(tmp_path / name, **options)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
