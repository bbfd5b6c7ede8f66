"""Integration: the real observer, real transfers and real files in tmp_path."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.fs import tree
from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until
from watcher.config import Settings


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def payload(i: int, size: int = 1000) -> bytes:
    return (f"{i:08d}".encode() * (size // 8 + 1))[:size]


def inbox_files(settings: Settings) -> list[str]:
    return sorted(tree(settings.inbox))


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_200_files_delivered_byte_identical(tmp_path: Path, observer: str) -> None:
    settings = make_settings(tmp_path, observer=observer)
    expected = {f"f{i:03d}.bin": payload(i, 100 + i * 37) for i in range(200)}

    async def main() -> None:
        async with running(settings) as service:
            for name, data in expected.items():
                write(settings.inbox / name, data)
            await await_until(lambda: len(tree(settings.outbox)) == 200, 30, "200 deliveries")
            await await_until(lambda: not inbox_files(settings), 10, "empty inbox")
            assert tree(settings.outbox) == expected
            # Files appear before the worker has accounted for them: wait for the counters too.
            await await_until(lambda: metric_value(service, "watcher_files_delivered_total") == 200, 10, "count")
            assert metric_value(service, "watcher_bytes_delivered_total") == sum(map(len, expected.values()))

    run(main())


def test_nested_paths_and_a_tree_moved_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    staging = tmp_path / "staging"
    for i in range(30):
        write(staging / "batch" / f"d{i % 3}" / "deeper" / f"x{i}.dat", payload(i))

    async def main() -> None:
        async with running(settings):
            write(settings.inbox / "a" / "b" / "c.txt", b"nested")
            await await_until(lambda: (settings.outbox / "a/b/c.txt").exists(), 10, "nested file")
            os.rename(staging / "batch", settings.inbox / "batch")  # a whole tree renamed in
            await await_until(lambda: len(tree(settings.outbox)) == 31, 15, "moved tree delivered")
            assert (settings.outbox / "a/b/c.txt").read_bytes() == b"nested"
            assert (settings.outbox / "batch/d1/deeper/x4.dat").read_bytes() == payload(4)
            await await_until(lambda: not inbox_files(settings), 10, "empty inbox")

    run(main())


def test_slow_writer_is_never_delivered_short(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settle_seconds="0.2")
    chunk = b"x" * 4096
    target = settings.inbox / "slow.bin"

    async def main() -> None:
        async with running(settings):
            with target.open("wb") as handle:
                for _ in range(10):
                    handle.write(chunk)
                    handle.flush()
                    await asyncio.sleep(0.35)  # the writer pauses longer than the settle time
                    assert not (settings.outbox / "slow.bin").exists(), "taken while still open for writing"
            await await_until(lambda: (settings.outbox / "slow.bin").exists(), 10, "slow file delivered")
            assert (settings.outbox / "slow.bin").read_bytes() == chunk * 10

    run(main())


def test_slow_writer_under_polling_observer(tmp_path: Path) -> None:
    # No close events at all: the open-for-writing check is what keeps the file from being taken.
    settings = make_settings(tmp_path, settle_seconds="0.2", observer="polling")
    target = settings.inbox / "slow.bin"

    async def main() -> None:
        async with running(settings):
            with target.open("wb") as handle:
                for _ in range(6):
                    handle.write(b"y" * 1000)
                    handle.flush()
                    await asyncio.sleep(0.5)
                    assert not (settings.outbox / "slow.bin").exists()
            await await_until(lambda: (settings.outbox / "slow.bin").exists(), 10, "delivered after close")
            assert (settings.outbox / "slow.bin").read_bytes() == b"y" * 6000

    run(main())


@pytest.mark.parametrize("policy", ["rename", "overwrite", "fail"])
def test_conflict_policies(tmp_path: Path, policy: str) -> None:
    settings = make_settings(tmp_path, on_conflict=policy)
    write(settings.outbox / "same.txt", b"same")
    write(settings.outbox / "report.csv", b"old")

    async def main() -> None:
        async with running(settings) as service:
            write(settings.inbox / "same.txt", b"same")
            await await_until(lambda: metric_value(service, "watcher_files_duplicate_total") == 1, 10, "duplicate")
            assert not (settings.inbox / "same.txt").exists()
            write(settings.inbox / "report.csv", b"new")
            handled = lambda: not (settings.inbox / "report.csv").exists() and not service.intake.tracked  # noqa: E731
            await await_until(handled, 10, "conflict handled")
            out = tree(settings.outbox)
            if policy == "rename":
                assert out["report.csv"] == b"old" and out["report (1).csv"] == b"new"
            elif policy == "overwrite":
                assert out["report.csv"] == b"new" and "report (1).csv" not in out
            else:
                assert out["report.csv"] == b"old"
                failed = tree(settings.failed_path)
                assert failed["report.csv"] == b"new" and "report.csv.error.json" in failed
                assert metric_value(service, "watcher_files_failed_total") == 1
            assert out["same.txt"] == b"same" and len([k for k in out if k.startswith("same")]) == 1

    run(main())


def test_symlink_to_a_secret_is_never_copied(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET")
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "s.txt").write_bytes(b"TOP-SECRET")

    async def main() -> None:
        async with running(settings) as service:
            settings.inbox.joinpath("link.txt").symlink_to(secret)
            settings.inbox.joinpath("linkdir").symlink_to(tmp_path / "secretdir")
            write(settings.inbox / "after.txt", b"ok")
            await await_until(lambda: (settings.outbox / "after.txt").exists(), 10, "regular file")
            await service.rescan()
            await service.rescan()
            for root in (settings.outbox, settings.failed_path):
                for data in tree(root).values():
                    assert b"TOP-SECRET" not in data
            assert not os.path.lexists(settings.outbox / "link.txt")
            assert secret.read_bytes() == b"TOP-SECRET"

    run(main())


def test_fifo_and_socket_do_not_block_other_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers="1", settle_seconds="0.1")
    settings.inbox.mkdir(parents=True)
    os.mkfifo(settings.inbox / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(settings.inbox / "sock"))

    async def main() -> None:
        async with running(settings) as service:
            for i in range(20):
                write(settings.inbox / f"f{i}.txt", payload(i))
            await await_until(lambda: len(tree(settings.outbox)) == 20, 10, "files past the fifo")
            await service.rescan()
            assert stat.S_ISFIFO(os.lstat(settings.inbox / "pipe").st_mode)
            assert not os.path.lexists(settings.outbox / "pipe")

    try:
        run(main())
    finally:
        sock.close()


def test_file_deleted_right_after_creation_is_not_an_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def main() -> None:
        async with running(settings) as service:
            for i in range(50):
                p = settings.inbox / f"gone{i}.txt"
                write(p, b"x")
                p.unlink()
            write(settings.inbox / "marker.txt", b"m")
            await await_until(lambda: (settings.outbox / "marker.txt").exists(), 10, "marker")
            await await_until(lambda: not service.intake.tracked, 10, "nothing pending")
            assert not tree(settings.failed_path)
            assert metric_value(service, "watcher_files_failed_total") == 0

    run(main())


def test_outbox_replaced_by_a_file_then_recovered(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def main() -> None:
        async with running(settings) as service:
            url = f"http://127.0.0.1:{settings.http_port}/health/ready"
            async with httpx.AsyncClient() as client:
                assert (await client.get(url)).status_code == 200
                shutil.rmtree(settings.outbox)
                settings.outbox.write_bytes(b"not a folder")
                write(settings.inbox / "waiting.txt", b"patience")
                await await_until(lambda: not service.gate.is_open, 10, "intake paused")
                response = await client.get(url)
                assert response.status_code == 503
                body = response.json()
                assert body["status"] == "fail"
                assert "not a directory" in body["checks"]["outbox"]["detail"]
                assert "paused" in body["checks"]["delivery"]["detail"]
                assert metric_value(service, "watcher_delivery_paused") == 1
                settings.outbox.unlink()
                settings.outbox.mkdir()
                await await_until(lambda: (settings.outbox / "waiting.txt").exists(), 15, "delivery resumed")
                assert (await client.get(url)).status_code == 200
            assert not tree(settings.failed_path)
            assert (settings.outbox / "waiting.txt").read_bytes() == b"patience"

    run(main())


def test_small_queue_burst_recovered_by_rescan(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue_size="16", rescan_interval="0.5", workers="2")
    n = 3000

    async def main() -> None:
        async with running(settings) as service:

            def burst() -> None:
                for i in range(n):
                    write(settings.inbox / f"b{i:05d}.txt", payload(i, 64))

            await asyncio.to_thread(burst)
            await await_until(lambda: len(os.listdir(settings.outbox)) == n, 90, f"{n} files delivered")
            dropped = metric_value(service, "watcher_events_dropped_total")
            by_rescan = metric_value(service, "watcher_files_discovered_total", {"source": "rescan"})
            by_event = metric_value(service, "watcher_files_discovered_total", {"source": "event"})
            await await_until(lambda: metric_value(service, "watcher_files_delivered_total") == n, 10, "count")
            assert dropped > 0, "a queue of 16 must overflow under a burst of 3000"
            assert by_rescan > 0
            assert by_event + by_rescan >= n
            assert metric_value(service, "watcher_files_delivered_total") == n
        assert not inbox_files(settings)

    run(main())


def test_oldest_pending_and_queue_gauges(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settle_seconds="30")

    async def main() -> None:
        async with running(settings) as service:
            with (settings.inbox / "growing.txt").open("wb") as handle:  # a writer that has not closed yet
                handle.write(b"partial")
                handle.flush()
                await await_until(lambda: "growing.txt" in service.intake.tracked, 10, "tracked")
                await await_until(lambda: metric_value(service, "watcher_oldest_pending_seconds") > 0.05, 10, "age")
                assert metric_value(service, "watcher_pending_files") == 1
                assert not (settings.outbox / "growing.txt").exists()

    run(main())


def test_interrupted_copy_leaves_source_and_no_temp(tmp_path: Path) -> None:
    from watcher.pipeline.transfer import TransferAborted, deliver

    src = tmp_path / "in" / "big.bin"
    write(src, os.urandom(1 << 20))
    other_fs = Path("/dev/shm") / f"watcher-test-{os.getpid()}"
    other_fs.mkdir()
    try:
        abort = threading.Event()
        abort.set()
        with pytest.raises(TransferAborted):
            deliver(src, "big.bin", other_fs, abort=abort)
        assert src.exists() and not os.listdir(other_fs)
    finally:
        shutil.rmtree(other_fs)


def test_any_name_the_filesystem_allows(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    names = [
        "new\nline.txt",
        "-leading-dash",
        "caf\u00e9.txt",  # NFC
        "cafe\u0301.txt",  # NFD twin
        os.fsdecode(b"latin1-\xe9t\xe9.bin"),  # not UTF-8
        "x" * 251 + ".bin",  # 255 bytes
        "spaces and 'quotes' \"too\".csv",
    ]

    async def main() -> None:
        async with running(settings):
            for i, name in enumerate(names):
                write(settings.inbox / name, payload(i))
            await await_until(lambda: len(os.listdir(settings.outbox)) == len(names), 15, "odd names delivered")
            for i, name in enumerate(names):
                assert (settings.outbox / name).read_bytes() == payload(i)
            await await_until(lambda: not os.listdir(settings.inbox), 10, "inbox empty")

    run(main())


def test_hard_link_to_a_file_outside_is_delivered_and_the_original_kept(tmp_path: Path) -> None:
    # Documented choice: a hard link is the same file, which its creator could read; it is delivered
    # like any other, and only the inbox name is removed (the outside name keeps its bytes).
    settings = make_settings(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"shared inode")

    async def main() -> None:
        async with running(settings):
            os.link(outside, settings.inbox / "linked.txt")
            await await_until(lambda: (settings.outbox / "linked.txt").exists(), 15, "delivered")
            # The source name goes after the link and the record: wait for it, not for the link alone.
            await await_until(lambda: not (settings.inbox / "linked.txt").exists(), 15, "the inbox name removed")
            assert outside.read_bytes() == b"shared inode"

    run(main())
