"""Shared machinery of the reliability scenarios: workloads, invariants, faults (mounts, sysctls).

Everything here waits on conditions with deadlines; the only sleeps are a writer's deliberate pauses.
Every fault that changes the machine (a mount, a sysctl, an immutable flag, a /dev/shm folder) is
undone in a ``finally`` block.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fs import all_entries, digest_file, regular_files
from tests.support.settings import make_env
from watcher.pipeline.transfer import is_temp_name

KiB = 1024
MiB = 1024 * KiB


# ---- privileges and machine state ------------------------------------------------------------


def require_root(what: str) -> None:
    """Skip (or, under CI=true, fail) a test that needs root to `what`."""
    if os.geteuid() == 0:
        return
    message = f"needs root to {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires every reliability scenario to run")
    pytest.skip(message)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a fresh tmpfs of `size` at `mount_point`; unmount it afterwards whatever happened."""
    require_root("mount a tmpfs")
    mount_point.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point))
    assert done.returncode == 0, f"mount tmpfs failed: {done.stderr}"
    try:
        yield mount_point
    finally:
        umount(mount_point)


def umount(mount_point: Path) -> None:
    """Unmount, lazily if something still holds it."""
    if _run("umount", str(mount_point)).returncode != 0:
        _run("umount", "-l", str(mount_point))


def chattr_works(path: Path) -> bool:
    """True when `chattr +i` works on the filesystem of `path` (ext4 yes, tmpfs no)."""
    if shutil.which("chattr") is None or os.geteuid() != 0:
        return False
    probe = path / ".chattr-probe"
    probe.mkdir()
    try:
        ok = _run("chattr", "+i", str(probe)).returncode == 0
        if ok:
            _run("chattr", "-i", str(probe))
        return ok
    finally:
        probe.rmdir()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Make the folder `path` immutable (chattr +i) for the duration."""
    done = _run("chattr", "+i", str(path))
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        _run("chattr", "-i", str(path))


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[None]:
    """Bind-mount `path` on itself read-only for the duration."""
    require_root("bind-mount read-only")
    assert _run("mount", "--bind", str(path), str(path)).returncode == 0
    try:
        done = _run("mount", "-o", "remount,ro,bind", str(path))
        assert done.returncode == 0, done.stderr
        yield
    finally:
        umount(path)


class Sysctl:
    """One /proc/sys knob changed for a short while; :meth:`restore` is idempotent."""

    def __init__(self, name: str) -> None:
        self.path = Path("/proc/sys") / name.replace(".", "/")
        self.name = name
        self.original = self.path.read_text().strip()
        self._changed = False

    def set(self, value: int) -> None:
        require_root(f"change {self.name}")
        self.path.write_text(f"{value}\n")
        self._changed = True

    def restore(self) -> None:
        if self._changed:
            self.path.write_text(f"{self.original}\n")
            self._changed = False

    def __enter__(self) -> Sysctl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


@contextlib.contextmanager
def shm_dir(tag: str) -> Iterator[Path]:
    """A fresh folder on /dev/shm (another filesystem than tmp_path), removed afterwards."""
    path = Path("/dev/shm") / f"watcher-rel-{tag}-{os.getpid()}-{random.randrange(1 << 30)}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def seed_from_env(name: str = "WATCHER_SOAK_SEED") -> int:
    """The seed to use: WATCHER_SOAK_SEED when set (to replay a run), else a fresh one; printed."""
    raw = os.environ.get(name)
    seed = int(raw) if raw else random.randrange(1 << 32)
    print(f"\n{name}={seed}  (replay: {name}={seed} make soak)")
    return seed


# ---- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What a delivered file must be."""

    size: int
    sha256: str


def file_digest(path: Path) -> Expect:
    return Expect(path.stat().st_size, digest_file(path))


def temp_files(*roots: Path) -> list[str]:
    """Temporary names of ours (``.watcher-*.tmp``) anywhere under the roots."""
    return [name for root in roots if root.exists() for name in all_entries(root) if is_temp_name(name)]


def assert_exactly_once(outbox: Path, expected: dict[str, Expect], seed: int, ignore: set[str] | None = None) -> None:
    """Every expected file in the outbox once, byte-identical, and nothing else (bar `ignore`)."""
    got = {str(p.relative_to(outbox)): p for p in regular_files(outbox)}
    for rel in ignore or set():
        got.pop(rel, None)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (
        f"seed={seed}: missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}"
    )
    wrong = [rel for rel, path in got.items() if file_digest(path) != expected[rel]]
    assert not wrong, f"seed={seed}: {len(wrong)} delivered files differ from what was written: {wrong[:5]}"


def secret_in(roots: list[Path], secret: bytes) -> list[str]:
    """Files under the roots whose bytes contain `secret`."""
    hits: list[str] = []
    for root in roots:
        for path in regular_files(root):
            if secret in path.read_bytes():
                hits.append(str(path))
    return hits


# ---- the chaos workload ----------------------------------------------------------------------


@dataclass
class Workload:
    """N files of random sizes written by several writer threads in three ways: in place
    (open/write/close), renamed in from a sibling staging folder, and slowly with pauses.
    """

    inbox: Path
    staging: Path
    n: int
    seed: int
    writers: int = 4
    max_size: int = 1 * MiB
    big_files: int = 0  # files of `big_size` among the n
    big_size: int = 50 * MiB
    slow_share: float = 0.04
    expected: dict[str, Expect] = field(default_factory=dict)
    bytes_written: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def _size(self, rng: random.Random, i: int) -> int:
        if i < self.big_files:
            return self.big_size
        roll = rng.random()
        if roll < 0.05:
            return 0
        if roll < 0.6:
            return rng.randint(1, 8 * KiB)
        if roll < 0.9:
            return rng.randint(8 * KiB, 128 * KiB)
        return rng.randint(128 * KiB, self.max_size)

    def _write_one(self, rng: random.Random, i: int, writer: int) -> None:
        rel = f"w{writer}/d{i % 6}/f{i:05d}.bin" if i % 5 else f"top-{i:05d}.bin"
        size = self._size(rng, i)
        data = rng.randbytes(size)
        target = self.inbox / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = rng.random()
        if mode < self.slow_share:  # a slow writer: pauses longer than the settle time, file held open
            with target.open("wb") as handle:
                cuts = sorted(rng.sample(range(size + 1), 2)) if size > 2 else [size, size]
                for start, end in ((0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], size)):
                    handle.write(data[start:end])
                    handle.flush()
                    self.stop.wait(rng.uniform(0.05, 0.8))  # a deliberate pause, not a synchronisation
        elif mode < 0.5:  # renamed in whole from a sibling folder
            staged = self.staging / f"s{writer}-{i}"
            staged.write_bytes(data)
            os.rename(staged, target)
        else:  # open, write, close in place
            with target.open("wb") as handle:
                for start in range(0, max(size, 1), 256 * KiB):
                    handle.write(data[start : start + 256 * KiB])
        with self._lock:
            self.expected[rel] = Expect(size, hashlib.sha256(data).hexdigest())
            self.bytes_written += size

    def _run(self, writer: int) -> None:
        rng = random.Random(self.seed * 1000 + writer)
        try:
            for i in range(writer, self.n, self.writers):
                if self.stop.is_set():
                    return
                self._write_one(rng, i, writer)
        except OSError as exc:  # reported by join()
            self.errors.append(exc)

    def start(self) -> Workload:
        self.staging.mkdir(parents=True, exist_ok=True)
        self._threads = [
            threading.Thread(target=self._run, args=(w,), name=f"writer-{w}", daemon=True) for w in range(self.writers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not self.alive(), "writers did not finish"
        assert not self.errors, f"writer failed: {self.errors[0]!r}"


# ---- HTTP ------------------------------------------------------------------------------------


def ready(port: int) -> tuple[int, dict[str, object]]:
    """GET /health/ready: status code and JSON body."""
    response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10)
    return response.status_code, response.json()


def check_detail(body: dict[str, object], name: str) -> str:
    checks = body["checks"]
    assert isinstance(checks, dict)
    return str(checks[name]["detail"])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse the text exposition: (sample name, sorted labels) → value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a `watcher run` subprocess with its folders in tmp_path."""
    return {**make_env(tmp_path, settle_seconds="0.5"), "WATCHER_LOG_LEVEL": "info", **extra}
