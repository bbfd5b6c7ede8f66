"""`make run` itself, on its embedded defaults, delivers a file copied into ./data/inbox."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import REPO
from tests.support.net import free_port
from tests.support.process import child_env
from tests.support.wait import wait_until


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_delivers_with_embedded_defaults(tmp_path: Path) -> None:
    # Run the real Makefile from an empty folder, reusing this venv (a run stamp newer than
    # pyproject.toml, so nothing is reinstalled): ./data/... then resolve inside tmp_path.
    (tmp_path / "pyproject.toml").symlink_to(REPO / "pyproject.toml")
    (tmp_path / "run-stamp").touch()
    port = free_port()
    env = child_env({"WATCHER_HTTP_PORT": str(port)})
    proc = subprocess.Popen(
        [
            "make",
            "-s",
            "-f",
            str(REPO / "Makefile"),
            "run",
            f"VENV={sys.prefix}",
            f"RUN_STAMP={tmp_path / 'run-stamp'}",
        ],
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


# What a fresh checkout holds that `pip install -e .` reads.
CHECKOUT = ("Makefile", "pyproject.toml", "README.md", "watcher")
DEV_ONLY = ("pytest", "mypy", "ruff", "matplotlib", "kubectl", "hadolint", "psycopg")
FIRST_DELIVERY_BUDGET = 120  # seconds from `make run` to the first delivered file (measured: about 30)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_on_a_fresh_checkout_installs_only_what_running_needs(tmp_path: Path) -> None:
    """A new user's first `make run`: a new .venv with the service and its runtime dependencies only
    (no dev, bench or postgres extras), timed from the command to the first delivered file.
    """
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in CHECKOUT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    (checkout / "data/inbox").mkdir(parents=True)
    (checkout / "data/inbox/first.csv").write_text("a,b\n1,2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "VIRTUAL_ENV"))}
    env["WATCHER_HTTP_PORT"] = str(free_port())
    log = tmp_path / "make-run.log"
    began = time.monotonic()
    proc = subprocess.Popen(
        ["make", "-s", "run", f"PYTHON={getattr(sys, '_base_executable', sys.executable)}"],
        cwd=checkout,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def delivered() -> bool:
            assert proc.poll() is None, f"make run exited with {proc.returncode}: {log.read_text()[-2000:]}"
            return (checkout / "data/outbox/first.csv").exists()

        wait_until(delivered, FIRST_DELIVERY_BUDGET, "the first delivery of a fresh `make run`", interval=0.1)
        seconds = time.monotonic() - began
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    print(f"fresh make run: first delivery after {seconds:.1f} s")
    installed = subprocess.run(
        [str(checkout / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "watcher==" in installed and "uvicorn==" in installed
    assert not [name for name in DEV_ONLY if f"\n{name}" in "\n" + installed], installed
    assert (checkout / ".venv/.installed-run").exists() and not (checkout / ".venv/.installed-dev").exists()
