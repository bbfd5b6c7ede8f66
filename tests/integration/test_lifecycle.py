"""The composition root as an exit stack with one deadline.

Start-up: a failure injected at each step leaves no listener, no thread, no signal handler and no open
database file behind, and the CLI maps it to the right exit code. Shutdown: whatever phase hangs (a
copy wedged in a syscall, a scheduler or store that does not answer, an observer that does not join,
HTTP that does not close, a gate probe stuck on a dead mount), the whole stop ends within
WATCHER_SHUTDOWN_TIMEOUT + STOP_MARGIN.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import run_cli
from tests.support.settings import make_env, make_settings
from tests.support.wait import wait_until
from watcher import service as service_module
from watcher.http.server import HttpServer
from watcher.jobs import JobService
from watcher.metrics import create_metrics
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.pipeline.supervisor import ObserverSupervisor
from watcher.service import Service


class Injected(RuntimeError):
    """The failure a test puts into one start-up step."""


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def open_files_under(root: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def raiser(*_: Any, **__: Any) -> Any:
    raise Injected("injected start-up failure")


async def async_raiser(*_: Any, **__: Any) -> Any:
    raise Injected("injected start-up failure")


# (where, attribute, replacement): each start-up step, in the order run() takes them.
STEPS: list[tuple[object, str, Callable[..., Any]]] = [
    (service_module, "prepare_directories", raiser),
    (JobService, "open", async_raiser),
    (service_module, "bind_socket", raiser),
    (Service, "_wire_gauges", raiser),
    (service_module, "sweep_stale_temp_files", raiser),
    (service_module, "create_app", raiser),
    (HttpServer, "start", raiser),
    (OutboxGate, "start", raiser),
    (ObserverSupervisor, "start", async_raiser),
    (JobService, "start", async_raiser),
]


@pytest.mark.parametrize(("where", "name", "replacement"), STEPS, ids=[name for _, name, _ in STEPS])
def test_a_failure_at_each_start_up_step_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: object, name: str, replacement: Callable[..., Any]
) -> None:
    settings = make_settings(tmp_path)
    threads_before = set(threading.enumerate())
    handlers_before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(where, name, replacement)
    with pytest.raises(Injected):
        asyncio.run(Service(settings, create_metrics()).run(handle_signals=True))
    assert {sig: signal.getsignal(sig) for sig in handlers_before} == handlers_before
    assert port_free(settings.http_port), "the listener was left open"
    wait_until(lambda: set(threading.enumerate()) <= threads_before, 10, "threads started by run() to end")
    assert not open_files_under(tmp_path), "a file (the job store?) was left open"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"WATCHER_JOBSTORE_URL": "postgresql://watcher@127.0.0.1:1/none"}, 1),  # store unreachable: fatal
        ({"WATCHER_HTTP_PORT": "taken"}, 2),  # port in use: configuration
    ],
)
def test_start_up_failures_exit_with_the_right_code(tmp_path: Path, extra: dict[str, str], code: int) -> None:
    env = make_env(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if extra.get("WATCHER_HTTP_PORT") == "taken":
            extra = {"WATCHER_HTTP_PORT": str(busy.getsockname()[1])}
        result = run_cli(["run"], {**env, **extra}, tmp_path)
    assert result.returncode == code, result.stderr


# ---- one shutdown deadline ----------------------------------------------------------------------

SHUTDOWN_TIMEOUT = 1.0
MARGIN = 1.5  # stands in for STOP_MARGIN and PHASE_CAP here
TOLERANCE = 1.5  # loop scheduling and thread hand-offs on a loaded 2-core machine


async def hang_async(*_: Any, **__: Any) -> None:
    await asyncio.Event().wait()


def wedge_copy(release: threading.Event) -> Callable[..., Any]:
    def wedged(*_: Any, **__: Any) -> Any:
        release.wait()  # a copy stuck in the kernel: it ignores the abort flag
        raise OSError(5, "released by the test")

    return wedged


@pytest.mark.parametrize("phase", ["copy", "scheduler", "observer", "gate", "http", "walks"])
def test_the_whole_stop_fits_one_deadline_whatever_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    settings = make_settings(tmp_path, shutdown_timeout=str(SHUTDOWN_TIMEOUT))
    # A smaller margin and phase cap keep each case short; the mechanism under test is the same.
    monkeypatch.setattr("watcher.service.STOP_MARGIN", MARGIN)
    monkeypatch.setattr("watcher.service.PHASE_CAP", MARGIN)
    release = threading.Event()
    if phase == "copy":
        monkeypatch.setattr("watcher.pipeline.workers.deliver_batch", wedge_copy(release))
    elif phase == "scheduler":
        monkeypatch.setattr(JobService, "stop", hang_async)
    elif phase == "observer":
        monkeypatch.setattr(ObserverSupervisor, "stop", hang_async)
    elif phase == "gate":
        monkeypatch.setattr(OutboxGate, "stop", hang_async)
    elif phase == "http":
        monkeypatch.setattr(HttpServer, "stop", hang_async)
    elif phase == "walks":
        monkeypatch.setattr("watcher.pipeline.intake.Intake.cancel_walks", hang_async)

    async def main() -> float:
        service = Service(settings, create_metrics())
        task = asyncio.create_task(service.run(handle_signals=False))
        await asyncio.wait({task, asyncio.create_task(service.started.wait())}, return_when="FIRST_COMPLETED")
        assert service.started.is_set(), task.result()
        if phase == "copy":
            (settings.inbox / "stuck.bin").write_bytes(b"x" * 1024)
            await asyncio.to_thread(wait_until, lambda: service.metrics.inflight_transfers._value.get() > 0, 10)
        began = time.monotonic()
        service.request_stop()
        assert await task == 0
        return time.monotonic() - began

    try:
        took = asyncio.run(main())
    finally:
        release.set()
    assert took <= SHUTDOWN_TIMEOUT + MARGIN + TOLERANCE, f"the stop took {took:.2f} s"
    if phase == "copy":
        assert (settings.inbox / "stuck.bin").exists(), "an interrupted transfer leaves its source"


def test_check_config_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys; from watcher.cli import main; rc = main(['check-config']); "
        "heavy = [m for m in ('uvicorn', 'apscheduler', 'sqlalchemy', 'watchdog', 'starlette') if m in sys.modules]; "
        "print(heavy)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env.update(WATCHER_INBOX=str(tmp_path / "in"), WATCHER_OUTBOX=str(tmp_path / "out"))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
