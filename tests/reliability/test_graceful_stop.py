"""Graceful stop: SIGTERM in the middle of a burst, with a big copy to another filesystem in flight
and a short WATCHER_SHUTDOWN_TIMEOUT. The process exits 0 within the timeout (plus a small margin),
the interrupted copy leaves its source in the inbox and no temporary file, no partial file ever sits
under a final name, and after a restart nothing is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.reliability.support import (
    Expect,
    MiB,
    Workload,
    assert_exactly_once,
    file_digest,
    process_env,
    seed_from_env,
    shm_dir,
    temp_files,
)
from tests.support.fs import count_files, regular_files
from tests.support.process import WatcherProcess
from tests.support.wait import wait_until
from watcher.pipeline.transfer import is_temp_name

SHUTDOWN_TIMEOUT = 0.2
MARGIN = 4.0  # observer join, HTTP close and interpreter exit on a loaded 2-core machine


def make_big(path: Path, size: int) -> Expect:
    """A big sparse file (random head and tail, holes between): slow for the kernel to copy, cheap to
    make; its digest is computed from memory, not by reading it back.
    """
    head, tail = os.urandom(MiB), os.urandom(MiB)
    with path.open("wb") as handle:
        handle.write(head)
        handle.seek(size - MiB)
        handle.write(tail)
    digest = hashlib.sha256(head)
    zeros = bytes(16 * MiB)
    left = size - 2 * MiB
    while left:
        step = min(left, len(zeros))
        digest.update(zeros[:step])
        left -= step
    digest.update(tail)
    return Expect(size, digest.hexdigest())


def big_copy_in_flight(outbox: Path) -> bool:
    """True when a temporary file bigger than any burst file is growing in the outbox."""
    for dirpath, _, files in os.walk(outbox):
        for name in files:
            if is_temp_name(name):
                try:
                    if os.lstat(os.path.join(dirpath, name)).st_size > 2 * MiB:
                        return True
                except FileNotFoundError:
                    continue
    return False


def sigterm_cycles(tmp_path: Path, n: int, cycles: int, big_size: int) -> None:
    seed = seed_from_env()
    with contextlib.ExitStack() as stack:
        outbox = stack.enter_context(shm_dir("term"))
        env = process_env(tmp_path, WATCHER_OUTBOX=str(outbox), WATCHER_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
        inbox, staging, failed = tmp_path / "inbox", tmp_path / "staging", tmp_path / "state" / "failed"
        proc = WatcherProcess(tmp_path, env).start()
        stack.callback(proc.close)
        work = Workload(inbox, staging, n, seed, slow_share=0.02)
        stack.callback(work.stop.set)
        work.start()
        expected_big: dict[str, Expect] = {}
        for cycle in range(cycles):

            def some_delivered(c: int = cycle) -> bool:
                return count_files(outbox) > (c + 1) * n // (cycles + 2)

            wait_until(some_delivered, 60, "some deliveries")
            big_rel = f"big-{cycle}.bin"
            expected_big[big_rel] = make_big(staging / big_rel, big_size)
            os.rename(staging / big_rel, inbox / big_rel)  # proven complete at once: the copy starts now
            wait_until(lambda: big_copy_in_flight(outbox), 30, "the big copy in flight", interval=0.005)
            t0 = time.monotonic()
            code = proc.terminate(60)
            took = time.monotonic() - t0
            assert code == 0, f"seed={seed}: exit code {code}"
            assert took <= SHUTDOWN_TIMEOUT + MARGIN, f"seed={seed}: SIGTERM took {took:.1f}s"
            stopped = [e for e in proc.json_events(strict=False) if e.get("event") == "service.stopped"]
            assert stopped and int(str(stopped[-1]["interrupted"])) >= 1, "the big copy was not interrupted"
            # The interrupted copy: source still in the inbox, intact; no temporary file anywhere.
            assert file_digest(inbox / big_rel) == expected_big[big_rel]
            assert not (outbox / big_rel).exists()
            assert not temp_files(outbox, inbox, failed), "temporary file left after SIGTERM"
            # Nothing partial under a final name: whatever is in the outbox is complete.
            snapshot = dict(work.expected)
            for path in regular_files(outbox):
                rel = str(path.relative_to(outbox))
                want = snapshot.get(rel) or expected_big.get(rel)
                if want is not None:  # a file whose writer has not recorded it yet is checked at the end
                    assert file_digest(path) == want, f"seed={seed}: partial or wrong file {rel}"
            proc.start()
        work.join(120)
        expected = {**work.expected, **expected_big}
        wait_until(lambda: count_files(inbox) == 0, 120, f"seed={seed}: inbox drained", interval=0.2)
        assert proc.terminate(60) == 0
        assert_exactly_once(outbox, expected, seed)
        assert not temp_files(outbox, inbox, failed) and count_files(failed) == 0


def test_sigterm_mid_burst_with_big_copy_in_flight(tmp_path: Path) -> None:
    sigterm_cycles(tmp_path, n=400, cycles=1, big_size=1024 * MiB)


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_sigterm_cycles_soak(tmp_path: Path) -> None:
    sigterm_cycles(tmp_path, n=4000, cycles=6, big_size=2048 * MiB)
