"""Output that cannot be written never stops the service (delivery semantics 11).

A closed log pipe (the reader of ``watcher run | tee log`` exits on Ctrl-C), a full disk under the
log (``/dev/full`` answers ENOSPC) or a closed stream: the line is dropped and counted in
``watcher_log_lines_dropped_total``, files are still delivered and counted, and SIGTERM still stops
the service with exit 0 within WATCHER_SHUTDOWN_TIMEOUT.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import WatcherProcess
from tests.support.settings import make_env
from tests.support.wait import wait_until
from watcher.logging import LineWriter, configure_logging, dropped_lines, get_logger

SHUTDOWN_TIMEOUT = 5.0
MARGIN = 5.0  # observer join, HTTP close and interpreter exit on a loaded 2-core machine


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name
        + (
            "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}" if sample.labels else ""
        ): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_closed_log_pipe_neither_blocks_delivery_nor_signals(tmp_path: Path) -> None:
    # stdout and stderr go into one pipe, as with `watcher run 2>&1 | tee log`.
    watcher = WatcherProcess(tmp_path, make_env(tmp_path, shutdown_timeout=str(SHUTDOWN_TIMEOUT), log_level="debug"))
    port = watcher.port
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    proc = watcher.start(wait=None, pipe=True).proc
    assert proc is not None
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, "watcher wrote no first log line"
        proc.stdout.close()  # the reader exits: every later write gets EPIPE
        watcher.wait_until_up("live", 30)
        count = 40
        for i in range(count):
            (inbox / f"f{i:03}.txt").write_bytes(f"payload {i}\n".encode())
        wait_until(lambda: len(list(outbox.iterdir())) == count, 30, f"{count} files in the outbox")
        wait_until(lambda: scrape(port)["watcher_files_delivered_total"] == count, 15, "the delivered counter")
        metrics = scrape(port)
        assert metrics["watcher_pending_files"] == 0
        assert metrics["watcher_oldest_pending_seconds"] == 0
        assert metrics["watcher_log_lines_dropped_total"] >= count  # one line per delivered file at least
        assert metrics["watcher_ready"] == 1, httpx.get(f"http://127.0.0.1:{port}/health/ready").text
        assert not list(inbox.iterdir())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(SHUTDOWN_TIMEOUT + MARGIN)
        assert code == 0
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT + MARGIN
    finally:
        watcher.close()


def test_a_full_disk_under_the_log_drops_lines_and_counts_them() -> None:
    before = dropped_lines()
    with open("/dev/full", "w") as full:  # every write answers ENOSPC
        configure_logging("json", "info", stream=full)
        try:
            get_logger("test").info("will.not.fit", n=1)
            import logging

            logging.getLogger("uvicorn.error").error("a stdlib line that will not fit either")
        finally:
            configure_logging("json", "info", stream=sys.stdout)
    assert dropped_lines() == before + 2


def test_a_closed_stream_or_pipe_is_a_dropped_line() -> None:
    before = dropped_lines()
    stream = io.StringIO()
    stream.close()
    LineWriter(stream).write("to a closed stream")
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as pipe:
        LineWriter(pipe).write(b"into a pipe nobody reads")
    assert dropped_lines() == before + 2
