"""Backlog progress (pure, on made-up times), the skip log's once-per-path memory, and the log format."""

from __future__ import annotations

import io
import json
import logging

import structlog

from watcher.logging import configure_logging, human_size
from watcher.metrics import create_metrics
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.progress import BacklogProgress
from watcher.pipeline.skipped import SkipLog, rejection

DEFAULTS = (".*", "*.tmp", "*.part")


def test_progress_lines_while_a_backlog_drains_then_one_end_line() -> None:
    p = BacklogProgress(every=5.0, threshold=100)
    assert p.look(0.0, 99, 0) is None  # below the threshold: no backlog
    assert p.look(1.0, 1000, 0) is None  # a backlog begins
    assert p.look(3.0, 800, 200) is None  # not yet 5 s since the start
    name, fields = p.look(6.0, 500, 500) or ("", {})
    assert name == "backlog.progress"
    assert fields == {"done": 500, "left": 500, "files_per_s": 100.0, "eta_s": 5.0, "scanning": None}
    assert p.look(7.0, 400, 600) is None
    assert p.look(8.5, 0, 1000) == ("backlog.drained", {"files": 1000, "seconds": 7.5})
    assert p.look(9.0, 0, 1000) is None  # over: one end line


def test_start_up_backlog_waits_for_the_scan_and_says_nothing_for_an_empty_inbox() -> None:
    p = BacklogProgress(every=5.0, threshold=100)
    p.begin(0.0, 0)
    assert p.look(1.0, 0, 3, scanning=True) is None  # the scan still walks
    name, fields = p.look(5.0, 10, 40, scanning=True) or ("", {})
    assert name == "backlog.progress" and fields["eta_s"] is None and fields["scanning"] is True
    assert p.look(5.5, 0, 50) == ("backlog.drained", {"files": 50, "seconds": 5.5})
    empty = BacklogProgress()
    empty.begin(0.0, 0)
    assert empty.look(0.5, 0, 0) is None


def test_rejection_names_the_rule() -> None:
    f = PathFilter(include=("*.csv", "*.json"), exclude=(*DEFAULTS, "*.bak", "archive"))
    assert rejection(f, "a/x.bak") == ("excluded", "WATCHER_EXCLUDE pattern *.bak")
    assert rejection(f, "archive", is_dir=True) == ("excluded", "WATCHER_EXCLUDE pattern archive")
    assert rejection(f, "up/.x.csv") == ("temporary", "WATCHER_EXCLUDE pattern .*")
    assert rejection(f, "notes.txt") == ("not_included", "no WATCHER_INCLUDE pattern matches (*.csv,*.json)")


def test_each_skipped_path_is_reported_once_within_a_bounded_memory() -> None:
    metrics = create_metrics()
    capture = structlog.testing.LogCapture()
    logger = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    skips = SkipLog(metrics, PathFilter(include=("*",), exclude=(*DEFAULTS, "*.bak", "old")), remember=3, logger=logger)

    def count(reason: str) -> float:
        return metrics.registry.get_sample_value("watcher_files_skipped_total", {"reason": reason}) or 0.0

    for _ in range(3):  # three rescans
        skips.filtered("a.bak")
        skips.ignored("link", "symlink", "symlink")
    skips.filtered(".watcher/claims/x")  # the service's own folder: never reported
    skips.filtered(".x.part")
    skips.filtered("old/a.csv")  # with a folder excluded, the folder is reported, once
    skips.filtered("old/b.csv")
    logs = capture.entries
    assert count("excluded") == 2 and count("symlink") == 1 and count("temporary") == 1
    assert [(e["path"], e["log_level"]) for e in logs] == [
        ("a.bak", "info"),
        ("link", "info"),
        (".x.part", "debug"),
        ("old/", "info"),
    ]
    skips.filtered("b.bak")  # memory of 3: the least recently seen ("a.bak" first) are forgotten
    skips.filtered("a.bak")
    assert count("excluded") == 4


def test_console_sizes_for_a_person_json_keeps_bytes_and_empty_fields_are_left_out() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]
    try:
        for fmt in ("console", "json"):
            out = io.StringIO()
            configure_logging(fmt, "info", stream=out)
            structlog.get_logger("t").info("file.delivered", path="a", bytes=1536, renamed_to=None)
            line = out.getvalue().strip()
            assert "renamed_to" not in line
            if fmt == "json":
                assert json.loads(line)["bytes"] == 1536
            else:
                assert "1.5 KiB" in line
        assert logging.getLogger("apscheduler").getEffectiveLevel() == logging.WARNING
    finally:
        configure_logging("json", "warning")
