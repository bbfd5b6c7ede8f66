"""One benchmark run: fresh folders, outbox observer, subject, workload, measures, integrity check.

The order of a run: make the folders (under ``bench/.work``, on the same filesystem as the repository;
the other-filesystem outbox under ``/dev/shm``), ``prepare`` the workload, ``sync`` so earlier runs' dirty
pages do not land on this one, start the outbox observer, start the subject and wait until it is ready,
``drive`` the workload, wait for every delivery (observed, not polled), wait until the inbox is empty,
sample ``/proc``, stop the subject, check integrity, remove the folders.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import integrity
from bench.inotify import OutboxObserver
from bench.subjects import REPO, Dirs, Subject
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
    idle_cpu_pct: float | None = None
    exit_code: int | None = None
    faults: int = 0
    integrity: dict[str, object] = field(default_factory=dict)
    missing_at_deadline: int = 0
    queue_overflows: int = 0
    found_by_scan: int = 0
    error: str | None = None
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
    result: RunResult, workload: Workload, plan: Plan, closed: dict[str, float], observer: OutboxObserver
) -> None:
    delivered = {n: t for n in plan.sizes if (t := observer.delivered_at(n)) is not None}
    result.files, result.bytes = len(plan.sizes), plan.total_bytes
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


def run_one(subject: Subject, workload: Workload, cfg: Config, rep: int, keep: bool = False) -> RunResult:
    """Run ``subject`` on ``workload`` once and measure it."""
    result = RunResult(subject=subject.name, workload=workload.key, rep=rep)
    label = subject.kind.replace("+", "")
    dirs = make_dirs(workload, label)
    try:
        plan = workload.prepare(dirs, cfg)
        os.sync()
        if subject.kind == CP_SYNC:
            _run_cp_sync(result, workload, cfg, plan, dirs)
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
    with OutboxObserver(dirs.outbox) as observer:
        running = subject.start(dirs)
        try:
            t_ready = running.wait_ready(cfg.ready_timeout_s)
            result.ready_s = t_ready - running.t_start
            at_ready = running.sample()
            driven = drive(workload, dirs, cfg, plan, running.pid)
            missing = observer.wait_delivered(plan.sizes, _deliver_timeout(plan))
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
        _fill_delivery_measures(result, workload, plan, driven.closed, observer)
        if workload.backlog and plan.sizes:
            delivered = [t for n in plan.sizes if (t := observer.delivered_at(n)) is not None]
            if delivered:
                result.span_s = max(delivered) - running.t_start
                result.files_per_s = len(delivered) / result.span_s
                result.mib_per_s = result.files_per_s * cfg.file_size / MIB
        if result.exit_code not in (0, None) and subject.kind == "watcher":
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
