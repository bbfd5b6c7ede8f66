"""Cluster mode with real replicas: `python -m watcher run` processes on one shared inbox, outbox and
failed dir, and one throwaway PostgreSQL (a fresh database per test).

Quick forms (each well under a minute): exactly once across three replicas, a replica killed and
never restarted, the same id twice, the leader killed in the middle of a job, a replica paused while
it holds claims and its lock broken. Random SIGKILLs with restarts: test_chaos.py; two nodes with
their own caches (bindfs): test_two_nodes.py.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Replicas
from tests.cluster.support import cluster_view, faults, files_under
from tests.support.fuse import bindfs_view
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


def _all_delivered(shared: Path, expected: dict[str, bytes]) -> bool:
    outbox = files_under(shared / "outbox")
    inbox = files_under(shared / "inbox")  # claims too: they live under <inbox>/.watcher/
    return len(outbox) >= len(expected) and not inbox


def _assert_exactly_once(shared: Path, expected: dict[str, bytes]) -> None:
    outbox = files_under(shared / "outbox")
    assert sorted(outbox) == sorted(expected), "every file once, under its own name, and nothing else"
    for rel, data in expected.items():
        assert outbox[rel].read_bytes() == data, rel
    assert not files_under(shared / "inbox"), "nothing left in the inbox or in any claims folder"
    assert not [p for p in outbox if "/.watcher-" in f"/{p}"], "no temporary file left"
    assert not files_under(shared / "failed")


def _plant_claims(shared: Path, replica: str, folder: str, size: int) -> dict[str, bytes]:
    """20 files in `replica`'s claims folder, as if it had claimed them and died: {rel: bytes}."""
    claims = shared / "inbox" / ".watcher" / replica / "claims"
    claimed = {f"{folder}/c-{i}.dat": os.urandom(size + i) for i in range(20)}
    for rel, data in claimed.items():
        (claims / rel).parent.mkdir(parents=True, exist_ok=True)
        (claims / rel).write_bytes(data)
    return claimed


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

    view = cluster_view(replicas[1])
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
    wait_until(lambda: _other_than(cluster_view(rest[0])["leader"], leaders[0]), 6, "a new leader after SIGTERM")
    for w in rest:
        assert w.terminate() == 0


def test_a_killed_replica_s_claims_are_finished_by_another(replica: Replicas, shared: Path) -> None:
    a, b = replica("a").start("ready"), replica("b").start("ready")
    # What "a" had claimed when it died: files in its claims folder (it only looks there at start).
    claimed = _plant_claims(shared, "a", "sub", 100)
    answer = b.http.get("/files/sub/c-0.dat", headers=b.http.auth_header).json()
    assert (answer["state"], answer["records"]) == ("transferring", []), answer
    assert "claimed by replica a" in answer["detail"]
    expected = {**claimed, **_write_files(shared / "inbox", 300)}
    wait_until(lambda: len(files_under(shared / "outbox")) >= 20, 20, "delivery under way")
    a.kill()  # in the middle of the burst: whatever it had claimed is left in its claims folder
    killed = time.monotonic()
    wait_until(lambda: _all_delivered(shared, expected), 60, "the dead replica's claims done by another")
    assert time.monotonic() - killed < 60
    _assert_exactly_once(shared, expected)
    assert [r["id"] for r in cluster_view(b)["replicas"]] == ["b"]
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


def _fence_and_runs(database: str, job_id: str) -> tuple[list[tuple[float, float, str]], list[tuple[float, str]]]:
    """The job's fence rows (claimed at, run time, replica that claimed it) and runs (start, replica),
    each by time, from the shared database itself.
    """
    import psycopg

    with psycopg.connect(database) as conn:
        fence = conn.execute("SELECT claimed_at, run_time, replica FROM watcher_job_fence WHERE job_id = %s", (job_id,))
        claimed = sorted((float(c), float(t), str(r)) for c, t, r in fence.fetchall())
        runs = conn.execute("SELECT started_at, replica FROM watcher_job_runs WHERE job_id = %s", (job_id,))
        return claimed, sorted((float(t), str(r)) for t, r in runs.fetchall())


def test_a_leader_killed_during_a_job_is_replaced_within_30_s_and_no_run_time_runs_twice(
    replica: Replicas, shared: Path, database: str, tmp_path: Path
) -> None:
    # A folder in the failed dir is a FUSE view whose daemon the test can stop: the `sweep` job walks
    # the failed dir, so a run that reaches it waits there, in flight, until the daemon goes on.
    (tmp_path / "empty").mkdir()
    with bindfs_view(tmp_path / "empty", shared / "failed" / "stuck") as stuck:
        replicas = {name: replica(name) for name in ("l1", "l2", "l3")}
        for w in replicas.values():
            w.start(wait=None)
        for w in replicas.values():
            w.wait_until_up("ready")
        some = replicas["l1"]
        leader = wait_until(lambda: cluster_view(some)["leader"], 10, "a leader")
        followers = [w for name, w in replicas.items() if name != leader]
        # A job made through a follower runs on the leader, once per run time.
        followers[0].http.create({"id": "tick", "kind": "sweep", "trigger": {"type": "interval", "seconds": 1}})
        wait_until(lambda: len(followers[1].http.runs("tick")) >= 3, 20, "three runs of a job made on a follower")
        assert {run["replica"] for run in followers[1].http.runs("tick")} == {leader}

        stuck.stop()
        stopped = time.time()

        def in_flight() -> float | None:
            claimed, runs = _fence_and_runs(database, "tick")
            late = [c for c, t, r in claimed if t > stopped and r == leader]
            return late[0] if late and not [s for s, _ in runs if s >= late[0]] else None

        running = wait_until(in_flight, 10, "a run of the job in flight on the leader")
        replicas[leader].kill()
        killed = time.monotonic()
        stuck.resume()
        watcher = followers[0]
        new = wait_until(lambda: _other_than(cluster_view(watcher)["leader"], leader), 30, "a new leader")
        assert time.monotonic() - killed < 30
        live = sorted(r["id"] for r in cluster_view(watcher)["replicas"])
        assert live == sorted(w for w in replicas if w != leader)
        wait_until(lambda: watcher.http.runs("tick")[0]["replica"] == new, 15, "the job runs on the new leader")

    # A run starts right after its replica claims its run time (the fence row): so each run belongs
    # to the row claimed last before it started. That row is its own replica's, no row has two runs,
    # and the run time in flight at the kill ran nowhere.
    claimed, runs = _fence_and_runs(database, "tick")
    owners = [max((row for row in claimed if row[0] <= start), default=None) for start, _ in runs]
    assert None not in owners and len(set(owners)) == len(owners), (claimed, runs)
    assert all(row is not None and row[2] == who for row, (_, who) in zip(owners, runs, strict=True))
    assert running not in {row[0] for row in owners if row is not None}
    assert len(runs) >= 4 and {who for _, who in runs} == {leader, new}


def test_a_replica_that_loses_its_lock_fails_readiness_and_stops_leading(replica: Replicas, database: str) -> None:
    import psycopg

    from watcher.schema import lock_key

    a = replica("a").start("ready")
    wait_until(lambda: cluster_view(a)["leader"] == "a", 10, "a leads")
    b = replica("b").start("ready")
    with psycopg.connect(database, autocommit=True) as conn:
        # Break a's session, and hold its id so that it cannot take it back yet.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher a'")
        # The backend ends a moment after it is told to (and b may be trying a's id for a moment).
        take = "SELECT pg_try_advisory_lock(%s)"
        wait_until(lambda: conn.execute(take, (lock_key("a"),)).fetchone() == (True,), 10, "a's id lock free")

        def a_failing() -> bool:
            r = a.http.get("/health/ready")
            return r.status_code == 503 and not r.json()["checks"]["cluster"]["ok"]

        wait_until(a_failing, 20, "a's readiness check cluster failing")
        assert "watcher_cluster_leader 0.0" in a.http.get("/metrics").text
        wait_until(lambda: cluster_view(b)["leader"] == "b", 20, "b leads")
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("a"),))
    a.wait_until_up("ready", 20)
    assert [r["id"] for r in cluster_view(a)["replicas"]] == ["a", "b"]
    assert cluster_view(a)["leader"] == "b"


def test_a_replica_paused_while_it_holds_claims_whose_lock_is_broken_still_delivers_once(
    replica: Replicas, shared: Path, database: str
) -> None:
    """Quick form: SIGSTOP of a replica in the middle of its transfers (files in its claims folder),
    its session terminated; a replica started then finds its id lock free at its first heartbeat and
    hands those claims back to the inbox; then SIGCONT, and the paused one's transfers go on.
    """
    import signal

    import psycopg

    a = replica("a").start("ready")
    assert a.proc is not None
    inbox, claims = shared / "inbox", shared / "inbox" / ".watcher" / "a" / "claims"
    expected: dict[str, bytes] = {}
    held: dict[str, Path] = {}
    for burst in range(5):
        expected |= _write_files(inbox, 400, prefix=f"p{burst}")
        wait_until(lambda: files_under(claims), 10, "a holding claims", interval=0.001)
        a.proc.send_signal(signal.SIGSTOP)
        held = files_under(claims)
        if held:
            break
        a.proc.send_signal(signal.SIGCONT)  # its transfers ended in between: again, with more files
    assert held, "a was never paused while it held claims"
    try:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher a'")
        b = replica("b").start("ready")
        wait_until(lambda: not files_under(claims), 15, "a's claims handed back by b")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _all_delivered(shared, expected), 30, "every file delivered")
    back = wait_until(
        lambda: [r["id"] for r in cluster_view(b)["replicas"]] == ["a", "b"], 15, "a holding its id again"
    )
    assert back and a.answers("ready")
    assert a.terminate() == 0 and b.terminate() == 0
    # A file whose commit b finished while a was paused can have a second row (docs/cluster.md, known
    # limits); every row's bytes are in the outbox all the same.
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in expected.items()}
    broken = faults(shared, digests, database, one_row_each=False)
    assert not broken, f"{len(broken)} faults (held {len(held)} claims when paused), e.g. {broken[:10]}"


@pytest.mark.soak
def test_a_paused_replica_whose_lock_is_broken_still_delivers_once(
    replica: Replicas, shared: Path, database: str
) -> None:
    """SIGSTOP of a replica holding claims, its session terminated: another adopts them; then SIGCONT."""
    import signal

    import psycopg

    a, b = replica("a").start("ready"), replica("b").start("ready")
    claimed = _plant_claims(shared, "a", "z", 200)
    claims = shared / "inbox" / ".watcher" / "a" / "claims"
    expected = {**claimed, **_write_files(shared / "inbox", 300)}
    wait_until(lambda: len(files_under(shared / "outbox")) >= 20, 20, "delivery under way")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher a'")
        wait_until(lambda: not files_under(claims), 30, "a's claims adopted by b")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _all_delivered(shared, expected), 60, "every file delivered")
    a.wait_until_up("ready", 30)  # it took its id back
    _assert_exactly_once(shared, expected)
    assert [r["id"] for r in cluster_view(b)["replicas"]] == ["a", "b"]
