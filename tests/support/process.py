"""One real `python -m watcher run` subprocess, and a client for its HTTP API.

The child's environment is built from scratch: the WATCHER_* settings the test gives, plus the few
variables any process needs (PATH, HOME, locale, TMPDIR). A WATCHER_* variable of the shell that
runs pytest never reaches the service under test. Each process gets its own folders under the
folder the test gives it and a free port, unless the test says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from tests.support import REPO
from tests.support.net import free_port
from tests.support.wait import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# What a child inherits from the test runner: enough to find programs and run Python, nothing else.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH")

Probe = Literal["live", "ready"]


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child process: PASS_THROUGH from ours, then `env`."""
    return {**{k: os.environ[k] for k in PASS_THROUGH if k in os.environ}, **env}


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m watcher ARGS` to completion, with `env` (see `child_env`), text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        env=child_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ApiClient(httpx.Client):
    """An httpx client for one service, with the jobs calls the tests make; `auth` is the header
    that carries the service's token (empty when it has none). The token is sent only where a test
    passes `headers=client.auth`, or by the jobs helpers.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10) -> None:
        super().__init__(base_url=base_url, timeout=timeout)
        self.auth_header = {"Authorization": f"Bearer {token}"} if token else {}

    def answers(self, probe: Probe) -> bool:
        """True when GET /health/<probe> answers 200 (False while nothing listens)."""
        try:
            return self.get(f"/health/{probe}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /jobs; the created job."""
        r = self.post("/jobs", json=body, headers=self.auth_header)
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        """GET /jobs/<id>/runs, newest first."""
        r = self.get(f"/jobs/{job_id}/runs")
        assert r.status_code == 200, r.text
        runs: list[dict[str, Any]] = r.json()["runs"]
        return runs

    def run_now(self, job_id: str, before: int | None = None, timeout: float = 10) -> dict[str, Any]:
        """POST /jobs/<id>/run, then wait for the new run to be recorded; returns it."""
        count = len(self.runs(job_id)) if before is None else before
        r = self.post(f"/jobs/{job_id}/run", headers=self.auth_header)
        assert r.status_code == 200, r.text

        def newer_runs() -> list[dict[str, Any]] | None:
            runs = self.runs(job_id)
            return runs if len(runs) > count else None

        runs = wait_until(newer_runs, timeout, f"a run of {job_id}")
        assert runs  # wait_until returns only a truthy value
        newest: dict[str, Any] = runs[0]
        return newest


class WatcherProcess:
    """`python -m watcher run` with its own folders under `root`, a free port and a log file.

    `env` holds WATCHER_* settings; they win over the defaults made here (WATCHER_INBOX,
    WATCHER_OUTBOX and WATCHER_STATE_DIR under `root`, WATCHER_HTTP_PORT free), and a None value
    removes a default. Relative folders are relative to `cwd` (default `root`).
    """

    def __init__(
        self,
        root: Path,
        env: Mapping[str, str | None] | None = None,
        *,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.cwd = cwd or root
        self.log_path = log_path or root / "watcher.log"
        settings: dict[str, str | None] = {
            "WATCHER_INBOX": str(root / "inbox"),
            "WATCHER_OUTBOX": str(root / "outbox"),
            "WATCHER_STATE_DIR": str(root / "state"),
            "WATCHER_HTTP_PORT": str(free_port()),
            **(env or {}),
        }
        self.env = {k: v for k, v in settings.items() if v is not None}
        self.inbox = self.cwd / self.env["WATCHER_INBOX"]
        self.outbox = self.cwd / self.env["WATCHER_OUTBOX"]
        self.state = self.cwd / self.env["WATCHER_STATE_DIR"]
        self.failed = self.state / "failed"
        self.port = int(self.env["WATCHER_HTTP_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = ApiClient(self.url, self.env.get("WATCHER_API_TOKEN"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: Probe | None = "live", timeout: float = 30, pipe: bool = False) -> WatcherProcess:
        """Start the process (again), its output appended to the log file, or with `pipe` to
        `self.proc.stdout`; then wait until /health/<wait> answers 200 (not at all with None).
        """
        output: IO[bytes] | int = subprocess.PIPE if pipe else self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run"],
                env=child_env(self.env),
                cwd=self.cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if not isinstance(output, int):
                output.close()
        if wait is not None:
            self.wait_until_up(wait, timeout)
        return self

    def answers(self, probe: Probe = "live") -> bool:
        """True when /health/<probe> answers 200; fails the test if the process has exited."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise AssertionError(f"watcher exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.http.answers(probe)

    def wait_until_up(self, probe: Probe = "live", timeout: float = 30) -> None:
        """Wait until /health/<probe> answers 200; the failure shows the end of the log."""
        try:
            wait_until(lambda: self.answers(probe), timeout, f"GET /health/{probe} = 200")
        except AssertionError as exc:
            if "timed out" not in str(exc):
                raise
            raise AssertionError(f"{exc}:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL, and wait for the exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, and wait up to `timeout` s; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the process if it still runs, and close the client (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.http.close()

    def __enter__(self) -> WatcherProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- output ------------------------------------------------------------------------------

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log file."""
        if not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_lines(self) -> list[str]:
        """Every non-blank line of the log file."""
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]

    def json_events(self, strict: bool = True) -> list[dict[str, object]]:
        """The log lines parsed as JSON; `strict` fails on a line that is not JSON, else skips it."""
        events: list[dict[str, object]] = []
        for line in self.log_lines():
            try:
                events.append(json.loads(line))
            except ValueError:
                if strict:
                    raise
        return events


def api_watcher(root: Path, **settings: str | None) -> WatcherProcess:
    """A `WatcherProcess` as the API tests run it: token TOKEN, settle 0.2 s, rescan 30 s, JSON logs;
    `settings` in lower case win (`rescan_interval="1"`), and None removes one (`api_token=None`).
    """
    env: dict[str, str | None] = {
        "WATCHER_SETTLE_SECONDS": "0.2",
        "WATCHER_RESCAN_INTERVAL": "30",
        "WATCHER_LOG_FORMAT": "json",
        "WATCHER_API_TOKEN": TOKEN,
    }
    env.update({f"WATCHER_{k.upper()}": v for k, v in settings.items()})
    return WatcherProcess(root, env, cwd=REPO)
