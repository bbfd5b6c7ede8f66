"""inotify exhaustion: with fs.inotify.max_user_watches (or max_user_instances) too low for the
inbox tree, a real `watcher run` falls back to polling, says so in /health/ready and in its logs
(`observer.inotify_exhausted`), and still delivers everything.

Other processes on the machine use inotify too, so the limit is lowered only until the service has
chosen its observer, and restored in a ``finally`` whatever happens.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.support import Sysctl, check_detail, process_env, ready, require_root
from tests.support.fs import count_files
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until
from watcher.pipeline.observer import inotify_usage

FOLDERS = 200  # other processes (tests running in parallel) hold watches too: keep a wide margin


def user_inotify_usage() -> tuple[int, int]:
    """(instances, watches) of inotify held by all processes of this user right now."""
    uid = os.geteuid()
    instances = watches = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        i, w = inotify_usage(f"/proc/{pid}")
        instances, watches = instances + i, watches + w
    return instances, watches


CASES = {
    # not even the inbox root can be watched
    "watches_for_root": "max_user_watches",
    # the root can, but not every folder of the tree: inotify would silently miss files in the rest
    "watches_for_tree": "max_user_watches",
    # no inotify instance can be created at all
    "instances": "max_user_instances",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inotify_exhausted_falls_back_to_polling(tmp_path: Path, case: str) -> None:
    limit = CASES[case]
    require_root(f"lower fs.inotify.{limit}")
    env = process_env(tmp_path, WATCHER_OBSERVER="auto", WATCHER_SETTLE_SECONDS="0.3")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    expected: dict[str, bytes] = {}
    for i in range(FOLDERS):  # more folders than watches left: a recursive watch cannot be set up
        rel = f"d{i:02d}/early.txt"
        (inbox / rel).parent.mkdir(parents=True)
        expected[rel] = f"early {i}".encode()
        (inbox / rel).write_bytes(expected[rel])
    proc = WatcherProcess(tmp_path, env)
    knob = Sysctl(f"fs.inotify.{limit}")
    try:
        _, watches = user_inotify_usage()
        knob.set(watches + FOLDERS // 2 if case == "watches_for_tree" else 0)
        proc.start(wait=None)

        def chosen() -> bool:
            assert proc.proc is not None
            return proc.proc.poll() is not None or any(
                e.get("event") == "service.started" for e in proc.json_events(strict=False)
            )

        wait_until(chosen, 30, "the observer chosen", interval=0.02)
        knob.restore()  # as soon as the choice is made: other processes need their watches
        proc.wait_until_up("live", 30)
        events = proc.json_events(strict=False)
        exhausted = [e for e in events if e.get("event") == "observer.inotify_exhausted"]
        started = next(e for e in events if e.get("event") == "service.started")
        assert exhausted, (
            f"no observer.inotify_exhausted log line; observer={started['observer']}: {started['observer_reason']}"
        )
        assert f"fs.inotify.{limit}" in str(exhausted[0].get("limit_to_raise"))
        assert started["observer"] == "polling"
        wait_until(lambda: ready(proc.port)[0] == 200, 20, "ready while polling")
        detail = check_detail(ready(proc.port)[1], "observer")
        assert "polling" in detail and limit in detail, detail
        for i in range(0, FOLDERS, 5):  # written after start-up: only the polling observer (or a rescan) sees them
            rel = f"d{i:02d}/late.txt" if i % 2 else f"new{i:02d}/late.txt"
            (inbox / rel).parent.mkdir(exist_ok=True)
            expected[rel] = f"late {i}".encode()
            (inbox / rel).write_bytes(expected[rel])
        wait_until(lambda: count_files(inbox) == 0, 30, "everything delivered by polling")
        assert proc.terminate() == 0
        got = {str(p.relative_to(outbox)): p.read_bytes() for p in outbox.rglob("*") if p.is_file()}
        assert got == expected
    finally:
        knob.restore()
        proc.close()
