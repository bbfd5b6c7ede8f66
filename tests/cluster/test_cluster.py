"""Cluster mode with real replicas: `python -m watcher run` processes on one shared inbox, outbox and
failed dir, and one throwaway PostgreSQL (a fresh database per test).

Quick forms (each well under a minute): exactly once across three replicas, a replica killed and
never restarted, the same id twice, the leader killed.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Replicas
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def _write_files(inbox: Path, count: int, prefix: str = "f") -> dict[str, bytes]:
    """`count` files written beside the inbox and renamed in (complete on arrival); rel → bytes."""
    staging = inbox.parent / "staging"
    staging.mkdir(exist_ok=True)
    files: dict[str, bytes] = {}
    for i in range(count):
        rel = f"{prefix}{i % 7}/{prefix}-{i:04d}.dat" if i % 3 else f"{prefix}-{i:04d}.dat"
        data = os.urandom(64 + i % 4096) + rel.encode()
        tmp = staging / f"{prefix}-{i}.part"
        tmp.write_bytes(data)
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, inbox / rel)
        files[rel] = data
    return files


def _files_under(root: Path) -> dict[str, Path]:
    """Every non-folder below `root`, by relative path (folders that vanish meanwhile are skipped)."""
    found: dict[str, Path] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = path
    return found


def _all_delivered(shared: Path, expected: dict[str, bytes]) -> bool:
    outbox = _files_under(shared / "outbox")
    inbox = _files_under(shared / "inbox")  # claims too: they live under <inbox>/.watcher/
    return len(outbox) >= len(expected) and not inbox


def _assert_exactly_once(shared: Path, expected: dict[str, bytes]) -> None:
    outbox = _files_under(shared / "outbox")
    assert sorted(outbox) == sorted(expected), "every file once, under its own name, and nothing else"
    for rel, data in expected.items():
        assert outbox[rel].read_bytes() == data, rel
    assert not _files_under(shared / "inbox"), "nothing left in the inbox or in any claims folder"
    assert not [p for p in outbox if "/.watcher-" in f"/{p}"], "no temporary file left"
    assert not _files_under(shared / "failed")


def _cluster(w: WatcherProcess) -> dict[str, Any]:
    r = w.http.get("/cluster")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _all_records(w: WatcherProcess, limit: int = 1000, prefix: str = "") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(limit), "prefix": prefix, **({"cursor": cursor} if cursor else {})}
        body = w.http.get("/deliveries", params=params, headers=w.http.auth_header).json()
        items += body["items"]
        cursor = body["next"]
        if cursor is None:
            return items


def _at_least(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return items if len(items) >= n else []


def test_three_replicas_deliver_each_file_exactly_once(replica: Replicas, shared: Path) -> None:
    replicas = [replica(name).start("ready") for name in ("r1", "r2", "r3")]
    expected = _write_files(shared / "inbox", 300)
    wait_until(lambda: _all_delivered(shared, expected), 45, "300 files delivered by the cluster")
    _assert_exactly_once(shared, expected)

    # The record is shared: any replica shows one row per file, written by whichever replica took it.
    records = wait_until(lambda: _at_least(_all_records(replicas[0]), 300), 10, "300 records")
    assert sorted(r["path"] for r in records) == sorted(expected)
    assert {r["outcome"] for r in records} == {"delivered"}
    assert {r["replica"] for r in records} <= {"r1", "r2", "r3"}
    # The record's SQL on PostgreSQL: pages by cursor (row-value comparison) and a path prefix.
    assert [r["id"] for r in _all_records(replicas[1], limit=70)] == [r["id"] for r in records]
    in_f1 = sorted(r["path"] for r in _all_records(replicas[1], limit=50, prefix="f1/"))
    assert in_f1 == sorted(rel for rel in expected if rel.startswith("f1/")) and in_f1
    answer = replicas[2].http.get(f"/files/{records[0]['path']}", headers=replicas[2].http.auth_header)
    assert answer.json()["state"] == "delivered"

    view = _cluster(replicas[1])
    assert view["replica"] == "r2"
    assert [r["id"] for r in view["replicas"]] == ["r1", "r2", "r3"]
    leaders = [r["id"] for r in view["replicas"] if r["leader"]]
    assert len(leaders) == 1 and view["leader"] == leaders[0]
    for w in replicas:
        ready = w.http.get("/health/ready").json()
        assert ready["checks"]["cluster"]["ok"], ready
        metric = f"watcher_cluster_leader {1.0 if w is replicas[int(leaders[0][1]) - 1] else 0.0}"
        assert metric in w.http.get("/metrics").text
    # A leader stopped by SIGTERM hands the schedule on at once, not after its drain.
    old = replicas[int(leaders[0][1]) - 1]
    assert old.terminate() == 0
    rest = [w for w in replicas if w is not old]
    wait_until(lambda: _other_than(_cluster(rest[0])["leader"], leaders[0]), 6, "a new leader after SIGTERM")
    for w in rest:
        assert w.terminate() == 0


def test_a_killed_replica_s_claims_are_finished_by_another(replica: Replicas, shared: Path) -> None:
    a, b = replica("a").start("ready"), replica("b").start("ready")
    # What "a" had claimed when it died: files in its claims folder (it only looks there at start).
    claims = shared / "inbox" / ".watcher" / "a" / "claims"
    claimed = {f"sub/c-{i}.dat": os.urandom(100 + i) for i in range(20)}
    for rel, data in claimed.items():
        (claims / rel).parent.mkdir(parents=True, exist_ok=True)
        (claims / rel).write_bytes(data)
    answer = b.http.get("/files/sub/c-0.dat", headers=b.http.auth_header).json()
    assert (answer["state"], answer["records"]) == ("transferring", []), answer
    assert "claimed by replica a" in answer["detail"]
    expected = {**claimed, **_write_files(shared / "inbox", 300)}
    wait_until(lambda: len(_files_under(shared / "outbox")) >= 20, 20, "delivery under way")
    a.kill()  # in the middle of the burst: whatever it had claimed is left in its claims folder
    killed = time.monotonic()
    wait_until(lambda: _all_delivered(shared, expected), 60, "the dead replica's claims done by another")
    assert time.monotonic() - killed < 60
    _assert_exactly_once(shared, expected)
    assert [r["id"] for r in _cluster(b)["replicas"]] == ["b"]
    assert b.terminate() == 0


def test_the_same_replica_id_twice_exits_2(replica: Replicas, shared: Path) -> None:
    # Claims of this id's previous run (it was killed): finished first when it starts again.
    claims = shared / "inbox" / ".watcher" / "same" / "claims"
    (claims / "deep").mkdir(parents=True)
    left = {"deep/left.dat": b"left behind", "top.dat": b"top"}
    for rel, data in left.items():
        (claims / rel).write_bytes(data)
    first = replica("same").start("ready")
    wait_until(lambda: _all_delivered(shared, left), 15, "the previous run's claims delivered")
    _assert_exactly_once(shared, left)
    second = replica("same")
    second.start(wait=None)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    assert "WATCHER_REPLICA_ID" in second.log_tail()
    assert first.answers("ready"), "the first one keeps running"


def _other_than(value: str | None, old: str) -> str | None:
    return value if value not in (None, old) else None


def test_a_new_leader_takes_over_within_30_s(replica: Replicas, shared: Path) -> None:
    replicas = {name: replica(name).start("ready") for name in ("l1", "l2", "l3")}
    some = replicas["l1"]
    leader = wait_until(lambda: _cluster(some)["leader"], 10, "a leader")
    followers = [w for name, w in replicas.items() if name != leader]
    # A job made through a follower runs on the leader, once per run time.
    followers[0].http.create({"id": "tick", "kind": "sweep", "trigger": {"type": "interval", "seconds": 1}})
    wait_until(lambda: len(followers[1].http.runs("tick")) >= 3, 20, "three runs of a job made on a follower")
    assert {run["replica"] for run in followers[1].http.runs("tick")} == {leader}

    replicas[leader].kill()
    killed = time.monotonic()
    watcher = followers[0]
    new = wait_until(lambda: _other_than(_cluster(watcher)["leader"], leader), 30, "a new leader")
    assert time.monotonic() - killed < 30
    assert sorted(r["id"] for r in _cluster(watcher)["replicas"]) == sorted(w for w in replicas if w != leader)
    wait_until(lambda: watcher.http.runs("tick")[0]["replica"] == new, 15, "the job runs on the new leader")
    runs = sorted(run["started_at"] for run in watcher.http.runs("tick") if run["outcome"] == "success")
    # Interval 1 s: two runs of one run time would start within milliseconds of each other.
    starts = [datetime.fromisoformat(t).timestamp() for t in runs]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) > 0.5, gaps


def test_a_replica_that_loses_its_lock_fails_readiness_and_stops_leading(replica: Replicas, database: str) -> None:
    import psycopg

    from watcher.cluster.membership import lock_key

    a = replica("a").start("ready")
    wait_until(lambda: _cluster(a)["leader"] == "a", 10, "a leads")
    b = replica("b").start("ready")
    with psycopg.connect(database, autocommit=True) as conn:
        # Break a's session, and hold its id so that it cannot take it back yet.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher a'")
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("a"),)).fetchone() == (True,)

        def a_failing() -> bool:
            r = a.http.get("/health/ready")
            return r.status_code == 503 and not r.json()["checks"]["cluster"]["ok"]

        wait_until(a_failing, 20, "a's readiness check cluster failing")
        assert "watcher_cluster_leader 0.0" in a.http.get("/metrics").text
        wait_until(lambda: _cluster(b)["leader"] == "b", 20, "b leads")
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("a"),))
    a.wait_until_up("ready", 20)
    assert [r["id"] for r in _cluster(a)["replicas"]] == ["a", "b"]
    assert _cluster(a)["leader"] == "b"


@pytest.mark.soak
def test_a_paused_replica_whose_lock_is_broken_still_delivers_once(
    replica: Replicas, shared: Path, database: str
) -> None:
    """SIGSTOP of a replica holding claims, its session terminated: another adopts them; then SIGCONT."""
    import signal

    import psycopg

    a, b = replica("a").start("ready"), replica("b").start("ready")
    claims = shared / "inbox" / ".watcher" / "a" / "claims"
    claimed = {f"z/c-{i}.dat": os.urandom(200 + i) for i in range(20)}
    for rel, data in claimed.items():
        (claims / rel).parent.mkdir(parents=True, exist_ok=True)
        (claims / rel).write_bytes(data)
    expected = {**claimed, **_write_files(shared / "inbox", 300)}
    wait_until(lambda: len(_files_under(shared / "outbox")) >= 20, 20, "delivery under way")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher a'")
        wait_until(lambda: not _files_under(claims), 30, "a's claims adopted by b")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _all_delivered(shared, expected), 60, "every file delivered")
    a.wait_until_up("ready", 30)  # it took its id back
    _assert_exactly_once(shared, expected)
    assert [r["id"] for r in _cluster(b)["replicas"]] == ["a", "b"]
