"""A real `watcher run` subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import wait_until


class WatcherProcess:
    """Starts `python -m watcher run` with the given environment and talks to it over HTTP."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self.log_path = log_path
        self.port = int(env.get("WATCHER_HTTP_PORT", "8080"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> WatcherProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run"], env=self.env, cwd=self.cwd, stdout=log, stderr=log
        )
        log.close()
        if wait_ready:
            wait_until(self.ready, 30, "watcher /health/live")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"watcher exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]

    def json_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_lines()]


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds
