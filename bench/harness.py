"""One benchmark run: fresh folders, outbox observer, subject, workload, measures, integrity check.

The order of a run: make the folders (under ``bench/.work``, on the same filesystem as the repository;
the other-filesystem outbox under ``/dev/shm``), ``prepare`` the workload, ``sync`` so earlier runs' dirty
pages do not land on this one, start the outbox observer (and, for a durable workload, the inbox
departures observer), start the subject and wait until it is ready, ``drive`` the workload, wait for
every delivery (observed, not polled), wait until the inbox is empty, sample ``/proc``, stop the subject,
check integrity, remove the folders. The startup workload only starts and stops the subject (several
times, each on fresh folders); the failover workload hands the run to ``bench.cluster.failover``.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import cluster, integrity
from bench.inotify import OutboxObserver, SourceDepartures
from bench.subjects import REPO, Dirs, Started, Subject
from bench.workloads import MIB, Config, Drive, Plan, Workload

WORK_ROOT = REPO / "bench" / ".work"
OTHER_FS_ROOT = Path("/dev/shm")
CP_SYNC = "cp+sync"


@dataclass
class RunResult:
    """Measures of one run of one subject on one workload."""

    subject: str
    workload: str
    rep: int
    files: int = 0
    bytes: int = 0
    span_s: float | None = None  # first close -> last delivery; backlog: process start -> last delivery
    files_per_s: float | None = None
    mib_per_s: float | None = None
    lat_p50_ms: float | None = None
    lat_p99_ms: float | None = None
    lat_max_ms: float | None = None
    ready_s: float | None = None  # process start -> ready
    peak_rss_mib: float | None = None
    cpu_s: float | None = None  # CPU of the subject from ready (backlog: from start) to drained
    cpu_total_s: float | None = None  # including start-up
    cpu_per_1k_files_s: float | None = None  # cpu_s per 1000 files delivered
    idle_cpu_pct: float | None = None
    exit_code: int | None = None
    faults: int = 0
    integrity: dict[str, object] = field(default_factory=dict)
    missing_at_deadline: int = 0
    queue_overflows: int = 0
    found_by_scan: int = 0
    error: str | None = None
    ready_each_s: list[float] = field(default_factory=list)  # startup: process start -> ready, every start
    failover_claims_at_kill: int | None = None  # claims the killed follower held (planted included)
    failover_claims_planted: int | None = None
    failover_claims_s: float | None = None  # SIGKILL of a follower -> its claims done by the others
    failover_new_leader_s: float | None = None  # SIGKILL of the leader -> GET /cluster names another
    failover_leader_run_s: float | None = None  # SIGKILL of the leader -> next run of the interval job
    failover_drained_s: float | None = None  # SIGKILL of the leader -> inbox and claims folders empty
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form without the raw latency samples."""
        out = asdict(self)
        out.pop("latencies_ms")
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def make_dirs(workload: Workload, label: str) -> Dirs:
    """Fresh folders for one run; the outbox is on /dev/shm for the other-filesystem workload."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{workload.key}-{label}-", dir=WORK_ROOT))
    if workload.other_fs:
        outbox = Path(tempfile.mkdtemp(prefix="watcher-bench-", dir=OTHER_FS_ROOT)) / "outbox"
    else:
        outbox = root / "outbox"
    dirs = Dirs(
        root=root,
        inbox=root / "inbox",
        outbox=outbox,
        state=root / "state",
        staging=root / "staging",
        log=root / "subject.log",
    )
    for d in (dirs.inbox, dirs.outbox, dirs.state, dirs.staging):
        d.mkdir()
    return dirs


def remove_dirs(dirs: Dirs) -> None:
    """Remove the run's folders, including an outbox on /dev/shm."""
    if dirs.outbox.parent != dirs.root:
        shutil.rmtree(dirs.outbox.parent, ignore_errors=True)
    shutil.rmtree(dirs.root, ignore_errors=True)


def _inbox_has_leftovers(inbox: Path, allowed: frozenset[str]) -> bool:
    return any(rel not in allowed for rel in integrity.walk_files(inbox))


def _wait_inbox_empty(inbox: Path, allowed: frozenset[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _inbox_has_leftovers(inbox, allowed) and time.monotonic() < deadline:
        time.sleep(0.02)


def drive(workload: Workload, dirs: Dirs, cfg: Config, plan: Plan, sid: int) -> Drive:
    """Run the workload's writer, in a process of its own when it writes files.

    In the harness's process the writer would share the GIL with the outbox observer thread: between
    ``close()`` returning and ``time.monotonic()`` the writer can wait for the GIL, which makes close
    times late and latencies short (even negative). A spawned writer process has no such wait, and
    ``CLOCK_MONOTONIC`` is the same clock in every process.
    """
    if not workload.writer_process:
        return workload.drive(dirs, cfg, plan, sid)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_warm_up)
        return pool.apply(workload.drive, (dirs, cfg, plan, sid))


def _warm_up() -> None:
    """Nothing: the first task makes sure the writer process has started and imported its modules."""


def _deliver_timeout(plan: Plan) -> float:
    return 60.0 + len(plan.sizes) / 400 + plan.total_bytes / (20 * MIB)


def _fill_delivery_measures(
    result: RunResult,
    workload: Workload,
    plan: Plan,
    closed: dict[str, float],
    delivered_at: Callable[[str], float | None],
) -> None:
    delivered = {n: t for n in plan.sizes if (t := delivered_at(n)) is not None}
    result.files, result.bytes = len(plan.sizes), plan.total_bytes
    if result.cpu_s is not None and len(delivered) > 1:  # one big file: `CPU s` itself is the figure
        result.cpu_per_1k_files_s = result.cpu_s / len(delivered) * 1000
    if not delivered:
        return
    last = max(delivered.values())
    if workload.latency:
        lat = sorted((delivered[n] - closed[n]) * 1000 for n in delivered if n in closed)
        result.latencies_ms = lat
        if lat:
            result.lat_p50_ms = percentile(lat, 50)
            result.lat_p99_ms = percentile(lat, 99)
            result.lat_max_ms = lat[-1]
        start = min(closed.values()) if closed else None
    else:
        start = None
    if start is not None:
        result.span_s = last - start
    if result.span_s and result.span_s > 0:
        result.files_per_s = len(delivered) / result.span_s
        result.mib_per_s = sum(plan.sizes[n] for n in delivered) / MIB / result.span_s


def start_subject(subject: Subject, dirs: Dirs) -> Started:
    """Start ``subject`` on ``dirs``: one process, or the replicas of a cluster subject."""
    return cluster.start(subject, dirs) if subject.kind == "cluster" else subject.start(dirs)


def run_one(subject: Subject, workload: Workload, cfg: Config, rep: int, keep: bool = False) -> RunResult:
    """Run ``subject`` on ``workload`` once and measure it."""
    result = RunResult(subject=subject.name, workload=workload.key, rep=rep)
    if workload.mode == "startup":
        _run_startup(result, subject, workload, cfg, keep)
        return result
    label = subject.kind.replace("+", "")
    dirs = make_dirs(workload, label)
    try:
        plan = workload.prepare(dirs, cfg)
        os.sync()
        if subject.kind == CP_SYNC:
            _run_cp_sync(result, workload, cfg, plan, dirs)
        elif workload.mode == "failover":
            _run_failover(result, subject, workload, cfg, plan, dirs)
        else:
            _run_subject(result, subject, workload, cfg, plan, dirs)
        report = integrity.check(dirs.inbox, dirs.outbox, plan.expected, plan.inbox_allowed)
        result.integrity = report.as_dict()
        result.faults = report.faults
    except Exception as exc:  # noqa: BLE001  # a run that breaks is reported; the others still run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not keep:
            remove_dirs(dirs)
    return result


def _run_subject(result: RunResult, subject: Subject, workload: Workload, cfg: Config, plan: Plan, dirs: Dirs) -> None:
    with contextlib.ExitStack() as stack:
        observer = stack.enter_context(OutboxObserver(dirs.outbox))
        departures = stack.enter_context(SourceDepartures(dirs.inbox)) if workload.durable else None
        running = start_subject(subject, dirs)
        try:
            t_ready = running.wait_ready(cfg.ready_timeout_s)
            result.ready_s = t_ready - running.t_start
            at_ready = running.sample()
            driven = drive(workload, dirs, cfg, plan, running.pid)
            missing = observer.wait_delivered(plan.sizes, _deliver_timeout(plan))
            if departures is not None:
                missing |= departures.wait_gone(plan.sizes, _deliver_timeout(plan))
            result.missing_at_deadline = len(missing)
            if plan.sizes:
                _wait_inbox_empty(dirs.inbox, plan.inbox_allowed, timeout=10 if not missing else 1)
            at_end = running.sample()
        finally:
            result.exit_code = running.stop()
            if running.stop_note:
                result.error = running.stop_note
        result.peak_rss_mib = at_end.peak_rss_kib / 1024
        result.cpu_total_s = at_end.cpu_s
        result.cpu_s = at_end.cpu_s - (0.0 if workload.backlog else at_ready.cpu_s)
        result.idle_cpu_pct = driven.idle_cpu_pct
        result.queue_overflows = observer.overflows
        result.found_by_scan = observer.found_by_scan
        _fill_delivery_measures(result, workload, plan, driven.closed, _delivered_at(observer, departures))
        if workload.backlog and plan.sizes:
            delivered = [t for n in plan.sizes if (t := observer.delivered_at(n)) is not None]
            if delivered:
                result.span_s = max(delivered) - running.t_start
                result.files_per_s = len(delivered) / result.span_s
                result.mib_per_s = result.files_per_s * cfg.file_size / MIB
        if result.exit_code not in (0, None) and subject.kind in ("watcher", "cluster"):
            result.error = f"exit code {result.exit_code}: {running.log_tail(5)}"


def _delivered_at(observer: OutboxObserver, departures: SourceDepartures | None) -> Callable[[str], float | None]:
    """When a file counts as delivered: in the outbox, and for a durable workload its source gone too."""
    if departures is None:
        return observer.delivered_at

    def durable(name: str) -> float | None:
        there, gone = observer.delivered_at(name), departures.gone.get(name)
        return None if there is None or gone is None else max(there, gone)

    return durable


def _run_startup(result: RunResult, subject: Subject, workload: Workload, cfg: Config, keep: bool) -> None:
    """Start the subject ``cfg.startup_starts`` times on an empty inbox (fresh folders each time).

    ``ready_s`` is the median of process start -> ready over the starts, ``cpu_total_s`` and
    ``peak_rss_mib`` the medians at ready (the CPU and memory a start costs).
    """
    cpu: list[float] = []
    rss: list[float] = []
    for _ in range(cfg.startup_starts):
        dirs = make_dirs(workload, subject.kind)
        try:
            running = start_subject(subject, dirs)
            try:
                t_ready = running.wait_ready(cfg.ready_timeout_s)
                at_ready = running.sample()
            finally:
                code = running.stop()
            result.ready_each_s.append(t_ready - running.t_start)
            cpu.append(at_ready.cpu_s)
            rss.append(at_ready.peak_rss_kib / 1024)
            result.exit_code = code
            broke = code not in (0, None) and subject.kind in ("watcher", "cluster")  # a shell loop ends by signal
            if running.stop_note or broke:
                result.error = running.stop_note or f"exit code {code}: {running.log_tail(5)}"
                break
        except Exception as exc:  # noqa: BLE001  # reported; the other runs still run
            result.error = f"{type(exc).__name__}: {exc}"
            break
        finally:
            if not keep:
                remove_dirs(dirs)
    if result.ready_each_s:
        result.ready_s = statistics.median(result.ready_each_s)
        result.cpu_total_s = statistics.median(cpu)
        result.peak_rss_mib = statistics.median(rss)


def _run_failover(result: RunResult, subject: Subject, workload: Workload, cfg: Config, plan: Plan, dirs: Dirs) -> None:
    """The failover workload on a cluster subject (``bench.cluster.failover``)."""
    burst = Plan(pending=list(plan.pending))  # the writer's own: failover() adds the planted claims to `plan`
    with OutboxObserver(dirs.outbox) as observer:
        running = cluster.start(subject, dirs)
        try:
            t_ready = running.wait_ready(cfg.ready_timeout_s)
            result.ready_s = t_ready - running.t_start
            times, _driven = cluster.failover(
                running,
                dirs,
                plan,
                lambda: drive(workload, dirs, cfg, burst, running.pid),
                observer,
                planted=max(1, cfg.failover_files // 50),
                timeout=_deliver_timeout(plan) + 60,
            )
            result.missing_at_deadline = len(observer.wait_delivered(plan.sizes, 10))
            _wait_inbox_empty(dirs.inbox, plan.inbox_allowed, timeout=10)
        finally:
            result.exit_code = running.stop()
            if running.stop_note:
                result.error = running.stop_note
    result.files, result.bytes = len(plan.sizes), plan.total_bytes
    result.failover_claims_at_kill = times.claims_at_kill
    result.failover_claims_planted = times.claims_planted
    result.failover_claims_s = times.claims_done_s
    result.failover_new_leader_s = times.new_leader_s
    result.failover_leader_run_s = times.leader_run_s
    result.failover_drained_s = times.drained_s
    result.queue_overflows = observer.overflows
    result.found_by_scan = observer.found_by_scan
    if result.exit_code not in (0, None):
        result.error = f"exit code {result.exit_code}: {running.log_tail(5)}"


def _run_cp_sync(result: RunResult, workload: Workload, cfg: Config, plan: Plan, dirs: Dirs) -> None:
    """The reference for the big other-filesystem case: ``cp`` the closed file, then ``sync``."""
    driven = workload.drive(dirs, cfg, plan, os.getpid())
    name, t_close = next(iter(driven.closed.items()))
    t0 = time.monotonic()
    subprocess.run(["cp", "--", str(dirs.inbox / name), str(dirs.outbox / name)], check=True)
    subprocess.run(["sync"], check=True)
    t1 = time.monotonic()
    (dirs.inbox / name).unlink()
    result.files, result.bytes = 1, plan.total_bytes
    result.span_s = t1 - t0
    result.lat_p50_ms = result.lat_p99_ms = result.lat_max_ms = (t1 - t_close) * 1000
    result.latencies_ms = [result.lat_p50_ms]
    result.files_per_s = 1 / result.span_s
    result.mib_per_s = plan.total_bytes / MIB / result.span_s
