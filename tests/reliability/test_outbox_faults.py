"""Outbox faults that are not a file's fault: a full disk, and an outbox that is a plain file,
immutable, read-only or gone. Intake pauses, /health/ready answers 503 naming the reason, no file is
quarantined or truncated, and delivery resumes by itself when the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.support import (
    Expect,
    KiB,
    MiB,
    assert_exactly_once,
    chattr_works,
    check_detail,
    file_digest,
    immutable,
    read_only_bind,
    require_root,
    temp_files,
    tmpfs,
)
from tests.support.fs import count_files, regular_files
from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until
from watcher.config import Settings
from watcher.pipeline.transfer import TEMP_PREFIX

FILLER = "zz-filler.bin"


def put(settings: Settings, rel: str, data: bytes, expected: dict[str, Expect]) -> None:
    path = settings.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    expected[rel] = Expect(len(data), hashlib.sha256(data).hexdigest())
    path.write_bytes(data)


def fill_to_the_brim(path: Path) -> int:
    """Write `path` until the filesystem says ENOSPC; return the bytes written."""
    written = 0
    chunk = b"\xff" * (64 * KiB)
    with path.open("wb", buffering=0) as handle:
        for size in (len(chunk), 4 * KiB, 512):
            while True:
                try:
                    written += handle.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return written


def no_partial(outbox: Path, expected: dict[str, Expect], ignore: set[str]) -> None:
    """Every file under a final name in the outbox is complete and correct."""
    for path in regular_files(outbox):
        rel = str(path.relative_to(outbox))
        if rel in ignore or path.name.startswith(TEMP_PREFIX):
            continue
        assert file_digest(path) == expected[rel], f"truncated or wrong: {rel}"


async def get_ready(client: httpx.AsyncClient, settings: Settings) -> tuple[int, dict[str, object]]:
    response = await client.get(f"http://127.0.0.1:{settings.http_port}/health/ready")
    return response.status_code, response.json()


# ---- full disk -------------------------------------------------------------------------------


def full_disk(tmp_path: Path, rounds: int, files_per_round: int) -> None:
    settings = make_settings(tmp_path, workers="4")
    expected: dict[str, Expect] = {}
    with tmpfs(settings.outbox, "8m"):

        async def main() -> None:
            async with running(settings) as service, httpx.AsyncClient(timeout=10) as client:
                for r in range(rounds):
                    for i in range(files_per_round // 2):
                        await asyncio.to_thread(put, settings, f"r{r}/a{i:03d}.bin", os.urandom(i * 997), expected)
                    await await_until(lambda: count_files(settings.outbox) >= len(expected), 30, "first half")
                    await asyncio.to_thread(fill_to_the_brim, settings.outbox / FILLER)
                    for i in range(files_per_round // 2):  # the rest of the burst meets a full disk
                        await asyncio.to_thread(put, settings, f"r{r}/b{i:03d}.bin", os.urandom(20 * KiB + i), expected)
                    await await_until(lambda: not service.gate.is_open, 30, "intake paused")
                    status, body = await get_ready(client, settings)
                    assert status == 503 and body["status"] == "fail"
                    details = check_detail(body, "outbox") + " " + check_detail(body, "delivery")
                    assert "space" in details.lower(), details
                    assert "paused" in check_detail(body, "delivery")
                    assert metric_value(service, "watcher_delivery_paused") == 1
                    # Nothing quarantined, nothing truncated; the files wait in the inbox.
                    assert count_files(settings.failed_path) == 0
                    assert metric_value(service, "watcher_files_failed_total") == 0
                    no_partial(settings.outbox, expected, {FILLER})
                    assert count_files(settings.inbox) > 0
                    (settings.outbox / FILLER).unlink()  # free the space: delivery resumes by itself
                    await await_until(lambda: count_files(settings.inbox) == 0, 60, "delivery resumed")
                    await await_until(lambda: service.gate.is_open, 10, "gate open")
                    assert (await get_ready(client, settings))[0] == 200
                    # the consumer takes this round's files away, so the next round fits the 8 MiB again
                    assert_exactly_once(settings.outbox, expected, seed=r)
                    await asyncio.to_thread(shutil.rmtree, settings.outbox / f"r{r}")
                    expected.clear()
                assert metric_value(service, "watcher_files_failed_total") == 0

        asyncio.run(main())
        assert not temp_files(settings.outbox, settings.inbox, settings.failed_path)
        assert count_files(settings.failed_path) == 0


def test_full_disk_pauses_and_resumes(tmp_path: Path) -> None:
    full_disk(tmp_path, rounds=1, files_per_round=80)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_full_disk_soak(tmp_path: Path) -> None:
    full_disk(tmp_path, rounds=10, files_per_round=160)


# ---- unusable outbox -------------------------------------------------------------------------


@contextlib.contextmanager
def outbox_fault(kind: str, outbox: Path) -> Iterator[None]:
    """Apply one fault to the outbox for the duration of the block, and undo it afterwards."""
    if kind in ("plain_file", "removed"):  # moved away (not deleted: what was delivered stays)
        saved = outbox.with_name(outbox.name + ".saved")
        os.rename(outbox, saved)
        if kind == "plain_file":
            outbox.write_bytes(b"not a folder")
        try:
            yield
        finally:
            if kind == "plain_file":
                outbox.unlink()
            os.rename(saved, outbox)
    elif kind == "immutable":
        require_root("chattr +i")
        if chattr_works(outbox.parent):
            with immutable(outbox):
                yield
        else:  # tmpfs and friends: a read-only bind mount says the same thing
            with read_only_bind(outbox):
                yield
    elif kind == "read_only_bind":
        with read_only_bind(outbox):
            yield
    else:
        raise AssertionError(kind)


REASONS = {
    "plain_file": "not a directory",
    "removed": "no such file",
    "immutable": "not writable",
    "read_only_bind": "read-only",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_unusable_outbox_pauses_and_recovers(tmp_path: Path, kind: str) -> None:
    settings = make_settings(tmp_path)
    expected: dict[str, Expect] = {}

    async def main() -> None:
        async with running(settings) as service, httpx.AsyncClient(timeout=10) as client:
            for i in range(10):
                put(settings, f"before/f{i}.bin", os.urandom(i * 100), expected)
            await await_until(lambda: count_files(settings.inbox) == 0, 15, "first files delivered")
            assert (await get_ready(client, settings))[0] == 200
            with outbox_fault(kind, settings.outbox):
                for i in range(30):
                    put(settings, f"g{i:02d}.bin", os.urandom(3000 + i), expected)
                await await_until(lambda: not service.gate.is_open, 15, "intake paused")
                status, body = await get_ready(client, settings)
                assert status == 503, body
                details = (check_detail(body, "outbox") + " " + check_detail(body, "delivery")).lower()
                assert REASONS[kind] in details, details
                assert count_files(settings.failed_path) == 0, "a file was quarantined for the outbox's fault"
                assert count_files(settings.inbox) > 0
            await await_until(lambda: count_files(settings.inbox) == 0, 30, "delivery resumed")
            await await_until(lambda: service.gate.is_open, 10, "gate open")
            assert (await get_ready(client, settings))[0] == 200
            assert metric_value(service, "watcher_files_failed_total") == 0

    try:
        asyncio.run(main())
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["chattr", "-i", str(settings.outbox)], capture_output=True, check=False)
    assert_exactly_once(settings.outbox, expected, seed=0)
    assert count_files(settings.failed_path) == 0
    assert not temp_files(settings.outbox, settings.inbox)


def test_outbox_on_a_bind_mount_of_the_same_filesystem(tmp_path: Path) -> None:
    """Kubernetes subPath mounts of one volume: same st_dev, different mounts, so link() says EXDEV.
    Files must still be delivered (by copy), never retried into quarantine.
    """
    require_root("bind-mount the outbox")
    settings = make_settings(tmp_path, max_attempts="2")
    real = tmp_path / "real-outbox"
    real.mkdir()
    settings.outbox.mkdir()
    assert subprocess.run(["mount", "--bind", str(real), str(settings.outbox)], check=False).returncode == 0
    expected: dict[str, Expect] = {}
    try:

        async def main() -> None:
            async with running(settings):
                for i in range(5):
                    put(settings, f"f{i}.bin", os.urandom(MiB // 8 + i), expected)
                await await_until(lambda: count_files(settings.inbox) == 0, 20, "inbox drained")
                assert count_files(settings.failed_path) == 0, "files quarantined on EXDEV"

        asyncio.run(main())
        assert_exactly_once(settings.outbox, expected, seed=0)
    finally:
        subprocess.run(["umount", "-l", str(settings.outbox)], check=False)
