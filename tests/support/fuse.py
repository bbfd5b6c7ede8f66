"""FUSE views for the tests: bindfs mounts of a folder, each with its own kernel caches.

Two bindfs views of one folder behave like two NFS clients of one export: each keeps its own
attribute, entry and negative-lookup caches (``attr_timeout``, ``entry_timeout``, ``negative_timeout``),
so a name or size written through one view reaches the other only when its cache says so. The daemon
runs in the foreground as our child, so a test can stop it (SIGSTOP: every call into the view waits)
and let it go on (SIGCONT).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_until


def require_bindfs() -> str:
    """The path of bindfs; a skip saying why (a failure under CI=true) when FUSE views cannot be made."""
    found = shutil.which("bindfs")
    why = None
    if found is None:
        why = "bindfs missing (make deploy-tools installs Debian's bindfs)"
    elif not os.path.exists("/dev/fuse"):
        why = "/dev/fuse missing"
    elif os.geteuid() != 0 and shutil.which("fusermount") is None:
        why = "not root and no fusermount"
    if why is None:
        assert found is not None
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"two-node FUSE tests NOT run: {why}; CI=true requires them")
    pytest.skip(f"two-node FUSE tests NOT run: {why}")


class View:
    """One mounted bindfs view; `pid` is its daemon's."""

    def __init__(self, source: Path, mount_point: Path, proc: subprocess.Popen[bytes]) -> None:
        self.source = source
        self.path = mount_point
        self.proc = proc

    def stop(self) -> None:
        """SIGSTOP the daemon: from now on every call into the view waits."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the daemon: the waiting calls go on."""
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def bindfs_view(source: Path, mount_point: Path, options: str = "") -> Iterator[View]:
    """Mount `source` at `mount_point` with bindfs (``-o options``); unmount it afterwards."""
    bindfs = require_bindfs()
    mount_point.mkdir(parents=True, exist_ok=True)
    args = [bindfs, "-f", *(["-o", options] if options else []), str(source), str(mount_point)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    view = View(source, mount_point, proc)
    try:
        wait_until(lambda: os.path.ismount(mount_point) or proc.poll() is not None, 10, f"bindfs at {mount_point}")
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"bindfs exited with {proc.returncode}: {proc.stderr.read().decode(errors='replace')}")
        yield view
    finally:
        view.resume()
        normal, lazy = (
            (["fusermount", "-u"], ["fusermount", "-uz"])
            if shutil.which("fusermount")
            else (["umount"], ["umount", "-l"])
        )
        if subprocess.run([*normal, str(mount_point)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run([*lazy, str(mount_point)], capture_output=True, timeout=30)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
