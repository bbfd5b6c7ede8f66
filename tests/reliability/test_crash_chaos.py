"""Crash chaos: writers of every kind keep filling the inbox while the real `watcher run` process is
SIGKILLed at random moments and restarted. At the end every file is in the outbox exactly once,
byte-identical, the inbox is empty, no temporary file is left anywhere and nothing is quarantined;
every delivered file has exactly one `delivered` record and every record's bytes are in the outbox.

Replay a failing run with ``WATCHER_SOAK_SEED=<printed seed>``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import random
import sqlite3
import time
from pathlib import Path

import pytest

from tests.reliability.support import (
    MiB,
    Workload,
    assert_exactly_once,
    process_env,
    seed_from_env,
    shm_dir,
    temp_files,
)
from tests.support.fs import count_files
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until
from watcher.pipeline.transfer import is_temp_name


def chaos(tmp_path: Path, outbox_fs: str, n: int, kills: int, big_files: int, timeout: float) -> None:
    seed = seed_from_env()
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        outbox = stack.enter_context(shm_dir("chaos")) if outbox_fs == "other" else tmp_path / "outbox"
        env = process_env(tmp_path, WATCHER_OUTBOX=str(outbox), WATCHER_RESCAN_INTERVAL="2", WATCHER_CHECKSUM="sha256")
        inbox, failed = tmp_path / "inbox", tmp_path / "state" / "failed"
        proc = WatcherProcess(tmp_path, env).start()
        stack.callback(proc.close)
        work = Workload(inbox, tmp_path / "staging", n, seed, big_files=big_files)
        stack.callback(work.stop.set)
        work.start()
        started = time.monotonic()
        killed = 0
        for _ in range(kills):
            # A random moment: right after a restart (mid start-up scan), or after a random share of deliveries.
            if rng.random() > 0.15:
                target = count_files(outbox) + rng.randint(1, max(2, 2 * n // (kills + 1)))

                def progressed(t: int = target) -> bool:
                    return count_files(outbox) >= t or not work.alive()

                wait_until(progressed, timeout, f"seed={seed}: progress before kill {killed + 1}")
            proc.kill()
            killed += 1
            proc.start()
        work.join(timeout)
        wait_until(lambda: count_files(inbox) == 0, timeout, f"seed={seed}: inbox drained", interval=0.2)
        wait_until(lambda: count_files(outbox) >= len(work.expected), 60, f"seed={seed}: all delivered", interval=0.2)
        elapsed = time.monotonic() - started
        assert proc.terminate(60) == 0
        assert_exactly_once(outbox, work.expected, seed)
        assert count_files(inbox) == 0, f"seed={seed}: inbox not empty"
        leftovers = temp_files(inbox, outbox, failed, tmp_path / "staging")
        assert not leftovers, f"seed={seed}: temporary files left: {leftovers[:5]}"
        assert count_files(failed) == 0, f"seed={seed}: files quarantined"
        assert_recorded(tmp_path / "state" / "record.sqlite", outbox, seed)
        print(
            f"chaos outbox_fs={outbox_fs} seed={seed}: {len(work.expected)} files, "
            f"{work.bytes_written / MiB:.1f} MiB, {killed} SIGKILLs, {elapsed:.1f}s"
        )


def assert_recorded(database: Path, outbox: Path, seed: int) -> None:
    """Every delivered file has exactly one `delivered` record, and no record claims a delivery whose
    bytes are not in the outbox (size and SHA-256 compared).
    """
    with sqlite3.connect(database) as conn:
        rows = conn.execute("select path, outcome, target, size, sha256 from watcher_deliveries").fetchall()
    delivered = collections.Counter(target for _, outcome, target, _, _ in rows if outcome == "delivered")
    on_disk = {str(p.relative_to(outbox)) for p in outbox.rglob("*") if p.is_file() and not is_temp_name(p.name)}
    assert set(delivered) == on_disk, (
        f"seed={seed}: files without a delivered record: {sorted(on_disk - set(delivered))[:5]}"
    )
    twice = [target for target, n in delivered.items() if n > 1]
    assert not twice, f"seed={seed}: delivered recorded twice: {twice[:5]}"
    for path, outcome, target, size, sha256 in rows:
        placed = outbox / target
        assert placed.is_file(), f"seed={seed}: the record says {path} went to {target} ({outcome}), which is missing"
        assert placed.stat().st_size == size, f"seed={seed}: {target}: recorded size {size}"
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == sha256, f"seed={seed}: {target}: recorded digest"


@pytest.mark.parametrize("outbox_fs", ["same", "other"])
def test_sigkill_chaos_quick(tmp_path: Path, outbox_fs: str) -> None:
    chaos(tmp_path, outbox_fs, n=600, kills=3, big_files=0, timeout=60)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("outbox_fs", ["same", "other"])
def test_sigkill_chaos_soak(tmp_path: Path, outbox_fs: str) -> None:
    chaos(tmp_path, outbox_fs, n=10_000, kills=20, big_files=4, timeout=600)
