"""Cluster mode: an event's file goes to exactly one live replica (no claim race on one node)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.settings import make_settings

if TYPE_CHECKING:
    from watcher.cluster.membership import Membership

pytest.importorskip("psycopg")  # the cluster extra


def _member(tmp_path: Path, replica: str, live: tuple[str, ...]) -> Membership:
    from prometheus_client import CollectorRegistry

    from watcher.cluster.membership import Membership
    from watcher.metrics import create_metrics

    settings = make_settings(
        tmp_path / replica, cluster="true", replica_id=replica, jobstore_url="postgresql://u@127.0.0.1:1/db"
    )
    member = Membership(settings, create_metrics(CollectorRegistry()), lambda _leader: None)
    member.live_ids = live
    return member


def test_each_file_has_exactly_one_owner_among_the_live_replicas(tmp_path: Path) -> None:
    live = ("r1", "r2", "r3")
    members = [_member(tmp_path, r, live) for r in live]
    names = [f"dir{i % 7}/file-{i}.csv" for i in range(3000)] + ["caf\udce9.txt", "ünï.csv"]
    owners = [[m.replica for m in members if m.owns(name)] for name in names]
    assert all(len(o) == 1 for o in owners), "one owner per file"
    shares = {r: sum(o == [r] for o in owners) for r in live}
    assert all(800 < n < 1200 for n in shares.values()), shares  # the hash spreads the files


def test_a_replica_takes_everything_while_it_cannot_see_the_others(tmp_path: Path) -> None:
    assert _member(tmp_path, "r1", ()).owns("a.csv")  # not known yet (start, lost connection)
    assert _member(tmp_path, "r1", ("r1",)).owns("a.csv")  # alone
    assert _member(tmp_path, "r1", ("r2", "r3")).owns("a.csv")  # not in the list it last saw
