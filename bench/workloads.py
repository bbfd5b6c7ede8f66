"""The workloads: what is put into the inbox, when, and what the outbox must hold afterwards.

Each workload has two steps. ``prepare`` runs before the subject starts (the backlog's files, the files
to rename in, the idle tree); ``drive`` runs once the subject is ready and records, per file, the
``time.monotonic()`` right before the writer's ``close()`` (or before the ``rename()`` into the inbox).
Contents are random, so every file has its own sha256. Two workloads are run differently by the harness
(``mode``): ``startup`` starts the subject on an empty inbox several times, ``failover`` kills replicas of
a cluster (``bench.cluster``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import procstat
from bench.subjects import Dirs

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark mode (full or smoke)."""

    reps: int = 3
    # The cluster's throughput workloads swing by a factor of 3 between repetitions on a shared 2-core
    # machine (the writer, the replicas and PostgreSQL share the cores): their medians need more.
    cluster_reps: int = 9
    file_size: int = 4 * KIB
    trickle_files: int = 200
    trickle_rate: float = 20.0
    burst_files: int = 2000
    renamed_files: int = 2000
    backlog_small: int = 20_000
    backlog_large: int = 100_000
    big_size: int = GIB
    idle_dirs: int = 100
    idle_files: int = 10_000
    idle_settle_s: float = 3.0
    idle_seconds: float = 30.0
    ready_timeout_s: float = 60.0
    backlog_age_s: float = 3600.0  # mtime of the backlog's files: an hour old, as after downtime
    startup_starts: int = 5  # starts per repetition of the startup workload
    cluster_files: int = 2000
    failover_files: int = 1000


FULL = Config()
SMOKE = Config(
    reps=1,
    cluster_reps=1,
    trickle_files=20,
    trickle_rate=40.0,
    burst_files=100,
    renamed_files=100,
    backlog_small=200,
    backlog_large=1000,
    big_size=16 * MIB,
    idle_dirs=5,
    idle_files=100,
    idle_settle_s=0.5,
    idle_seconds=1.5,
    startup_starts=2,
    cluster_files=100,
    failover_files=100,
)


@dataclass
class Plan:
    """What a workload expects: outbox contents and the inbox files that must stay."""

    expected: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    sizes: dict[str, int] = field(default_factory=dict)
    inbox_allowed: frozenset[str] = frozenset()
    pending: list[tuple[str, bytes]] = field(default_factory=list)  # contents written by drive()

    def add(self, name: str, data: bytes) -> None:
        """Expect ``name`` with ``data`` in the outbox."""
        self.expected[name] = hashlib.sha256(data).hexdigest()
        self.sizes[name] = len(data)

    @property
    def total_bytes(self) -> int:
        """Bytes that must be delivered."""
        return sum(self.sizes.values())


@dataclass
class Drive:
    """What happened while the workload ran."""

    closed: dict[str, float] = field(default_factory=dict)  # name -> close (or rename) time
    idle_cpu_pct: float | None = None


def write_file(path: Path | str, data: bytes, *, fsync: bool = False) -> float:
    """Create ``path`` (it must not exist) with ``data``; return the monotonic time of its ``close()``.

    The time is taken right before the ``close()`` call: inside it the kernel wakes the subject, which may
    take this CPU at once, so a time taken after it can come after the delivery (negative latency).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    t_close = time.monotonic()
    os.close(fd)
    return t_close


def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:06d}.bin" for i in range(count)]


@dataclass(frozen=True)
class Workload:
    """One workload: a key, a human label, and its two steps."""

    key: str
    label: str
    prepare: Callable[[Dirs, Config], Plan]
    drive: Callable[[Dirs, Config, Plan, int], Drive]  # the int is the subject's session id
    latency: bool = True  # per-file latency is meaningful (writer close known)
    writer_process: bool = True  # drive() runs in its own process: see harness.drive()
    backlog: bool = False  # files exist before the subject starts
    other_fs: bool = False  # the outbox is on /dev/shm
    durable: bool = False  # delivered = in the outbox and the source gone from the inbox (the later)
    cluster: bool = False  # run by the cluster subjects only (and they run nothing else)
    mode: Literal["deliver", "startup", "failover"] = "deliver"


def _prepare(prefix: str, count: Callable[[Config], int], staged: bool = False) -> Callable[[Dirs, Config], Plan]:
    """The workload's files: kept in memory for a drive that writes them, or (`staged`) written complete
    into the staging folder (same filesystem) for a drive that renames them in.
    """

    def prepare(dirs: Dirs, cfg: Config) -> Plan:
        plan = Plan()
        for name in _names(prefix, count(cfg)):
            data = os.urandom(cfg.file_size)
            plan.add(name, data)
            if staged:
                write_file(dirs.staging / name, data)
            else:
                plan.pending.append((name, data))
        return plan

    return prepare


def _drive_trickle(dirs: Dirs, cfg: Config, plan: Plan, _sid: int) -> Drive:
    drive = Drive()
    t0 = time.monotonic()
    for i, (name, data) in enumerate(plan.pending):
        delay = t0 + i / cfg.trickle_rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        drive.closed[name] = write_file(dirs.inbox / name, data)
    return drive


def _drive_burst(dirs: Dirs, _cfg: Config, plan: Plan, _sid: int) -> Drive:
    drive = Drive()
    inbox = str(dirs.inbox)
    for name, data in plan.pending:
        drive.closed[name] = write_file(os.path.join(inbox, name), data)
    return drive


def _drive_renamed(dirs: Dirs, _cfg: Config, plan: Plan, _sid: int) -> Drive:
    drive = Drive()
    staging, inbox = str(dirs.staging), str(dirs.inbox)
    for name in plan.sizes:
        drive.closed[name] = time.monotonic()  # before the call, as in write_file()
        os.rename(os.path.join(staging, name), os.path.join(inbox, name))
    return drive


def _prepare_backlog(count: Callable[[Config], int]) -> Callable[[Dirs, Config], Plan]:
    def prepare(dirs: Dirs, cfg: Config) -> Plan:
        plan = Plan()
        inbox = str(dirs.inbox)
        old = time.time() - cfg.backlog_age_s
        for name in _names("backlog", count(cfg)):
            data = os.urandom(cfg.file_size)
            plan.add(name, data)
            path = os.path.join(inbox, name)
            write_file(path, data)
            os.utime(path, (old, old))
        return plan

    return prepare


def _prepare_nothing(_dirs: Dirs, _cfg: Config) -> Plan:
    return Plan()


def _drive_nothing(_dirs: Dirs, _cfg: Config, _plan: Plan, _sid: int) -> Drive:
    return Drive()


def _big_chunks(block: bytes, size: int) -> Iterator[bytes]:
    """The chunks of the big file: ``block`` with its first 8 bytes replaced by the chunk's index."""
    done = 0
    for index in itertools.count():
        if done >= size:
            return
        chunk = struct.pack("<Q", index) + block[8 : min(len(block), size - done)]
        done += len(chunk)
        yield chunk


def _prepare_big(_dirs: Dirs, cfg: Config) -> Plan:
    block = os.urandom(min(cfg.big_size, 8 * MIB))
    digest = hashlib.sha256()
    for chunk in _big_chunks(block, cfg.big_size):
        digest.update(chunk)
    plan = Plan(pending=[("big.bin", block)])
    plan.expected["big.bin"] = digest.hexdigest()
    plan.sizes["big.bin"] = cfg.big_size
    return plan


def _write_big(dirs: Dirs, cfg: Config, plan: Plan, fsync: bool) -> Drive:
    fd = os.open(dirs.inbox / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for chunk in _big_chunks(plan.pending[0][1], cfg.big_size):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    t_close = time.monotonic()  # before the call, as in write_file()
    os.close(fd)
    return Drive(closed={"big.bin": t_close})


def _drive_big_dirty(dirs: Dirs, cfg: Config, plan: Plan, _sid: int) -> Drive:
    """Write the big file into the inbox and close it without fsync, as a producer does.

    Its pages are still dirty at close: a durable delivery must flush them, and that flush is part of the
    time measured (close -> the delivery is durable; see ``Workload.durable``).
    """
    return _write_big(dirs, cfg, plan, fsync=False)


def _drive_big_flushed(dirs: Dirs, cfg: Config, plan: Plan, _sid: int) -> Drive:
    """Write the big file into the inbox and fsync it before close (the other-filesystem case).

    The writer's own fsync keeps the flush of its dirty pages out of the subject's time: what is measured
    is the copy onto the other filesystem, and the ``cp+sync`` reference's ``sync`` does not flush the
    writer's pages either.
    """
    return _write_big(dirs, cfg, plan, fsync=True)


def _prepare_idle(dirs: Dirs, cfg: Config) -> Plan:
    """An inbox tree of folders holding dot-files, which every subject must leave alone."""
    allowed = []
    per_dir = max(1, cfg.idle_files // cfg.idle_dirs)
    for d in range(cfg.idle_dirs):
        folder = dirs.inbox / f"dir-{d:03d}"
        folder.mkdir()
        for i in range(per_dir):
            write_file(folder / f".idle-{i:05d}", b"x" * 64)
            allowed.append(f"dir-{d:03d}/.idle-{i:05d}")
    return Plan(inbox_allowed=frozenset(allowed))


def _drive_idle(_dirs: Dirs, cfg: Config, _plan: Plan, sid: int) -> Drive:
    time.sleep(cfg.idle_settle_s)
    before = procstat.sample(sid).cpu_s
    t0 = time.monotonic()
    time.sleep(cfg.idle_seconds)
    after = procstat.sample(sid).cpu_s
    return Drive(idle_cpu_pct=100.0 * (after - before) / (time.monotonic() - t0))


WORKLOADS: tuple[Workload, ...] = (
    Workload("trickle", "trickle", _prepare("trickle", lambda c: c.trickle_files), _drive_trickle),
    Workload("burst", "burst", _prepare("burst", lambda c: c.burst_files), _drive_burst),
    Workload("renamed", "renamed", _prepare("renamed", lambda c: c.renamed_files, staged=True), _drive_renamed),
    Workload(
        "backlog_small",
        "backlog",
        _prepare_backlog(lambda c: c.backlog_small),
        _drive_nothing,
        latency=False,
        backlog=True,
        writer_process=False,
    ),
    Workload(
        "backlog_large",
        "backlog",
        _prepare_backlog(lambda c: c.backlog_large),
        _drive_nothing,
        latency=False,
        backlog=True,
        writer_process=False,
    ),
    Workload("big_same_fs", "big, same fs", _prepare_big, _drive_big_dirty, durable=True),
    Workload("big_other_fs", "big, other fs (/dev/shm)", _prepare_big, _drive_big_flushed, other_fs=True),
    Workload("idle", "idle", _prepare_idle, _drive_idle, latency=False, writer_process=False),
    Workload("startup", "startup", _prepare_nothing, _drive_nothing, latency=False, mode="startup"),
    Workload("cluster", "cluster", _prepare("cluster", lambda c: c.cluster_files), _drive_burst, cluster=True),
    # The same files renamed in at once: the replicas, not a writer sharing their cores, set the pace.
    Workload(
        "cluster_renamed",
        "cluster, renamed",
        _prepare("cluster-renamed", lambda c: c.cluster_files, staged=True),
        _drive_renamed,
        cluster=True,
    ),
    Workload(
        "failover",
        "failover",
        _prepare("failover", lambda c: c.failover_files),
        _drive_burst,
        cluster=True,
        mode="failover",
    ),
)
BY_KEY = {w.key: w for w in WORKLOADS}


def repetitions(workload: Workload, cfg: Config) -> int:
    """How many times `workload` runs per subject: ``cluster_reps`` for the cluster's throughput
    workloads, ``reps`` for every other.
    """
    return cfg.cluster_reps if workload.cluster and workload.mode == "deliver" else cfg.reps


def describe(workload: Workload, cfg: Config) -> str:
    """The workload's label with its sizes, e.g. ``burst 2000 x 4 KiB``."""
    kib = cfg.file_size // KIB
    return {
        "trickle": f"trickle {cfg.trickle_files} x {kib} KiB at {cfg.trickle_rate:g}/s",
        "burst": f"burst {cfg.burst_files} x {kib} KiB",
        "renamed": f"renamed {cfg.renamed_files} x {kib} KiB",
        "backlog_small": f"backlog {cfg.backlog_small} x {kib} KiB, an hour old",
        "backlog_large": f"backlog {cfg.backlog_large} x {kib} KiB, an hour old",
        "big_same_fs": f"big {cfg.big_size // MIB} MiB, same fs, close -> durable",
        "big_other_fs": f"big {cfg.big_size // MIB} MiB, other fs (/dev/shm)",
        "idle": f"idle {cfg.idle_dirs} dirs, {cfg.idle_files} ignored files, {cfg.idle_seconds:g} s",
        "startup": f"startup, empty inbox ({cfg.startup_starts} starts per repetition)",
        "cluster": f"cluster burst {cfg.cluster_files} x {kib} KiB, one shared inbox",
        "cluster_renamed": f"cluster renamed {cfg.cluster_files} x {kib} KiB, one shared inbox",
        "failover": f"failover: 3 replicas, burst {cfg.failover_files} x {kib} KiB, SIGKILLs",
    }[workload.key]
