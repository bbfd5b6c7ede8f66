"""A real `python -m watcher run` on loopback for the jobs API tests, and an httpx client for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


wait_for = wait_until  # the shared deadline-polling helper, under the name these tests use


class Watcher:
    """One `watcher run` subprocess with its own directories, and a client for its HTTP API."""

    def __init__(self, root: Path, **settings: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.inbox, self.outbox, self.state = root / "inbox", root / "outbox", root / "state"
        self.failed = self.state / "failed"
        self.log_path = root / "watcher.log"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        self.env.update(
            {
                "WATCHER_INBOX": str(self.inbox),
                "WATCHER_OUTBOX": str(self.outbox),
                "WATCHER_STATE_DIR": str(self.state),
                "WATCHER_HTTP_PORT": str(self.port),
                "WATCHER_SETTLE_SECONDS": "0.2",
                "WATCHER_RESCAN_INTERVAL": "30",
                "WATCHER_LOG_FORMAT": "json",
                "WATCHER_API_TOKEN": TOKEN,
            }
        )
        self.env.update({f"WATCHER_{k.upper()}": v for k, v in settings.items() if v is not None})
        for k, v in settings.items():
            if v is None:
                self.env.pop(f"WATCHER_{k.upper()}", None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> Watcher:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run"], env=self.env, cwd=REPO, stdout=log, stderr=log
            )
        wait_for(self._ready, 30, "GET /health/ready = 200")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"watcher exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return self.http.get("/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.http.close()

    # ---- API helpers -------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/jobs", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/jobs/{job_id}/runs")
        assert r.status_code == 200, r.text
        runs: list[dict[str, Any]] = r.json()["runs"]
        return runs

    def run_now(self, job_id: str, before: int | None = None, timeout: float = 10) -> dict[str, Any]:
        """POST /run, then wait for the new run to be recorded; returns it."""
        count = len(self.runs(job_id)) if before is None else before
        r = self.http.post(f"/jobs/{job_id}/run", headers=AUTH)
        assert r.status_code == 200, r.text

        def newer_runs() -> list[dict[str, Any]] | None:
            runs = self.runs(job_id)
            return runs if len(runs) > count else None

        runs = wait_for(newer_runs, timeout, f"a run of {job_id}")
        assert runs  # wait_for returns only a truthy value
        newest: dict[str, Any] = runs[0]
        return newest


@pytest.fixture
def make_watcher(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    """Start watchers in tmp_path (each in its own folder unless `root` is given); all killed at the end."""
    started: list[Watcher] = []

    def make(root: Path | None = None, **settings: str) -> Watcher:
        w = Watcher(root or tmp_path / f"w{len(started)}", **settings)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.close()


@pytest.fixture(scope="module")
def watcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watcher]:
    """One watcher with a token, shared by a module's tests."""
    w = Watcher(tmp_path_factory.mktemp("watcher"))
    try:
        yield w.start()
    finally:
        w.close()
