"""Below the outbox root and the failed-dir root nothing is followed (DESIGN, delivery semantics 10).

A symlink where a folder is needed is never entered (and left as it is); a non-folder there is never
replaced. Either fails that one file, on the same-filesystem (link) path and the cross-filesystem
(copy, then link) path alike: it is retried, then quarantined, and delivery of other files never
pauses. Real files and real syscalls; the other filesystem is /dev/shm (tmpfs).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.reliability.support import MiB, shm_dir, temp_files
from tests.support.fs import tree
from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until, wait_until
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.pipeline.quarantine import SIDECAR_SUFFIX, move_to_failed
from watcher.pipeline.transfer import TransferOutcome, UnsafeTargetPath, deliver, deliver_batch, is_temp_name

DATA = b"payload that must not leave the outbox\n"
IN_THE_WAY = b"a plain file where a folder is needed\n"
ERRNO = {"symlink": errno.ELOOP, "file": errno.ENOTDIR}
SAYS = {"symlink": "is a symlink: not followed", "file": "is not a folder: not replaced"}
# The gauge behind readiness "intake"/"delivery": renamed once; whichever name exists must stay 0.
PAUSED_GAUGES = ("watcher_delivery_paused", "watcher_intake_paused")


@pytest.fixture(params=["same_fs", "other_fs"])
def target_base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Where the outbox (or failed dir) and the outside folder go: beside the inbox, or on tmpfs."""
    if request.param == "same_fs":
        base = tmp_path / "target"
        base.mkdir()
        yield base
        return
    with shm_dir("links") as base:
        if os.stat(base).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the filesystem of tmp_path: the copy path cannot be forced")
        yield base


def put(path: Path, data: bytes = DATA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def blocked_root(base: Path, name: str, kind: str) -> tuple[Path, Path]:
    """A root `base/name` whose entry ``a`` is a symlink to `base/outside-<name>`, or a plain file."""
    root, outside = base / name, base / f"outside-{name}"
    root.mkdir()
    outside.mkdir()
    if kind == "symlink":
        (root / "a").symlink_to(outside)
    else:
        (root / "a").write_bytes(IN_THE_WAY)
    return root, outside


def assert_left_alone(root: Path, outside: Path, kind: str) -> None:
    """Nothing written through or over ``root/a``, no temporary file left behind."""
    assert os.listdir(outside) == [], "written outside the root, through the symlink"
    if kind == "symlink":
        assert (root / "a").is_symlink() and os.readlink(root / "a") == str(outside)
    else:
        assert (root / "a").read_bytes() == IN_THE_WAY
    assert not temp_files(root, outside)


# ---- the transfer on its own -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_symlink_or_file_on_the_way_fails_that_file(tmp_path: Path, target_base: Path, kind: str) -> None:
    src = put(tmp_path / "inbox" / "a" / "x.txt")
    outbox, outside = blocked_root(target_base, "outbox", kind)
    with pytest.raises(UnsafeTargetPath) as caught:
        deliver(src, "a/x.txt", outbox)
    assert caught.value.errno == ERRNO[kind] and SAYS[kind] in str(caught.value)
    assert_left_alone(outbox, outside, kind)
    assert src.read_bytes() == DATA, "the source must stay in the inbox"


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_one_blocked_folder_fails_only_its_files_in_a_batch(tmp_path: Path, target_base: Path, kind: str) -> None:
    inbox = tmp_path / "inbox"
    rels = ["a/x.txt", "b/y.txt", "a/deeper/z.txt", "top.txt", "b/w.txt"]
    for rel in rels:
        put(inbox / rel, rel.encode())
    inbox_dev = os.stat(inbox).st_dev
    outbox, outside = blocked_root(target_base, "outbox", kind)
    outcomes = deliver_batch([(inbox / rel, rel) for rel in rels], outbox)
    for rel, outcome in zip(rels, outcomes, strict=True):
        if rel.startswith("a/"):
            assert isinstance(outcome, UnsafeTargetPath), (rel, outcome)
            assert (inbox / rel).read_bytes() == rel.encode()
        else:
            assert not isinstance(outcome, Exception) and outcome.outcome is TransferOutcome.DELIVERED, (rel, outcome)
            assert (outbox / rel).read_bytes() == rel.encode() and not (inbox / rel).exists()
            # the path this test means to exercise: a hard link on one filesystem, a copy across
            assert ((outbox / rel).stat().st_dev == inbox_dev) == (target_base.is_relative_to(tmp_path))
    assert_left_alone(outbox, outside, kind)


def test_a_symlink_deeper_down_is_not_followed_either(tmp_path: Path, target_base: Path) -> None:
    src = put(tmp_path / "inbox" / "a" / "b" / "c" / "x.txt")
    outbox, outside = target_base / "outbox", target_base / "outside"
    (outbox / "a").mkdir(parents=True)
    outside.mkdir()
    (outbox / "a" / "b").symlink_to(outside)
    with pytest.raises(UnsafeTargetPath, match="'a/b'"):
        deliver(src, "a/b/c/x.txt", outbox)
    assert os.listdir(outside) == [] and (outbox / "a" / "b").is_symlink()
    assert src.exists()


def test_the_failed_dir_is_not_followed_either(tmp_path: Path, target_base: Path) -> None:
    src = put(tmp_path / "inbox" / "a" / "x.txt")
    failed, outside = blocked_root(target_base, "failed", "symlink")
    with pytest.raises(UnsafeTargetPath):
        move_to_failed(src, "a/x.txt", failed, fsync=True)
    assert_left_alone(failed, outside, "symlink")
    assert src.read_bytes() == DATA


def test_a_folder_swapped_for_a_symlink_after_the_walk_does_not_redirect_a_file(tmp_path: Path) -> None:
    """The walk is not enough: every later name is resolved in the folder opened then, not by path.

    In one batch the folders of both files are opened first; while the big file is copied into
    ``b``, folder ``a`` is swapped for a symlink, before the small file's copy into ``a`` begins.
    """
    size = 128 * MiB  # a copy long enough for the swap to land while it runs
    inbox = tmp_path / "inbox"
    put(inbox / "b" / "big.bin", b"\xab" * size)
    put(inbox / "a" / "small.txt")
    with shm_dir("swap") as base:
        outbox, outside = base / "outbox", base / "outside"
        for folder in (outbox / "a", outbox / "b", outside):
            folder.mkdir(parents=True)
        decoy = put(outside / "small.txt", IN_THE_WAY)  # a name taken there must not matter here
        in_time: list[bool] = []

        def swap_a_while_b_copies() -> None:
            def temp() -> list[str]:
                return [name for name in os.listdir(outbox / "b") if is_temp_name(name)]

            name = wait_until(temp, 30, "the big file's temporary file", interval=0.001)[0]
            os.rename(outbox / "a", outbox / "moved")
            (outbox / "a").symlink_to(outside)
            in_time.append((outbox / "b" / name).exists())  # still copying: `a` not staged yet

        swapper = threading.Thread(target=swap_a_while_b_copies)
        swapper.start()
        try:
            outcomes = deliver_batch([(inbox / rel, rel) for rel in ("b/big.bin", "a/small.txt")], outbox)
        finally:
            swapper.join(30)
        assert in_time == [True], "the copy ended before the swap: nothing was tested"
        assert [getattr(o, "outcome", o) for o in outcomes] == [TransferOutcome.DELIVERED] * 2
        assert os.listdir(outside) == ["small.txt"], "a file went through the symlink swapped in"
        assert decoy.read_bytes() == IN_THE_WAY
        assert os.listdir(outbox / "moved") == ["small.txt"]
        assert (outbox / "moved" / "small.txt").read_bytes() == DATA
        assert (outbox / "b" / "big.bin").stat().st_size == size
        assert os.readlink(outbox / "a") == str(outside)
        assert not temp_files(outbox, outside)


# ---- the service: retried, quarantined, and delivery never pauses -----------------------------


def delivered(outbox: Path, wanted: dict[str, bytes]) -> dict[str, bytes]:
    return {rel: data for rel, data in tree(outbox).items() if rel in wanted}


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def watch_gate(gate: OutboxGate, closed: list[float]) -> asyncio.Task[None]:
    """Note every moment the gate is seen closed (a closure lasts a probe interval: seconds)."""

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not gate.is_open:
                closed.append(loop.time())
            await asyncio.sleep(0.01)

    return asyncio.create_task(sample())


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_service_retries_then_quarantines_and_keeps_delivering(tmp_path: Path, target_base: Path, kind: str) -> None:
    outbox, outside = blocked_root(target_base, "outbox", kind)
    settings = make_settings(tmp_path, outbox=str(outbox), max_attempts="2")
    others = {"before.txt": b"before", "b/y.txt": b"sibling folder", "after.txt": b"after"}

    async def main() -> None:
        closed: list[float] = []
        async with running(settings) as service, httpx.AsyncClient(timeout=10) as client:
            sampler = watch_gate(service.gate, closed)
            try:
                put(settings.inbox / "before.txt", others["before.txt"])
                put(settings.inbox / "a" / "x.txt")
                put(settings.inbox / "b" / "y.txt", others["b/y.txt"])
                await await_until(lambda: metric_value(service, "watcher_files_failed_total") == 1, 20, "quarantine")
                put(settings.inbox / "after.txt", others["after.txt"])
                await await_until(lambda: delivered(outbox, others) == others, 15, "the other files delivered")
                status = (await client.get(f"http://127.0.0.1:{settings.http_port}/health/ready")).status_code
            finally:
                sampler.cancel()
            assert not closed, f"delivery paused for one file's blocked folder ({len(closed)} samples)"
            assert service.gate.is_open and status == 200
            assert all(metric_value(service, name) == 0 for name in PAUSED_GAUGES)
            assert metric_value(service, "watcher_files_retried_total") == 1
        report = json.loads((settings.failed_path / "a" / f"x.txt{SIDECAR_SUFFIX}").read_text())
        assert report["attempts"] == 2 and report["errno"] == ERRNO[kind], report
        assert SAYS[kind] in report["error"], report
        assert (settings.failed_path / "a" / "x.txt").read_bytes() == DATA
        assert not (settings.inbox / "a" / "x.txt").exists()
        assert_left_alone(outbox, outside, kind)

    asyncio.run(main())


def test_blocked_in_the_failed_dir_too_the_file_stays_in_the_inbox(tmp_path: Path) -> None:
    outbox, outside = blocked_root(tmp_path, "outbox", "symlink")
    failed, failed_outside = blocked_root(tmp_path, "failed", "symlink")
    settings = make_settings(tmp_path, outbox=str(outbox), failed_dir=str(failed), max_attempts="2")

    async def main() -> None:
        closed: list[float] = []
        with capture_logs() as logs:
            async with running(settings) as service:
                sampler = watch_gate(service.gate, closed)
                try:
                    put(settings.inbox / "a" / "x.txt")
                    await await_until(lambda: events(logs, "file.quarantine_failed"), 20, "the quarantine attempt")
                    await await_until(lambda: not service.intake.tracked, 10, "the file handed back")
                    put(settings.inbox / "after.txt", b"after")
                    await await_until(lambda: (outbox / "after.txt").exists(), 15, "the next file delivered")
                finally:
                    sampler.cancel()
                assert not closed, "delivery paused for one file's blocked folder"
                assert metric_value(service, "watcher_files_failed_total") == 0
        (event,) = events(logs, "file.quarantine_failed")
        assert event["path"] == "a/x.txt" and event["outcome"] == "left_in_inbox"
        assert "is a symlink: not followed" in event["error"], event
        assert (settings.inbox / "a" / "x.txt").read_bytes() == DATA
        assert_left_alone(outbox, outside, "symlink")
        assert_left_alone(failed, failed_outside, "symlink")

    asyncio.run(main())


def test_a_symlink_planted_at_the_sidecar_name_is_replaced_not_followed(tmp_path: Path) -> None:
    from watcher.pipeline.quarantine import FailureReport, write_sidecar

    failed = tmp_path / "failed"
    (failed / "a").mkdir(parents=True)
    (failed / "a" / "x.txt").write_bytes(b"quarantined")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must stay")
    (failed / "a" / f"x.txt{SIDECAR_SUFFIX}").symlink_to(outside)
    report = FailureReport("a/x.txt", 2, "boom", "OSError", 5, 0.0, 1.0)
    sidecar = write_sidecar(failed, failed / "a" / "x.txt", report)
    assert outside.read_bytes() == b"must stay"
    assert not sidecar.is_symlink() and json.loads(sidecar.read_text())["path"] == "a/x.txt"
    # A folder of the failed dir that is a symlink is not entered for the sidecar either.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (failed / "b").symlink_to(elsewhere)
    with pytest.raises(UnsafeTargetPath):
        write_sidecar(failed, failed / "b" / "y.txt", report)
    assert not list(elsewhere.iterdir())
