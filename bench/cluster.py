"""Cluster subjects (issue 14 item 6): several ``watcher run`` replicas on one inbox and one PostgreSQL.

:func:`start` starts the replicas of a cluster subject on a run's folders, as the cluster tests do: each
with ``WATCHER_CLUSTER=true``, its own ``WATCHER_REPLICA_ID`` (``r1``, ``r2``...), state dir, port and log
file, and all of them on the run's inbox, outbox and failed dir and on a fresh database of the bench's
PostgreSQL server (``bench.postgres``; its URL is the subject's ``WATCHER_JOBSTORE_URL``, set by the
command line). :class:`ClusterRunning` is what the harness needs of a started subject, summed over the
replicas (CPU, peak RSS) or over all of them (ready when every replica is ready).

:func:`failover` measures the two takeovers on a three-replica cluster:

The first replica is started alone and waited for until it is ready, then the others together: replicas
started at the same moment on an empty database race in the service's ``CREATE TABLE`` and one exits 1.

1. **Claims**: ``planted`` files are put in the claims folder of a follower (not the leader), as the
   cluster tests do, so that it always dies holding some; a burst is written into the inbox, and the
   follower is sent SIGKILL the moment the kernel reports its first claim of a burst file (a rename into
   its claims folder, watched with inotify), i.e. in the middle of a transfer. The time
   runs from the SIGKILL to the moment every one of those claims is done by the others: out of the dead
   replica's claims folder and out of the inbox, and in the outbox (looked at every 20 ms).
2. **Leader**: an interval job (``sweep`` every second, made through the jobs API before the burst) runs
   on the leader; the leader is sent SIGKILL. The time runs from the SIGKILL to the ``started_at`` of the
   job's first run on another replica. The time until ``GET /cluster`` names a new leader is kept too,
   and the time until the inbox and every claims folder are empty (what the leader had claimed at its
   death is handed back and delivered too; waited for up to 60 s, after which the integrity check
   reports what is left).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from bench import integrity, procstat
from bench.inotify import IN_CLOEXEC, IN_MOVED_TO, IN_NONBLOCK, OutboxObserver, add_watch, inotify_init
from bench.postgres import create_database
from bench.subjects import Dirs, Running, Subject, SubjectUnavailableError, free_port, http_ok
from bench.workloads import Drive, Plan

TOKEN = "bench-token"  # WATCHER_API_TOKEN of the replicas: the jobs API needs one to create a job
JOB_ID = "bench-tick"
CLAIMS = ".watcher/{replica}/claims"  # below the inbox (watcher/cluster/claims.py)
POLL_S = 0.02
FIRST_READY_S = 60.0
LEADER_DRAIN_S = 60.0  # issue 14: claims of a replica whose lock is free are done within 60 s
LOG_LINE_CHARS = 400  # a crash's JSON log line holds its whole traceback

T = TypeVar("T")


@dataclass
class Replica:
    """One replica of a started cluster."""

    id: str
    running: Running
    url: str
    killed: bool = False

    def get(self, path: str) -> Any:
        """``GET path`` as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=2) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """``POST path`` with a JSON body and the token; the answer as JSON."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def kill(self) -> None:
        """SIGKILL the replica and reap it."""
        self.killed = True
        self.running.proc.send_signal(signal.SIGKILL)
        self.running.proc.wait(10)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.running.proc.poll() is None


def _dividing(url: str) -> bool:
    """True once the replica at `url` divides the files events report among the live replicas (its
    ``watcher_cluster_dividing`` is 1): a cluster that has run for a few heartbeats, as in production,
    not one whose replicas still take every file while they learn of one another.
    """
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
            return b"\nwatcher_cluster_dividing 1.0" in resp.read()
    except (urllib.error.URLError, OSError):
        return False


class ClusterRunning:
    """The replicas of one cluster subject, started together; see the module docstring."""

    kind = "cluster"

    def __init__(self, name: str, replicas: list[Replica], t_start: float) -> None:
        self.name = name
        self.replicas = replicas
        self.t_start = t_start
        self.stop_note: str | None = None

    @property
    def pid(self) -> int:
        """The first replica's pid (a session of its own, like every replica's)."""
        return self.replicas[0].running.pid

    def wait_ready(self, timeout: float) -> float:
        """Block until every replica answers ``/health/ready`` 200; return the time the last one did."""
        deadline = time.monotonic() + timeout
        waiting = list(self.replicas)
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {waiting[0].id} not ready after {timeout:.0f} s: {self.log_tail()}")
            for r in list(waiting):
                if not r.alive:
                    raise RuntimeError(
                        f"{self.name}: {r.id} exited with {r.running.proc.returncode}: {self.log_tail()}"
                    )
                if r.running.is_ready() and (len(self.replicas) == 1 or _dividing(r.url)):
                    waiting.remove(r)
            if waiting:
                time.sleep(0.01)
        return time.monotonic()

    def sample(self) -> procstat.ProcSample:
        """CPU seconds and peak RSS summed over the live replicas."""
        samples = [procstat.sample(r.running.pid) for r in self.replicas if r.alive]
        return procstat.ProcSample(
            cpu_s=sum(s.cpu_s for s in samples),
            peak_rss_kib=sum(s.peak_rss_kib for s in samples),
            pids=sum(s.pids for s in samples),
        )

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM every live replica at once, wait for all; the first non-zero exit code (or 0).

        Replicas killed on purpose (failover) do not count. Past ``timeout`` (default 40 s) the rest are
        killed and ``stop_note`` says so.
        """
        deadline = time.monotonic() + (40.0 if timeout is None else timeout)
        live = [r for r in self.replicas if r.alive]
        for r in live:
            r.running.proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for r in live:
            try:
                codes.append(r.running.proc.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.stop_note = f"{r.id} did not exit after SIGTERM ({procstat.signal_state(r.running.pid)})"
                r.running.stop(timeout=0)
                codes.append(r.running.proc.returncode)
        for r in self.replicas:
            r.running.stop(timeout=0)  # reaps, and kills stragglers of its session
        return next((c for c in codes if c), 0 if codes else None)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of each replica's log, prefixed by its id."""
        per = max(2, lines // max(1, len(self.replicas)))
        return "\n".join(f"[{r.id}] {line}" for r in self.replicas for line in r.running.log_tail(per).splitlines())

    def live(self) -> list[Replica]:
        """The replicas still running."""
        return [r for r in self.replicas if r.alive]


def start(subject: Subject, dirs: Dirs) -> ClusterRunning:
    """Start ``subject.replicas`` replicas on ``dirs`` and a fresh database; they are not ready yet."""
    server = subject.env.get("WATCHER_JOBSTORE_URL")
    if not server:
        raise SubjectUnavailableError(f"{subject.name}: no PostgreSQL server (WATCHER_JOBSTORE_URL)")
    database = create_database(server)
    failed = dirs.root / "failed"
    failed.mkdir(exist_ok=True)
    replicas: list[Replica] = []
    t_start: float | None = None
    for i in range(subject.replicas):
        rid = f"r{i + 1}"
        port = free_port()
        state = dirs.state / rid
        state.mkdir(parents=True, exist_ok=True)
        env = subject.watcher_env(dirs, port, state)
        env.update(
            WATCHER_CLUSTER="true",
            WATCHER_REPLICA_ID=rid,
            WATCHER_JOBSTORE_URL=database,
            WATCHER_FAILED_DIR=str(failed),
            WATCHER_API_TOKEN=TOKEN,
        )
        log = dirs.root / f"{rid}.log"
        proc, t0 = subject.popen_watcher(env, log)
        t_start = t0 if t_start is None else t_start
        url = f"http://127.0.0.1:{port}"
        running = Running(
            name=f"{subject.name} {rid}",
            kind="watcher",
            proc=proc,
            t_start=t0,
            is_ready=http_ok(url + "/health/ready"),
            log=log,
        )
        replicas.append(Replica(rid, running, url))
        if i == 0 and subject.replicas > 1:
            # The first start on an empty database creates the service's tables; replicas started at the
            # same moment race in that CREATE TABLE (UniqueViolation, exit 1), so the others wait for it.
            first = ClusterRunning(subject.name, replicas, t0)
            try:
                first.wait_ready(FIRST_READY_S)
            except BaseException:
                first.stop()
                raise
    assert t_start is not None
    return ClusterRunning(subject.name, replicas, t_start)


@dataclass
class FailoverTimes:
    """What :func:`failover` measured."""

    claims_at_kill: int = 0  # claims the killed follower held (planted ones included)
    claims_planted: int = 0
    claims_done_s: float | None = None  # SIGKILL of the follower -> its claims done by the others
    new_leader_s: float | None = None  # SIGKILL of the leader -> GET /cluster names another leader
    leader_run_s: float | None = None  # SIGKILL of the leader -> next run of the interval job (started_at)
    drained_s: float | None = None  # SIGKILL of the leader -> inbox and every claims folder empty


def _wait_for(get: Callable[[], T | None], timeout: float, what: str, every: float = POLL_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = get()
        except (urllib.error.URLError, OSError, ValueError):
            value = None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:g} s")
        time.sleep(every)


def _leader(replicas: list[Replica], not_this: str | None = None) -> str | None:
    for r in replicas:
        if r.alive:
            leader = r.get("/cluster").get("leader")
            return leader if isinstance(leader, str) and leader != not_this else None
    return None


def _files(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def failover(
    running: ClusterRunning,
    dirs: Dirs,
    plan: Plan,
    write: Callable[[], Drive],
    observer: OutboxObserver,
    planted: int,
    timeout: float,
) -> tuple[FailoverTimes, Drive]:
    """Kill a follower holding claims, then the leader; see the module docstring. ``write`` writes the burst.

    ``plan`` must hold the burst's files; the planted claims are added to it. Returns the times and what
    the writer did.
    """
    times = FailoverTimes()
    replicas = running.replicas
    leader = _wait_for(lambda: _leader(replicas), 30, "leader")
    follower = next(r for r in replicas if r.id != leader)
    survivor = next(r for r in replicas if r.id not in (leader, follower.id))
    survivor.post("/jobs", {"id": JOB_ID, "kind": "sweep", "trigger": {"type": "interval", "seconds": 1}})
    _wait_for(lambda: survivor.get(f"/jobs/{JOB_ID}/runs")["runs"] or None, 30, f"run of {JOB_ID}")

    # 1. a follower killed while it holds claims: at the first claim it takes from the burst (the
    # kernel reports the rename into its claims folder), or when the writer is done
    claims = dirs.inbox / CLAIMS.format(replica=follower.id)
    claims.mkdir(parents=True, exist_ok=True)
    for i in range(planted):
        name = f"planted-{i:04d}.bin"
        data = os.urandom(4096)
        (claims / name).write_bytes(data)
        plan.add(name, data)
    times.claims_planted = planted
    drive: list[Drive] = []
    writer = threading.Thread(target=lambda: drive.append(write()), name="failover-writer", daemon=True)
    deadline = time.monotonic() + timeout
    fd = inotify_init(IN_CLOEXEC | IN_NONBLOCK)
    try:
        add_watch(fd, claims, IN_MOVED_TO)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        writer.start()
        while writer.is_alive() and time.monotonic() < deadline and not poller.poll(50):
            pass
        t_kill = time.monotonic()
        follower.kill()
    finally:
        os.close(fd)
    held = _files(claims)
    times.claims_at_kill = len(held)

    def claims_done() -> bool | None:
        left = set(_files(claims)) | set(_files(dirs.inbox))
        done = not left.intersection(held) and all((dirs.outbox / n).exists() for n in held)
        return True if done else None

    _wait_for(claims_done, timeout, "hand-over of the killed replica's claims")
    times.claims_done_s = time.monotonic() - t_kill
    writer.join(timeout)
    if observer.wait_delivered(plan.sizes, timeout):
        raise TimeoutError("the burst was not delivered after the follower's death")

    # 2. the leader killed
    old = next(r for r in replicas if r.id == leader)
    t_kill_wall, t_kill = time.time(), time.monotonic()
    old.kill()

    def new_leader() -> str | None:
        found = _leader([survivor], not_this=leader)
        if found is not None and times.new_leader_s is None:
            times.new_leader_s = time.monotonic() - t_kill
        return found

    def run_elsewhere() -> float | None:
        new_leader()
        for run in survivor.get(f"/jobs/{JOB_ID}/runs")["runs"]:
            started = datetime.fromisoformat(run["started_at"]).timestamp()
            if run.get("replica") != leader and started > t_kill_wall:
                return started - t_kill_wall
        return None

    times.leader_run_s = _wait_for(run_elsewhere, timeout, f"run of {JOB_ID} on a new leader", every=0.05)

    # what the leader had claimed goes back too: wait (up to the 60 s of the guarantee) for an empty inbox
    def drained() -> bool | None:
        return True if next(integrity.walk_files(dirs.inbox), None) is None else None

    try:
        _wait_for(drained, LEADER_DRAIN_S, "empty inbox and claims after the leader's death", every=0.1)
        times.drained_s = time.monotonic() - t_kill
    except TimeoutError:
        pass  # left for the integrity check to report
    return times, drive[0] if drive else Drive()
