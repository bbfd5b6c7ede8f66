"""The job kinds against the real filesystem, run through the API of a real `watcher run`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fs import write_file
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

NEVER = {"type": "cron", "expression": "0 3 1 1 *"}  # the runs below are run-now


@pytest.fixture(autouse=True)
def _empty_dirs(watcher: WatcherProcess) -> None:
    """Each test starts with an empty inbox, outbox and failed dir (the watcher is shared)."""
    for root in (watcher.inbox, watcher.outbox, watcher.failed):
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    }


def run_kind(watcher: WatcherProcess, kind: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "trigger": NEVER}
    if args is not None:
        body["args"] = args
    job = watcher.http.create(body)
    return watcher.http.run_now(job["id"], before=0)


def temp_name() -> str:
    return f".watcher-{uuid.uuid4().hex}.tmp"


def test_purge_of_the_failed_dir_with_age_0_empties_it_and_leaves_the_outbox(watcher: WatcherProcess) -> None:
    write_file(watcher.failed / "a.txt", b"a", age=7200)
    write_file(watcher.failed / "a.txt.error.json", b"{}")
    write_file(watcher.failed / "sub" / "deep" / "b.bin", os.urandom(1000))
    write_file(watcher.failed / "sub" / "deep" / "b.bin.error.json", b"{}")
    future = write_file(watcher.failed / "future.txt", b"f")
    os.utime(future, (time.time() + 3600, time.time() + 3600))  # a writer's clock ahead: still purged at 0
    kept = {"keep.txt": b"outbox stays", "sub/keep2.txt": b"me too"}
    for rel, data in kept.items():
        write_file(watcher.outbox / rel, data, age=7200)

    run = run_kind(watcher, "purge", {"target": "failed", "older_than_seconds": 0})

    assert run["outcome"] == "success", run
    assert run["detail"] == {"target": "failed", "files_removed": 5, "bytes_removed": 1006, "dirs_removed": 2}
    assert list(watcher.failed.iterdir()) == []
    assert watcher.failed.is_dir()
    assert files_under(watcher.outbox) == kept


def test_purge_of_the_outbox_by_age_spares_young_files_temp_files_and_symlinks(watcher: WatcherProcess) -> None:
    elsewhere = write_file(watcher.root / "elsewhere" / "target.txt", b"not ours", age=7200)
    old = write_file(watcher.outbox / "old" / "report.csv", b"old", age=7200)
    young = write_file(watcher.outbox / "young.csv", b"young")
    in_progress = write_file(watcher.outbox / "old" / temp_name(), b"partial", age=7200)
    link = watcher.outbox / "link.txt"
    link.symlink_to(elsewhere)
    os.utime(link, (time.time() - 7200,) * 2, follow_symlinks=False)

    run = run_kind(watcher, "purge", {"target": "outbox", "older_than_seconds": 3600})

    assert run["outcome"] == "success", run
    assert run["detail"]["files_removed"] == 1
    assert not old.exists()
    assert young.read_bytes() == b"young" and in_progress.exists()
    assert link.is_symlink() and elsewhere.read_bytes() == b"not ours"
    assert old.parent.is_dir()  # still holds the temp file


def test_retry_failed_delivers_quarantined_files_and_never_their_sidecars(watcher: WatcherProcess) -> None:
    payload = {"sub/dir/a.txt": b"alpha" * 1000, "b.bin": os.urandom(200_000), "c d (1).txt": b"spaces"}
    for rel, data in payload.items():
        write_file(watcher.failed / rel, data, age=600)
        write_file(watcher.failed / f"{rel}.error.json", b'{"error": "disk full"}')
    write_file(watcher.failed / "orphan.txt.error.json", b"{}")  # a sidecar without its file stays put
    in_progress = write_file(watcher.failed / temp_name(), b"a quarantine move in progress")

    run = run_kind(watcher, "retry_failed")

    assert run["outcome"] == "success", run
    assert run["detail"] == {"files_moved": 3, "sidecars_removed": 3, "conflicts": 0}
    wait_until(lambda: all((watcher.outbox / rel).is_file() for rel in payload), 15, "the retried files delivered")
    delivered = files_under(watcher.outbox)
    for rel, data in payload.items():
        assert delivered[rel] == data
    assert not [rel for rel in delivered if rel.endswith(".error.json")]
    wait_until(lambda: not files_under(watcher.inbox), 10, "an empty inbox")
    assert set(files_under(watcher.failed)) == {"orphan.txt.error.json", in_progress.name}


def test_sweep_removes_our_stale_temp_files_only(watcher: WatcherProcess) -> None:
    temps = [
        write_file(watcher.outbox / temp_name(), b"x" * 10),
        write_file(watcher.outbox / "deep" / "er" / temp_name(), b"y" * 20),
        write_file(watcher.failed / temp_name(), b"z" * 30),
    ]
    others = [
        write_file(watcher.outbox / "deep" / "real.txt", b"real"),
        write_file(watcher.outbox / ".watcher-notes.txt", b"n"),
    ]

    run = run_kind(watcher, "sweep", {"older_than_seconds": 0})

    assert run["outcome"] == "success", run
    assert run["detail"] == {"files_removed": 3, "bytes_removed": 60}
    assert not any(t.exists() for t in temps)
    assert all(o.exists() for o in others)
    # the default keeps young temp files: they may belong to a delivery in progress
    young = write_file(watcher.outbox / temp_name(), b"in flight")
    assert run_kind(watcher, "sweep")["detail"]["files_removed"] == 0
    assert young.exists()


def test_rescan_reports_the_files_it_found(watcher: WatcherProcess) -> None:
    run = run_kind(watcher, "rescan")
    assert run["outcome"] == "success", run
    assert isinstance(run["detail"]["files_found"], int)


@contextlib.contextmanager
def unremovable(path: Path) -> Iterator[None]:
    """Make `path` impossible to unlink: a read-only folder, or for root the immutable attribute."""
    if os.geteuid() != 0:
        path.parent.chmod(0o500)
        try:
            yield
        finally:
            path.parent.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root, and the filesystem has no immutable attribute: no way to make an unlink fail")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_failing_run_is_recorded_as_error_with_its_detail(watcher: WatcherProcess) -> None:
    stuck = write_file(watcher.failed / "locked" / "stuck.txt", b"s")
    with unremovable(stuck):
        run = run_kind(watcher, "purge", {"target": "failed", "older_than_seconds": 0})
    assert run["outcome"] == "error"
    assert "1 file(s) could not be removed" in run["error"]
    assert run["detail"]["errors"] == 1
    metrics = watcher.http.get("/metrics").text
    assert 'outcome="error"} 1.0' in metrics
