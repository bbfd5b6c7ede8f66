"""`make run` itself, on its embedded defaults, delivers a file copied into ./data/inbox."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import REPO
from tests.support.net import free_port
from tests.support.process import child_env
from tests.support.wait import wait_until


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_delivers_with_embedded_defaults(tmp_path: Path) -> None:
    # Run the real Makefile from an empty folder, reusing this venv (its stamp is newer than
    # pyproject.toml, so nothing is reinstalled): ./data/... then resolve inside tmp_path.
    (tmp_path / "pyproject.toml").symlink_to(REPO / "pyproject.toml")
    port = free_port()
    env = child_env({"WATCHER_HTTP_PORT": str(port)})
    proc = subprocess.Popen(
        ["make", "-s", "-f", str(REPO / "Makefile"), "run", f"VENV={sys.prefix}"],
        cwd=tmp_path,
        env=env,
        stdout=(tmp_path / "make-run.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def live() -> bool:
            assert proc.poll() is None, f"make run exited with {proc.returncode}"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(live, 60, "make run to serve /health/live")
        (tmp_path / "data/inbox/report.csv").write_text("a,b\n1,2\n")
        wait_until(lambda: (tmp_path / "data/outbox/report.csv").exists(), 15, "delivery to ./data/outbox")
        assert (tmp_path / "data/outbox/report.csv").read_text() == "a,b\n1,2\n"
        assert (tmp_path / "data/state").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C reaches make and the service
        proc.wait(30)
    # make itself dies of the signal; the service must have shut down cleanly.
    assert "service.stopped" in (tmp_path / "make-run.log").read_text()
