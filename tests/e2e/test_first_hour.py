"""What a new user reads in the log (issue 12): the start-up line, the backlog, every skipped path
once, and per-file lines without empty fields, with sizes for a person on a terminal.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.support.fs import tree
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until

BACKLOG = 300


def _events(proc: WatcherProcess, name: str) -> list[dict[str, object]]:
    return [e for e in proc.json_events() if e.get("event") == name]


def test_json_log_of_a_first_run(tmp_path: Path) -> None:
    inbox = tmp_path / "w/inbox"
    inbox.mkdir(parents=True)
    (tmp_path / "w/outbox").mkdir()  # else `outbox.created` comes first
    for i in range(BACKLOG):
        (inbox / f"f{i:03}.txt").write_text(str(i))
    (inbox / "old.bak").write_text("kept out by WATCHER_EXCLUDE")
    (inbox / ".upload.part").write_text("a writer's temporary name")
    os.symlink("/etc/hostname", inbox / "link.txt")
    os.mkfifo(inbox / "pipe.txt")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(inbox / "sock.txt"))
    env = {
        "WATCHER_LOG_FORMAT": "json",
        "WATCHER_LOG_LEVEL": "info",
        "WATCHER_SETTLE_SECONDS": "0.2",
        "WATCHER_RESCAN_INTERVAL": "1",
        "WATCHER_EXCLUDE": ".*,*.part,*.bak",
    }
    try:
        with WatcherProcess(tmp_path / "w", env) as proc:
            proc.start()
            wait_until(lambda: _events(proc, "backlog.drained"), 30, "backlog.drained")
            (inbox / "later.bak").write_text("excluded, seen by an event")
            wait_until(lambda: len(proc.http.get("/jobs/rescan/runs").json()["runs"]) >= 2, 20, "two interval rescans")
            wait_until(lambda: any(e.get("path") == "later.bak" for e in _events(proc, "file.skipped")), 10, "skip")
            metrics = proc.http.get("/metrics").text
            assert proc.terminate() == 0
    finally:
        unix.close()
    events = proc.json_events()
    first = next(e for e in events if str(e.get("logger", "")).startswith("watcher"))
    assert first["event"] == "service.started", first
    assert first["inbox"] == str(inbox) and first["outbox"] == str(tmp_path / "w/outbox")
    assert first["http"] == f"http://127.0.0.1:{proc.port}"
    assert str(first["api"]).startswith("read-only")
    assert first["observer"] == "inotify"
    assert "settings" not in first and len(str(first)) < 600
    # APScheduler's chatter is at debug; its warnings would still show.
    assert not [e for e in events if str(e.get("logger", "")).startswith("apscheduler")]

    startup = next(e for e in events if e["event"] == "rescan.startup_done")
    assert startup["files_found"] == BACKLOG
    drained = [e for e in events if e["event"] == "backlog.drained"]
    assert len(drained) == 1 and drained[0]["files"] == BACKLOG
    assert len(tree(tmp_path / "w/outbox")) == BACKLOG

    delivered = [e for e in events if e["event"] == "file.delivered"]
    assert len(delivered) == BACKLOG
    assert all(type(e["bytes"]) is int and "renamed_to" not in e for e in delivered)  # no empty fields

    skipped = {str(e["path"]): e for e in events if e["event"] == "file.skipped"}
    # Once each, although the inbox was rescanned every second.
    assert sorted(str(e["path"]) for e in events if e["event"] == "file.skipped") == sorted(skipped)
    assert skipped["old.bak"]["reason"] == "excluded" and "*.bak" in str(skipped["old.bak"]["rule"])
    assert skipped["later.bak"]["reason"] == "excluded"
    assert skipped["link.txt"]["reason"] == "symlink"
    assert skipped["pipe.txt"]["reason"] == "special" and skipped["sock.txt"]["reason"] == "special"
    assert ".upload.part" not in skipped  # a default temp pattern: at debug, not info
    for reason, count in (("excluded", 2), ("temporary", 1), ("symlink", 1), ("special", 2), ("not_included", 0)):
        assert f'watcher_files_skipped_total{{reason="{reason}"}} {count}.0' in metrics, reason


def test_console_log_shows_sizes_for_a_person(tmp_path: Path) -> None:
    inbox = tmp_path / "w/inbox"
    inbox.mkdir(parents=True)
    (inbox / "big.bin").write_bytes(b"x" * (3 * 1024 * 1024 + 512 * 1024))
    (inbox / "small.txt").write_bytes(b"12345")
    env = {"WATCHER_LOG_FORMAT": "console", "WATCHER_SETTLE_SECONDS": "0.2"}
    with WatcherProcess(tmp_path / "w", env) as proc:
        proc.start()
        wait_until(lambda: len(tree(tmp_path / "w/outbox")) == 2, 20, "both delivered")
        wait_until(lambda: "backlog.drained" in proc.log_tail(100_000), 10, "backlog.drained")
        assert proc.terminate() == 0
    lines = proc.log_lines()
    big = next(line for line in lines if "file.delivered" in line and "big.bin" in line)
    small = next(line for line in lines if "file.delivered" in line and "small.txt" in line)
    assert "bytes='3.5 MiB'" in big or "bytes=3.5 MiB" in big, big
    assert "5 B" in small and "renamed_to" not in small, small
    started = next(line for line in lines if "service.started" in line)
    assert "settings=" not in started and f"127.0.0.1:{proc.port}" in started
