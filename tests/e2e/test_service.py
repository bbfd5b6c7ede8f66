"""End-to-end: `watcher run` as a subprocess: delivery, SIGKILL crash and restart, SIGTERM drain, logs."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from tests.support.fs import all_entries, tree
from tests.support.process import WatcherProcess
from tests.support.settings import make_env
from tests.support.wait import wait_until
from watcher.pipeline.transfer import is_temp_name


def service_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**make_env(tmp_path, settle_seconds="0.5"), **extra}


def test_make_run_like_defaults_deliver_a_file(tmp_path: Path) -> None:
    env = {
        "WATCHER_INBOX": "./data/inbox",
        "WATCHER_OUTBOX": "./data/outbox",
        "WATCHER_STATE_DIR": "./data/state",
    }
    (tmp_path / "data").mkdir()  # as `make run` does: the outbox's parent must exist
    proc = WatcherProcess(tmp_path, env).start()
    try:
        (tmp_path / "data/inbox/hello.txt").write_text("hello")
        wait_until(lambda: (tmp_path / "data/outbox/hello.txt").exists(), 15, "delivery")
        assert (tmp_path / "data/outbox/hello.txt").read_text() == "hello"
        wait_until(lambda: proc.http.get("/health/ready").status_code == 200, 10, "ready")
        assert proc.terminate() == 0
    finally:
        proc.close()


def test_json_logs_every_line_parses(tmp_path: Path) -> None:
    env = service_env(tmp_path, WATCHER_OBSERVER="inotify")
    proc = WatcherProcess(tmp_path, env).start()
    try:
        inbox = tmp_path / "inbox"
        for i in range(5):
            (inbox / f"f{i}.txt").write_text(str(i))
        (inbox / "bad\udcff-name.txt").write_bytes(b"non-utf8 name")
        wait_until(lambda: len(tree(tmp_path / "outbox")) == 6, 15, "deliveries")
        proc.http.get("/metrics")
        proc.http.get("/no/such/route")
        assert proc.terminate() == 0
    finally:
        proc.close()
    events = proc.json_events()  # raises on any non-JSON line
    names = [e["event"] for e in events]
    assert "service.started" in names and "service.stopped" in names
    delivered = [e for e in events if e["event"] == "file.delivered"]
    assert len(delivered) == 6 and all({"path", "bytes", "duration_ms", "outcome"} <= e.keys() for e in delivered)
    started = next(e for e in events if e["event"] == "service.started")
    assert started["observer"] == "inotify"
    assert any(str(e.get("logger", "")).startswith("uvicorn") for e in events)


def _burst(inbox: Path, staging: Path, n: int, seed: int, stop: threading.Event) -> dict[str, bytes]:
    """Write n files of 0-256 KiB: half closed in place, half renamed in."""
    rng = random.Random(seed)
    expected: dict[str, bytes] = {}
    for i in range(n):
        if stop.is_set():
            break
        data = rng.randbytes(rng.randint(0, 256 * 1024))
        rel = f"d{i % 7}/f{i:05d}.bin"
        (inbox / f"d{i % 7}").mkdir(exist_ok=True)
        if i % 2:
            tmp = staging / f"s{i}"
            tmp.write_bytes(data)
            os.rename(tmp, inbox / rel)
        else:
            (inbox / rel).write_bytes(data)
        expected[rel] = data
    return expected


@pytest.mark.parametrize("outbox_fs", ["same", "other"])
def test_sigkill_during_burst_then_restart_is_exactly_once(tmp_path: Path, outbox_fs: str) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    extra: dict[str, str] = {}
    shm: Path | None = None
    if outbox_fs == "other":
        shm = Path("/dev/shm") / f"watcher-e2e-{os.getpid()}-{seed}"
        extra["WATCHER_OUTBOX"] = str(shm)
    env = service_env(tmp_path, WATCHER_RESCAN_INTERVAL="1", **extra)
    outbox = Path(env["WATCHER_OUTBOX"])
    inbox = tmp_path / "inbox"
    staging = tmp_path / "staging"
    staging.mkdir()
    rng = random.Random(seed)
    proc = WatcherProcess(tmp_path, env).start()
    result: dict[str, dict[str, bytes]] = {}
    stop = threading.Event()
    writer = threading.Thread(target=lambda: result.update(files=_burst(inbox, staging, 1500, seed, stop)))
    try:
        writer.start()
        for _ in range(4):  # SIGKILL at random moments during the burst, restart each time
            delivered_before = len(tree(outbox)) if outbox.exists() else 0
            goal = delivered_before + rng.randint(5, 60)
            wait_until(
                lambda: len(all_entries(outbox)) > goal or not writer.is_alive(),  # noqa: B023 - used at once
                60,
                "progress",
            )
            proc.kill()
            proc.start()
        writer.join(120)
        expected = result["files"]
        wait_until(lambda: not any(f for _, _, f in os.walk(inbox)), 120, "inbox drained")
        wait_until(lambda: len(tree(outbox)) >= len(expected), 60, "all delivered")
        assert proc.terminate() == 0
        delivered = tree(outbox)
        assert delivered == expected, (
            f"seed={seed}: missing {len(set(expected) - set(delivered))}, extra {sorted(set(delivered) - set(expected))[:5]}"
        )
        assert not [n for n in all_entries(outbox) if is_temp_name(n)], f"seed={seed}: temp files left"
        assert not tree(tmp_path / "state" / "failed")
    finally:
        stop.set()
        proc.close()
        if shm is not None:
            import shutil

            shutil.rmtree(shm, ignore_errors=True)


def test_sigterm_mid_burst_exits_0_and_loses_nothing(tmp_path: Path) -> None:
    env = service_env(tmp_path, WATCHER_SHUTDOWN_TIMEOUT="10")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    proc = WatcherProcess(tmp_path, env).start()
    expected = {f"f{i:04d}.bin": os.urandom(random.randint(0, 64 * 1024)) for i in range(800)}
    try:
        for i, (name, data) in enumerate(expected.items()):
            (inbox / name).write_bytes(data)
            if i == 400:
                wait_until(lambda: len(os.listdir(outbox)) > 50, 30, "some deliveries")
                assert proc.terminate(timeout=15) == 0
        events = proc.json_events()
        assert events[-1]["event"] == "service.stopped"
        # Nothing partial under a final name, nothing lost: what was not delivered is still in the inbox.
        for name, data in tree(outbox).items():
            assert expected[name] == data
        assert set(tree(outbox)) | set(tree(inbox)) == set(expected)
        proc.start()
        wait_until(lambda: len(tree(outbox)) == len(expected), 60, "rest delivered after restart")
        assert tree(outbox) == expected and not tree(inbox)
        assert proc.terminate() == 0
    finally:
        proc.close()
    assert json.loads(proc.log_lines()[-1])["event"] == "service.stopped"
