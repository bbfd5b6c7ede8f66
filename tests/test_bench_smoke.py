"""Smoke test of the benchmark harness (bench/), with the limit-loop baseline only.

It proves that the harness counts deliveries, measures latency from the writer's close and that its
integrity check passes a clean run and catches a missing and a corrupted file. No watcher process is
involved, so it runs in a few seconds on any Linux with inotify.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import harness, integrity, subjects
from bench.inotify import OutboxObserver
from bench.workloads import BY_KEY, SMOKE

CFG = replace(SMOKE, burst_files=20, ready_timeout_s=10.0)

pytestmark = pytest.mark.timeout(30)


def test_limit_loop_burst_is_counted_timed_and_intact() -> None:
    result = harness.run_one(subjects.LIMIT, BY_KEY["burst"], CFG, rep=0)

    assert result.error is None
    assert result.faults == 0, result.integrity
    assert result.integrity["expected"] == 20
    assert result.files == 20
    assert result.missing_at_deadline == 0
    assert len(result.latencies_ms) == 20
    assert result.lat_p50_ms is not None and result.lat_p99_ms is not None and result.lat_max_ms is not None
    assert 0 <= result.lat_p50_ms <= result.lat_p99_ms <= result.lat_max_ms < 5000
    assert result.files_per_s is not None and result.files_per_s > 0
    assert result.peak_rss_mib is not None and result.peak_rss_mib > 0
    assert result.exit_code == 0


def test_integrity_check_catches_a_missing_and_a_corrupt_file() -> None:
    workload = BY_KEY["burst"]
    dirs = harness.make_dirs(workload, "test")
    try:
        plan = workload.prepare(dirs, CFG)
        with OutboxObserver(dirs.outbox) as observer:
            running = subjects.LIMIT.start(dirs)
            try:
                running.wait_ready(CFG.ready_timeout_s)
                harness.drive(workload, dirs, CFG, plan, running.pid)
                assert observer.wait_delivered(plan.sizes, timeout=10) == set()
            finally:
                exit_code = running.stop()
        assert running.stop_note is None
        assert exit_code == 0
        assert integrity.check(dirs.inbox, dirs.outbox, plan.expected).ok

        gone, changed = sorted(plan.expected)[:2]
        (dirs.outbox / gone).unlink()
        (dirs.outbox / changed).write_bytes(b"not what the writer wrote")
        (dirs.outbox / ".watcher-tmp").write_bytes(b"")
        (dirs.inbox / "late.bin").write_bytes(b"")
        report = integrity.check(dirs.inbox, dirs.outbox, plan.expected)

        assert not report.ok
        assert report.missing == [gone]
        assert report.corrupt == [changed]
        assert report.temp_left == [".watcher-tmp"]
        assert report.inbox_left == ["late.bin"]
        assert report.faults == 4
    finally:
        harness.remove_dirs(dirs)
