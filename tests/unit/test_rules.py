"""Pure rules: readiness, conflict names, glob filters, backoff, the error sidecar."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.config import DEFAULT_EXCLUDE
from watcher.pipeline.completeness import Snapshot, is_quiet, next_check_in
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.quarantine import FailureReport, write_sidecar
from watcher.pipeline.transfer import conflict_name, is_temp_name
from watcher.pipeline.workers import BACKOFF_CAP, backoff_delay


def snap(size: int, mtime: float, mono: float, wall: float) -> Snapshot:
    return Snapshot(size, int(mtime * 1e9), mono, wall)


def test_old_mtime_is_quiet_at_once() -> None:
    first = snap(10, 1000.0, 5.0, 1010.0)
    assert is_quiet(first, first, settle=2.0)


def test_recent_mtime_waits_for_the_settle_time() -> None:
    first = snap(10, 1000.0, 5.0, 1000.5)
    assert not is_quiet(first, first, settle=2.0)
    assert next_check_in(first, first, 2.0) == pytest.approx(1.5)
    later = snap(10, 1000.0, 7.0, 1002.5)
    assert is_quiet(first, later, settle=2.0)


def test_any_change_resets() -> None:
    first = snap(10, 1000.0, 5.0, 1010.0)
    grown = snap(11, 1000.0, 9.0, 1014.0)
    assert not is_quiet(first, grown, settle=2.0)


def test_future_mtime_falls_back_to_observation() -> None:
    # Clock skew on a network filesystem: mtime ahead of our clock must not count as "old".
    first = snap(10, 2000.0, 5.0, 1000.0)
    assert not is_quiet(first, first, settle=2.0)
    assert is_quiet(first, snap(10, 2000.0, 7.5, 1002.5), settle=2.0)


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("report.csv", 1, "report (1).csv"),
        ("report.tar.gz", 2, "report.tar (2).gz"),
        ("README", 3, "README (3)"),
        (".hidden", 1, ".hidden (1)"),
    ],
)
def test_conflict_names(name: str, n: int, expected: str) -> None:
    assert conflict_name(name, n) == expected


def test_default_excludes_skip_writer_temporaries() -> None:
    f = PathFilter(("*",), DEFAULT_EXCLUDE)
    for rel in ["a.csv", "deep/dir/b.bin", "-leading-dash", "name\nwith newline"]:
        assert f.accepts(rel), rel
    for rel in [
        ".hidden",
        "x.tmp",
        "x.part",
        "dl.crdownload",
        ".x.swp",
        "notes~",
        "sub/.rsync.AbC123",
        ".staging/a.csv",
    ]:
        assert not f.accepts(rel), rel
    assert not f.accepts_dir(".staging")


def test_include_matches_name_or_path() -> None:
    f = PathFilter(("*.csv", "reports/*"), ())
    assert f.accepts("a.csv") and f.accepts("x/y/a.csv") and f.accepts("reports/z.bin")
    assert not f.accepts("a.txt")


@given(st.integers(min_value=1, max_value=40))
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    delay = backoff_delay(attempt, random.Random(attempt))
    ceiling = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_temp_names() -> None:
    assert is_temp_name(".watcher-0123abcd.tmp")
    assert not is_temp_name("watcher-1.tmp") and not is_temp_name(".watcher-1.csv")


def test_sidecar_content(tmp_path: Path) -> None:

    dest = tmp_path / "bad.csv"
    dest.write_text("x")
    report = FailureReport("sub/bad.csv", 5, "Input/output error", "OSError", 5, 1_700_000_000.0, 1_700_000_100.0)
    sidecar = write_sidecar(tmp_path, dest, report)
    assert sidecar.name == "bad.csv.error.json"
    data = json.loads(sidecar.read_text())
    assert data["path"] == "sub/bad.csv" and data["attempts"] == 5 and data["errno"] == 5
    assert data["errno_name"] == "EIO" and data["error"] == "Input/output error"
    assert data["first_seen"].startswith("2023-11-14T22:13:20") and data["first_seen"].endswith("+00:00")
    assert data["last_attempt"] and data["quarantined_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "bad.csv.error.json"]
