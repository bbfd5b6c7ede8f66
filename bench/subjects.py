"""The subjects under test: ``watcher run`` and the baselines, each started as a subprocess.

A :class:`Subject` knows how to start itself on an inbox/outbox pair and how to tell when it is ready;
:class:`Running` is one started instance: readiness wait, ``/proc`` samples, stop. The cluster subjects
(several ``watcher run`` replicas and a PostgreSQL) are started by ``bench.cluster``; what the harness
needs of any started subject is the :class:`Started` protocol.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench import procstat
from bench.postgres import pg_tool

REPO = Path(__file__).resolve().parent.parent
ENSURE_TOOLS = REPO / "deploy" / "tools" / "ensure-debian-tools.sh"

INOTIFYWAIT_LOOP = (
    'inotifywait -m -e close_write,moved_to --format "%f" -- "$BENCH_IN" '
    '| while IFS= read -r f; do mv -f -- "$BENCH_IN/$f" "$BENCH_OUT/$f"; done'
)


class SubjectUnavailableError(RuntimeError):
    """The subject cannot run on this machine (tool missing, service not importable)."""


@dataclass(frozen=True)
class Dirs:
    """The folders of one run."""

    root: Path
    inbox: Path
    outbox: Path
    state: Path
    staging: Path
    log: Path


class Started(Protocol):
    """What the harness needs of a started subject: one process (:class:`Running`) or a cluster."""

    name: str
    kind: str
    t_start: float
    stop_note: str | None

    @property
    def pid(self) -> int:
        """A pid whose session holds the subject (the first replica's, for a cluster)."""
        ...

    def wait_ready(self, timeout: float) -> float:
        """Block until ready; return the monotonic time it was seen ready."""
        ...

    def sample(self) -> procstat.ProcSample:
        """CPU seconds and peak RSS of the subject's processes now."""
        ...

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop it; its exit code."""
        ...

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its output."""
        ...


@dataclass
class Running:
    """One started subject process (the leader of its own session)."""

    name: str
    kind: str
    proc: subprocess.Popen[bytes]
    t_start: float
    is_ready: Callable[[], bool]
    log: Path
    stop_note: str | None = None

    @property
    def pid(self) -> int:
        """Pid of the subject, also its session id."""
        return self.proc.pid

    def wait_ready(self, timeout: float) -> float:
        """Block until the subject is ready; return the monotonic time it was seen ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if self.is_ready():
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    def sample(self) -> procstat.ProcSample:
        """CPU seconds and peak RSS of the subject's processes now."""
        return procstat.sample(self.pid)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the subject (the whole session for shell loops); return its exit code.

        The service gets ``timeout`` (default 40 s, more than its shutdown timeout) to drain; a baseline
        gets 5 s. Past that the session is killed, and the ``stop_note`` says so.
        """
        if timeout is None:
            timeout = 40.0 if self.kind == "watcher" else 5.0
        if self.proc.poll() is None:
            try:
                if self.kind == "watcher":  # the service drains on SIGTERM; signal it alone
                    self.proc.send_signal(signal.SIGTERM)
                else:
                    os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_note = f"did not exit {timeout:g} s after SIGTERM ({procstat.signal_state(self.pid)})"
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        # stragglers of a shell pipeline (inotifywait after its reader died) are in the same session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the subject's combined output."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _popen(
    args: list[str], env: Mapping[str, str], log: Path, cwd: Path = REPO
) -> tuple[subprocess.Popen[bytes], float]:
    with log.open("ab") as out:
        t_start = time.monotonic()
        proc = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, t_start


def _log_contains(log: Path, text: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return text in log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return check


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> Callable[[], bool]:
    """A check that is True while ``GET url`` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


@dataclass(frozen=True)
class Subject:
    """Something that delivers files from an inbox to an outbox."""

    name: str
    kind: str  # "watcher", "limit", "inotifywait", "cluster" or "cp+sync" (run by the harness itself)
    can_backlog: bool
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    root: Path = REPO  # where `python -m watcher` imports the service from (see snapshot_watcher())
    args: tuple[str, ...] = ()  # extra arguments of the limit loop
    workloads: frozenset[str] | None = None  # the workloads it runs; None: every single-process workload
    replicas: int = 0  # cluster subjects: how many `watcher run` replicas

    def available(self) -> str | None:
        """None when the subject can run here, else the reason it cannot."""
        if self.kind == "inotifywait" and not ensure_inotifywait():
            return "missing"
        if self.kind == "cluster":
            if importlib.util.find_spec("psycopg") is None:
                return "not runnable: psycopg missing (pip install -e '.[postgres]')"
            if pg_tool("initdb") is None or pg_tool("pg_ctl") is None:
                return "not runnable: initdb/pg_ctl not found"
        if self.kind in ("watcher", "cluster"):
            probe = subprocess.run(
                [sys.executable, "-m", "watcher", "--version"],
                cwd=self.root,
                env=self._python_env(dict(os.environ)),
                capture_output=True,
                timeout=60,
                check=False,
            )
            if probe.returncode != 0:
                lines = probe.stderr.decode(errors="replace").strip().splitlines()
                return "not runnable: " + (lines[-1] if lines else f"exit {probe.returncode}")
        return None

    def _python_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with the service's root first on the import path (ahead of an editable install)."""
        if self.root != REPO:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH", "")]))
        return env

    def watcher_env(self, dirs: Dirs, port: int, state: Path | None = None) -> dict[str, str]:
        """The environment of one ``watcher run`` on ``dirs``: the bench's settings, then the subject's."""
        env = dict(os.environ)
        env.update(
            WATCHER_INBOX=str(dirs.inbox),
            WATCHER_OUTBOX=str(dirs.outbox),
            WATCHER_STATE_DIR=str(state or dirs.state),
            WATCHER_HTTP_HOST="127.0.0.1",
            WATCHER_HTTP_PORT=str(port),
            WATCHER_LOG_FORMAT="json",
            WATCHER_LOG_LEVEL="info",  # the service's default
            WATCHER_RESCAN_INTERVAL="30",
            WATCHER_SETTLE_SECONDS="2",
        )
        env.update(self.env)
        return self._python_env(env)

    def popen_watcher(self, env: Mapping[str, str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
        """Start ``python -m watcher run`` with ``env`` from the subject's root; (process, start time)."""
        return _popen([sys.executable, "-m", "watcher", "run"], env, log, self.root)

    def start(self, dirs: Dirs) -> Running:
        """Start the subject on ``dirs``; it is not necessarily ready yet."""
        env = dict(os.environ)
        if self.kind == "watcher":
            port = free_port()
            proc, t0 = self.popen_watcher(self.watcher_env(dirs, port), dirs.log)
            ready = http_ok(f"http://127.0.0.1:{port}/health/ready")
        elif self.kind == "limit":
            env["PYTHONPATH"] = str(REPO)
            args = [sys.executable, "-m", "bench.limit_loop", *self.args, str(dirs.inbox), str(dirs.outbox)]
            proc, t0 = _popen(args, env, dirs.log)
            ready = _log_contains(dirs.log, "ready")
        elif self.kind == "inotifywait":
            env.update(BENCH_IN=str(dirs.inbox), BENCH_OUT=str(dirs.outbox))
            proc, t0 = _popen(["bash", "-c", INOTIFYWAIT_LOOP], env, dirs.log)
            ready = _log_contains(dirs.log, "Watches established")
        else:
            raise ValueError(f"unknown subject kind {self.kind!r}")
        return Running(name=self.name, kind=self.kind, proc=proc, t_start=t0, is_ready=ready, log=dirs.log)


def ensure_inotifywait() -> bool:
    """Install inotify-tools with the repository's script if needed; True if inotifywait is there."""
    if shutil.which("inotifywait"):
        return True
    if ENSURE_TOOLS.exists():
        env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI=true would turn a miss into a failure
        subprocess.run(["bash", str(ENSURE_TOOLS)], env=env, check=False, timeout=600)
    return shutil.which("inotifywait") is not None


WATCHER = Subject(
    "watcher", "watcher", can_backlog=True, description="`python -m watcher run` (fsync on, log level info: defaults)"
)
WATCHER_WARNING = Subject(
    "watcher (log warning)",
    "watcher",
    can_backlog=True,
    env={"WATCHER_LOG_LEVEL": "warning"},
    workloads=frozenset({"trickle", "burst"}),
    description="the same with WATCHER_LOG_LEVEL=warning (no log line per file)",
)
LIMIT = Subject(
    "limit",
    "limit",
    can_backlog=True,
    description="ctypes inotify loop (and a scandir of the inbox at start), rename/copyfile, no fsync",
)
LIMIT_DURABLE = Subject(
    "limit-durable",
    "limit",
    can_backlog=False,
    args=("--durable",),
    workloads=frozenset({"trickle", "burst", "renamed", "big_same_fs", "big_other_fs"}),
    description="the limit loop plus fsync of the delivered file and of the outbox folder before the source goes",
)
WATCHER_NO_RECORD = Subject(
    "watcher (no record)",
    "watcher",
    can_backlog=False,
    env={"PYTHONPATH": str(Path(__file__).resolve().parent / "norecord")},
    workloads=frozenset({"burst", "renamed"}),
    description="the same build with the delivery record's writes switched off (bench/norecord/sitecustomize.py)",
)
INOTIFYWAIT = Subject(
    "inotifywait", "inotifywait", can_backlog=False, description="`inotifywait -m | while read; do mv` loop"
)
CP_SYNC = Subject(
    "cp+sync",
    "cp+sync",
    can_backlog=False,
    workloads=frozenset({"big_other_fs"}),
    description="`cp FILE OUTBOX && sync` (big, other fs only)",
)
# Another commit of the service in the same run (`--base-commit REV`); cli.py gives it its name and root.
WATCHER_BASE = Subject(
    "watcher-base", "watcher", can_backlog=True, description="`python -m watcher run` at --base-commit"
)


def _cluster(replicas: int, workloads: frozenset[str]) -> Subject:
    return Subject(
        f"cluster x{replicas}",
        "cluster",
        can_backlog=True,
        replicas=replicas,
        workloads=workloads,
        description=f"{replicas} `watcher run` replica(s), WATCHER_CLUSTER=true, one inbox, PostgreSQL on this machine",
    )


CLUSTER_1 = _cluster(1, frozenset({"cluster", "cluster_renamed"}))
CLUSTER_2 = _cluster(2, frozenset({"cluster", "cluster_renamed"}))
CLUSTER_3 = _cluster(3, frozenset({"cluster", "cluster_renamed", "failover"}))
ALL = (
    WATCHER,
    LIMIT,
    LIMIT_DURABLE,
    INOTIFYWAIT,
    WATCHER_WARNING,
    CP_SYNC,
    WATCHER_BASE,
    CLUSTER_1,
    CLUSTER_2,
    CLUSTER_3,
)


def snapshot_watcher(dest: Path) -> Path:
    """Copy the ``watcher`` package into ``dest`` and return ``dest``, to run the service from there.

    The benchmark then measures one version of the service from the first run to the last, even when
    the working tree changes while it runs.
    """
    shutil.copytree(REPO / "watcher", dest / "watcher", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def resolve_commit(rev: str) -> tuple[str, str]:
    """The full hash and subject line of ``rev`` in the repository; ValueError if it is not a commit."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%H%n%s", f"{rev}^{{commit}}", "--"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise ValueError(f"not a commit: {rev!r}: {done.stderr.strip()}")
    return lines[0], lines[1] if len(lines) > 1 else ""


def snapshot_commit(commit: str, dest: Path) -> Path:
    """Extract the ``watcher`` package as it is at ``commit`` (``git archive``) into ``dest``; return ``dest``.

    Like :func:`snapshot_watcher` for the working tree: the service is run from there with ``dest`` first
    on ``PYTHONPATH``, with the dependencies installed in this venv.
    """
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "watcher"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest
