"""Fixtures of the jobs API tests: real `python -m watcher run` processes on loopback
(`tests.support.process.api_watcher`: a token, their own folders, a free port).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.process import WatcherProcess, api_watcher


@pytest.fixture
def make_watcher(tmp_path: Path) -> Iterator[Callable[..., WatcherProcess]]:
    """Start watchers in tmp_path (each in its own folder unless `root` is given), ready; all killed at the end."""
    started: list[WatcherProcess] = []

    def make(root: Path | None = None, **settings: str | None) -> WatcherProcess:
        w = api_watcher(root or tmp_path / f"w{len(started)}", **settings)
        started.append(w)
        return w.start("ready")

    yield make
    for w in started:
        w.close()


@pytest.fixture(scope="module")
def watcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatcherProcess]:
    """One ready watcher with a token, shared by a module's tests."""
    w = api_watcher(tmp_path_factory.mktemp("watcher"))
    try:
        yield w.start("ready")
    finally:
        w.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster's URL (skipped, saying why, without psycopg or initdb)."""
    with postgres.cluster() as url:
        yield url
