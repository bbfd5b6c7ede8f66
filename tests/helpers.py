"""Shared test helpers: settings in tmp_path, waiting on conditions with deadlines, a running service."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from watcher.config import Settings, load_settings
from watcher.metrics import create_metrics
from watcher.service import Service

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WATCHER_INBOX": str(tmp_path / "inbox"),
        "WATCHER_OUTBOX": str(tmp_path / "outbox"),
        "WATCHER_STATE_DIR": str(tmp_path / "state"),
        "WATCHER_HTTP_PORT": str(free_port()),
        "WATCHER_SETTLE_SECONDS": "0.3",
        "WATCHER_RESCAN_INTERVAL": "30",
        "WATCHER_LOG_FORMAT": "json",
    }
    env.update({f"WATCHER_{k.upper()}": v for k, v in overrides.items()})
    return env


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    return load_settings(environ=make_env(tmp_path, **overrides))


def wait_until(cond: Callable[[], T], timeout: float = 15.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll `cond` until it returns something truthy (returned), or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def await_until(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """Run a real Service (real observer, real transfers, real uvicorn) in this event loop."""
    service = Service(settings, create_metrics())
    task = asyncio.create_task(service.run(handle_signals=False))
    started = asyncio.create_task(service.started.wait())
    await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise the start-up error
    assert service.started.is_set(), "service did not start"
    try:
        yield service
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 60) == 0


def tree(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every regular file under root."""
    out: dict[str, bytes] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                out[str(full.relative_to(root))] = full.read_bytes()
    return out


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metric_value(service: Service, name: str, labels: Mapping[str, str] | None = None) -> float:
    value = service.metrics.registry.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value
