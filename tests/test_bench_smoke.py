"""Smoke test of the benchmark harness (bench/), with the limit-loop baselines only.

It proves that the harness counts deliveries, measures latency from the writer's close and that its
integrity check passes a clean run and catches a missing and a corrupted file; that the limit loop
delivers a backlog (its start-up scan) and the durable loop a big file measured to its durability; and
that the issue targets and the cluster table are computed from medians. No watcher process and no
PostgreSQL are involved, so it runs in a few seconds on any Linux with inotify.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench import harness, integrity, report, subjects
from bench.harness import RunResult
from bench.inotify import OutboxObserver
from bench.workloads import BY_KEY, MIB, SMOKE

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


def test_limit_loop_delivers_a_backlog_from_its_start_up_scan() -> None:
    cfg = replace(CFG, backlog_small=30)
    result = harness.run_one(subjects.LIMIT, BY_KEY["backlog_small"], cfg, rep=0)

    assert result.error is None
    assert result.faults == 0, result.integrity
    assert result.files == 30 and result.missing_at_deadline == 0
    assert result.span_s is not None and result.ready_s is not None and result.span_s > 0
    assert result.cpu_s is not None and result.cpu_per_1k_files_s == pytest.approx(result.cpu_s / 30 * 1000)


def test_durable_loop_big_file_is_timed_until_its_source_is_gone() -> None:
    cfg = replace(CFG, big_size=2 * MIB)
    result = harness.run_one(subjects.LIMIT_DURABLE, BY_KEY["big_same_fs"], cfg, rep=0)

    assert result.error is None
    assert result.faults == 0, result.integrity
    assert result.lat_p50_ms is not None and 0 <= result.lat_p50_ms < 5000


def _summary(subject: str, workload: str, **measures: float) -> report.Summary:
    run = RunResult(subject=subject, workload=workload, rep=0)
    for key, value in measures.items():
        setattr(run, key, value)
    return report.summarize(subject, workload, [run])


def test_targets_compare_with_the_baselines_of_the_same_run() -> None:
    summaries = {
        (s.subject, s.workload): s
        for s in (
            _summary("watcher", "renamed", files_per_s=600.0, cpu_s=0.4),
            _summary("limit", "renamed", files_per_s=1000.0, cpu_s=0.1),
            _summary("watcher", "big_same_fs", lat_p50_ms=520.0),
            _summary("limit-durable", "big_same_fs", lat_p50_ms=480.0),
            _summary("watcher", "startup", ready_s=0.4),
            _summary("cluster x1", "cluster", files_per_s=1000.0),
            _summary("cluster x2", "cluster", files_per_s=850.0),
        )
    }
    targets = {(t.workload, t.name): t.met for t in report.evaluate_targets(lambda s, w: summaries.get((s, w)), CFG)}

    assert targets[("renamed", "files/s >= 0.5x limit")] is True
    assert targets[("renamed", "CPU s <= 3x limit")] is False
    assert targets[("big_same_fs", "close -> durable <= limit-durable + 50 ms")] is True
    assert targets[("startup", "process start -> ready")] is True
    assert targets[("cluster", "files/s 2 replicas / 1 replica")] is False
    assert targets[("backlog_small", "CPU s <= 3x limit")] is None  # not run: not evaluated


def test_cluster_table_has_the_ratio_to_one_replica() -> None:
    runs = {
        (name, "cluster"): [RunResult(subject=name, workload="cluster", rep=i, files_per_s=v) for i, v in enumerate(vs)]
        for name, vs in (("cluster x1", [1000.0, 800.0]), ("cluster x2", [950.0, 840.0]))
    }
    lines, out = report.cluster_section(runs)

    scaling = out["scaling"]
    assert isinstance(scaling, list)
    assert [row["ratio_to_1"] for row in scaling] == [1.0, pytest.approx(895 / 900)]
    assert scaling[1]["paired_ratios"] == [0.95, 1.05]
    assert any("0.994" in line for line in lines)
    assert "scaling_cluster_renamed" not in out  # not run: no table


def test_cluster_renamed_gets_its_own_table() -> None:
    runs = {
        (name, workload): [RunResult(subject=name, workload=workload, rep=0, files_per_s=v)]
        for workload, pairs in (("cluster", (1000.0, 900.0)), ("cluster_renamed", (2000.0, 3800.0)))
        for name, v in zip(("cluster x1", "cluster x2"), pairs, strict=True)
    }
    lines, out = report.cluster_section(runs)

    renamed = out["scaling_cluster_renamed"]
    assert isinstance(renamed, list)
    assert [row["ratio_to_1"] for row in renamed] == [1.0, 1.9]
    titles = [line for line in lines if line.startswith("## Cluster")]
    assert len(titles) == 2 and "renamed" in titles[1]


def test_profile_groups_splits_start_up_from_per_file_work(tmp_path: Path) -> None:
    from bench.profile_groups import group

    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): MainThread;<module> (watcher/service.py:1);_find_and_load (<frozen>:1) 7\n"
        "thread (2): transfer_0;deliver_batch (watcher/pipeline/transfer.py:1);_record (x:1);"
        "BatchRecorder.write (watcher/record/rows.py:1) 3\n"
        "thread (2): transfer_0;deliver_batch (watcher/pipeline/transfer.py:1);_commit (x:1) 5\n"
        "thread (1): MainThread;Handle._run (asyncio/events.py:80) 2\n"
    )
    total, startup, groups = group(raw)
    assert (total, startup) == (17, 7)
    assert groups == {
        "record: rows and their insert": 3,
        "transfer: open, link, check, unlink, flush": 5,
        "event loop and thread hand-offs": 2,
    }


def test_paced_cluster_names_for_r1_all_hash_to_r1() -> None:
    import zlib

    from bench.paced_cluster import names

    mine = list(names(50, only_r1=True))
    assert len(mine) == 50 == len(set(mine))
    assert all(zlib.crc32(name.encode()) % 2 == 0 for name in mine)  # r1 of the sorted ["r1", "r2"]
    assert len(list(names(50, only_r1=False))) == 50


def test_the_cluster_s_throughput_workloads_run_more_repetitions() -> None:
    from bench.workloads import BY_KEY, FULL, SMOKE, repetitions

    assert repetitions(BY_KEY["cluster"], FULL) == repetitions(BY_KEY["cluster_renamed"], FULL) == 9
    assert repetitions(BY_KEY["failover"], FULL) == repetitions(BY_KEY["burst"], FULL) == FULL.reps == 3
    assert repetitions(BY_KEY["cluster"], SMOKE) == 1
