"""Replicas started at the same moment on an empty database all join (the tables are made one at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import Replicas

pytestmark = pytest.mark.e2e


def test_replicas_started_together_on_an_empty_database_all_join(replica: Replicas, shared: Path) -> None:
    # Before watcher.schema, two of three such starts raced in CREATE TABLE and one exited 1
    # (a unique violation in pg_type); now each finds the tables made or makes them under a lock.
    replicas = [replica(name) for name in ("s1", "s2", "s3")]
    for w in replicas:
        w.start(wait=None)
    for w in replicas:
        w.wait_until_up("ready", timeout=45)
    ids = replicas[0].http.get("/cluster").json()["replicas"]
    assert [r["id"] for r in ids] == ["s1", "s2", "s3"]


def test_the_server_ends_a_dead_replica_s_session_within_seconds(database: str) -> None:
    # The membership session asks the server for keepalives of its own, so a node that dies or is cut
    # off loses its locks in seconds rather than after the kernel's default two hours.
    import psycopg

    from watcher.cluster.membership import SERVER_KEEPALIVES

    with psycopg.connect(database, options=SERVER_KEEPALIVES) as conn:
        shown = {name: conn.execute(f"SHOW {name}").fetchone() for name in ("tcp_keepalives_idle", "tcp_user_timeout")}
    assert shown == {"tcp_keepalives_idle": ("5",), "tcp_user_timeout": ("15000",)}, shown
