"""The network-filesystem rules (watcher.pipeline.netfs) on real files: silly-rename names are never
ours, ENOENT on a listed name means "later", ESTALE is retried a few times and then means "later",
and the settle check of a shared inbox looks through open + fstat.

ESTALE cannot be produced here for real (no NFS in this kernel; FUSE answers ENOENT instead), so it
is injected where the OS answers: the call that :func:`retry_stale` makes raises it, the rest of the
work is done on real files by the real code.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.fs import write_file
from tests.support.settings import make_settings
from watcher.cluster.claims import claim, claimed, claims_root, hand_back_all
from watcher.jobs.kinds import purge_files, retry_failed
from watcher.metrics import create_metrics
from watcher.pipeline import netfs, transfer
from watcher.pipeline.filters import PathFilter
from watcher.pipeline.intake import Intake, Tracked
from watcher.pipeline.netfs import ESTALE_TRIES, StaleHandle, is_silly_rename, open_fstat, retry_stale, settle_stat
from watcher.pipeline.observer import RawEvent
from watcher.pipeline.rescan import walk
from watcher.pipeline.transfer import TransferOutcome, deliver

SILLY = ".nfs00000000001a2b3c00000001"  # what a Linux NFS client names a removed file still held open
CLUSTER = {"cluster": "true", "jobstore_url": "postgresql://watcher@127.0.0.1:1/none"}


def _flaky(real: Callable[..., Any], failures: int, err: int = errno.ESTALE) -> tuple[Callable[..., Any], list[int]]:
    """`real`, answering `err` on its first `failures` calls; the list counts the calls."""
    calls: list[int] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return call, calls


def _walked(inbox: Path) -> list[str]:
    async def collect() -> list[str]:
        return [f.rel async for batch in walk(inbox, PathFilter(("*",), ()), True) for f in batch]

    return sorted(asyncio.run(collect()))


# ---- silly renames -------------------------------------------------------------------------------


def test_silly_rename_names_are_never_found_claimed_handed_back_purged_or_moved(tmp_path: Path) -> None:
    assert is_silly_rename(SILLY) and is_silly_rename(".nfs1234") and not is_silly_rename("a.nfs")
    inbox = tmp_path / "inbox"
    write_file(inbox / "a.csv", b"a")
    write_file(inbox / SILLY, b"held open elsewhere")
    write_file(inbox / "sub" / SILLY, b"held open elsewhere")
    # A filter that lets every name through (the default excludes .* names anyway): still not found.
    assert _walked(inbox) == ["a.csv"]

    settings = make_settings(tmp_path, exclude="")
    intake = Intake(settings, create_metrics(), asyncio.Queue())
    intake.handle_events([RawEvent("closed", str(inbox / "sub" / SILLY), "", False)])
    intake.handle_events([RawEvent("moved", str(inbox / "a.csv"), str(inbox / SILLY), False)])
    assert intake.tracked == {}, "an event for a .nfs name is no file to deliver"

    # A silly-renamed claim stays where it is: handed back, it would outlive its last close in the inbox.
    root = claims_root(inbox, "r1")
    write_file(root / "d" / SILLY, b"claim removed while open")
    write_file(root / "d" / "mine.csv", b"mine")
    assert list(claimed(root)) == ["d/mine.csv"]
    assert hand_back_all(root, inbox) == (1, 0)
    assert (root / "d" / SILLY).exists() and not (inbox / "d" / SILLY).exists()

    outbox, failed = tmp_path / "outbox", tmp_path / "failed"
    write_file(outbox / SILLY, b"a consumer still reads it", age=7200)
    write_file(failed / "x" / SILLY, b"quarantined, then removed while open", age=7200)
    assert purge_files(outbox, 60, threading.Event())["files_removed"] == 0
    assert retry_failed(failed, inbox, False, threading.Event())["files_moved"] == 0
    assert (outbox / SILLY).exists() and (failed / "x" / SILLY).exists()


# ---- ENOENT on a listed name ---------------------------------------------------------------------


def test_enoent_on_a_listed_name_is_later_never_an_error(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    outbox.mkdir()
    write_file(inbox / "d" / "gone.csv", b"x")
    assert _walked(inbox) == ["d/gone.csv"]
    os.unlink(inbox / "d" / "gone.csv")  # listed, then gone (or hidden by a negative lookup cache)
    assert not claim(inbox, claims_root(inbox, "r1"), "d/gone.csv")
    result = deliver(inbox / "d" / "gone.csv", "d/gone.csv", outbox)
    assert result.outcome is TransferOutcome.VANISHED
    with pytest.raises(FileNotFoundError):
        open_fstat(str(inbox / "d" / "gone.csv"))

    # The settle check forgets it without an error; when the name is back, the next scan finds it.
    async def scenario() -> None:
        settings = make_settings(tmp_path, settle_seconds="5", **CLUSTER)
        clock = FakeClock(wall=time.time())
        queue: asyncio.Queue[Tracked] = asyncio.Queue()
        intake = Intake(settings, create_metrics(), queue, clock)
        write_file(inbox / "d" / "back.csv", b"y")
        intake.handle_events([RawEvent("created", str(inbox / "d" / "back.csv"), "", False)])
        os.unlink(inbox / "d" / "back.csv")
        clock.advance(5)
        await intake.check_due()
        assert intake.tracked == {} and queue.empty()
        write_file(inbox / "d" / "back.csv", b"y", age=60)
        assert await intake.scan() == 1
        assert queue.get_nowait().rel == "d/back.csv"

    asyncio.run(scenario())


# ---- ESTALE ----------------------------------------------------------------------------------------


def test_estale_is_retried_a_few_times_and_then_reported_as_a_stale_handle() -> None:
    for failures in range(ESTALE_TRIES):
        call, calls = _flaky(lambda: "done", failures)
        assert retry_stale(call) == "done" and len(calls) == failures + 1
    call, calls = _flaky(lambda: "done", ESTALE_TRIES)
    with pytest.raises(StaleHandle) as stale:
        retry_stale(call)
    assert stale.value.errno == errno.ESTALE and isinstance(stale.value, OSError)
    assert len(calls) == ESTALE_TRIES, "bounded: no endless retrying"
    for other in (errno.ENOENT, errno.EACCES, errno.EIO):
        call, calls = _flaky(lambda: "done", 1, other)
        with pytest.raises(OSError) as raised:
            retry_stale(call)
        assert raised.value.errno == other and not isinstance(raised.value, StaleHandle)
        assert len(calls) == 1, "only ESTALE is retried"


def test_a_claim_retries_estale_and_leaves_the_file_for_later_when_it_lasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    root = claims_root(inbox, "r1")
    write_file(inbox / "a" / "x.csv", b"data")
    write_file(inbox / "a" / "y.csv", b"more")
    (root / "a").mkdir(parents=True)  # a rename into a missing claims folder is tried again after making it
    real_rename = os.rename
    flaky, calls = _flaky(real_rename, ESTALE_TRIES - 1)
    monkeypatch.setattr(os, "rename", flaky)
    assert claim(inbox, root, "a/x.csv"), "ESTALE then success: claimed"
    assert len(calls) == ESTALE_TRIES and (root / "a" / "x.csv").read_bytes() == b"data"
    lasting, _ = _flaky(real_rename, 1000)
    monkeypatch.setattr(os, "rename", lasting)
    assert not claim(inbox, root, "a/y.csv"), "ESTALE on every try: not now"
    assert (inbox / "a" / "y.csv").read_bytes() == b"more", "left in the inbox for a later scan"
    monkeypatch.setattr(os, "rename", real_rename)
    assert claim(inbox, root, "a/y.csv")


def test_a_delivery_whose_source_answers_estale_is_left_for_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    outbox.mkdir()
    write_file(inbox / "s" / "f.bin", b"payload")
    real_open = transfer.open_beneath
    lasting, calls = _flaky(real_open, 1000)
    monkeypatch.setattr(transfer, "open_beneath", lasting)
    result = deliver(inbox / "s" / "f.bin", "s/f.bin", outbox)
    assert result.outcome is TransferOutcome.VANISHED and "ESTALE" in result.reason
    assert len(calls) == ESTALE_TRIES and (inbox / "s" / "f.bin").exists() and not (outbox / "s").exists()
    flaky, _ = _flaky(real_open, ESTALE_TRIES - 1)
    monkeypatch.setattr(transfer, "open_beneath", flaky)
    assert deliver(inbox / "s" / "f.bin", "s/f.bin", outbox).outcome is TransferOutcome.DELIVERED
    assert (outbox / "s" / "f.bin").read_bytes() == b"payload" and not (inbox / "s" / "f.bin").exists()


# ---- settle by open + fstat ------------------------------------------------------------------------


def test_open_fstat_looks_through_an_open_and_never_opens_what_is_not_a_regular_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f.bin", b"12345")
    st = open_fstat(str(path))
    assert (st.st_size, st.st_ino) == (5, path.stat().st_ino)
    (tmp_path / "link").symlink_to(path)
    assert os.path.islink(tmp_path / "link") and open_fstat(str(tmp_path / "link")).st_ino != st.st_ino
    os.mkfifo(tmp_path / "fifo")
    assert open_fstat(str(tmp_path / "fifo")).st_size == 0  # not opened: no writer needed, no block
    assert settle_stat(make_settings(tmp_path)) is os.lstat  # a local inbox, one replica: lstat is exact
    assert settle_stat(make_settings(tmp_path, **CLUSTER)) is open_fstat


def test_in_cluster_mode_the_settle_check_looks_through_open_and_fstat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked: list[str] = []
    real = netfs.open_fstat

    def spy(path: str) -> os.stat_result:
        looked.append(path)
        return real(path)

    monkeypatch.setattr(netfs, "open_fstat", spy)

    async def scenario() -> None:
        settings = make_settings(tmp_path, settle_seconds="5", **CLUSTER)
        clock = FakeClock(wall=time.time())
        queue: asyncio.Queue[Tracked] = asyncio.Queue()
        intake = Intake(settings, create_metrics(), queue, clock)
        path = write_file(settings.inbox / "slow.csv", b"a,b\n")
        os.utime(path, (clock.time(), clock.time()))
        intake.handle_events([RawEvent("created", str(path), "", False)])
        clock.advance(5)
        await intake.check_due()
        assert looked == [str(path)]
        assert queue.get_nowait().rel == "slow.csv"

    asyncio.run(scenario())
