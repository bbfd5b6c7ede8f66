"""Hostile files: symlinks (also swapped in for a file between discovery and open), fifos, sockets,
device nodes, odd names, deep trees, zero-byte files, and a file truncated while it is copied.
Symlinks are never followed (their targets' bytes never reach the outbox or the failed dir),
special files are skipped without blocking a worker, and nothing is ever delivered short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.support import MiB, require_root, secret_in, seed_from_env, shm_dir, temp_files
from tests.support.fs import count_files, tree
from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until
from watcher.config import Settings

SECRET = b"TOP-SECRET-" + os.urandom(16).hex().encode()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@contextlib.contextmanager
def outbox_on(fs: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings overrides putting the outbox on the same filesystem as the inbox, or on /dev/shm."""
    if fs == "same":
        yield {}
    else:
        with shm_dir("hostile") as path:
            yield {"outbox": str(path)}


def secrets(tmp_path: Path) -> tuple[Path, Path]:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    folder = tmp_path / "secretdir"
    folder.mkdir()
    (folder / "inner.txt").write_bytes(SECRET)
    return secret, folder


def assert_no_secret(settings: Settings) -> None:
    hits = secret_in([settings.outbox, settings.failed_path], SECRET)
    assert not hits, f"a symlink target's bytes were delivered: {hits}"


@pytest.mark.parametrize("fs", ["same", "other"])
def test_symlink_swapped_in_between_discovery_and_open(tmp_path: Path, fs: str) -> None:
    """Race it: files keep being replaced by symlinks to a secret while the service picks them up."""
    seed = seed_from_env()
    secret, secret_dir = secrets(tmp_path)
    rounds = 300
    with outbox_on(fs, tmp_path) as extra:
        settings = make_settings(tmp_path, settle_seconds="0.05", **extra)

        async def main() -> None:
            async with running(settings) as service:

                def race() -> None:
                    for k in range(rounds):
                        victim = settings.inbox / "race" / f"v{k % 7}.bin"
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(victim)  # never write through the symlink of the last round
                        write(victim, os.urandom(64 * 1024 + k))  # closed: proven complete at once
                        link = settings.inbox / "race" / f".link{k}"
                        os.symlink(secret if k % 3 else secret_dir, link)
                        os.replace(link, victim)  # the name now is a symlink to outside
                        if k % 25 == 0:  # and a folder swapped for a symlink to a folder outside
                            sub = settings.inbox / "race" / "sub"
                            if os.path.islink(sub):
                                os.unlink(sub)
                            write(sub / "x.bin", b"x")
                            link_dir = settings.inbox / "race" / ".sublink"
                            os.symlink(secret_dir, link_dir)
                            with contextlib.suppress(OSError):
                                os.rename(link_dir, sub)
                            if os.path.lexists(link_dir):
                                os.unlink(link_dir)

                await asyncio.to_thread(race)
                await service.rescan()
                await await_until(lambda: not service.intake.tracked, 20, "nothing pending")
                await service.rescan()
                await await_until(lambda: not service.intake.tracked, 20, "nothing pending")
                assert metric_value(service, "watcher_files_failed_total") == 0

        asyncio.run(main())
        assert_no_secret(settings)
        assert secret.read_bytes() == SECRET and (secret_dir / "inner.txt").read_bytes() == SECRET
        assert count_files(settings.failed_path) == 0
        assert not temp_files(settings.outbox), f"seed={seed}"


def test_symlinks_to_outside_are_never_followed(tmp_path: Path) -> None:
    secret, secret_dir = secrets(tmp_path)
    settings = make_settings(tmp_path)
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "pre-link.txt").symlink_to(secret)  # found by the start-up scan
    (settings.inbox / "pre-dir").symlink_to(secret_dir)

    async def main() -> None:
        async with running(settings) as service:
            (settings.inbox / "link.txt").symlink_to(secret)  # seen by events
            (settings.inbox / "dirlink").symlink_to(secret_dir)
            (settings.inbox / "nested").mkdir()
            (settings.inbox / "nested" / "rel-link").symlink_to("../../secret.txt")
            write(settings.inbox / "real.txt", b"ok")
            await await_until(lambda: (settings.outbox / "real.txt").exists(), 10, "regular file")
            await service.rescan()
            await await_until(lambda: not service.intake.tracked, 10, "nothing pending")

    asyncio.run(main())
    assert_no_secret(settings)
    assert sorted(tree(settings.outbox)) == ["real.txt"]
    for name in ("pre-link.txt", "pre-dir", "link.txt", "dirlink", "nested/rel-link"):
        assert os.path.islink(settings.inbox / name), f"{name} was touched"


def test_special_files_are_skipped_and_never_block_a_worker(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers="1", settle_seconds="0.05")
    inbox = settings.inbox
    inbox.mkdir(parents=True)
    os.mkfifo(inbox / "fifo-before")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(inbox / "sock-before"))
    devices = os.geteuid() == 0
    if devices:  # a char device that never ends (like /dev/zero) and one that is empty (like /dev/null)
        os.mknod(inbox / "zero-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        os.mknod(inbox / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))

    async def main() -> None:
        async with running(settings) as service:
            os.mkfifo(inbox / "fifo-after")
            sock2 = socket.socket(socket.AF_UNIX)
            sock2.bind(str(inbox / "sock-after"))
            try:
                for i in range(30):
                    write(inbox / f"f{i:02d}.txt", f"file {i}".encode())
                await await_until(lambda: len(tree(settings.outbox)) == 30, 15, "regular files past the specials")
                await service.rescan()
                await service.rescan()
                await await_until(lambda: not service.intake.tracked, 10, "nothing pending")
                assert metric_value(service, "watcher_files_failed_total") == 0
            finally:
                sock2.close()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    assert sorted(os.listdir(settings.outbox)) == [f"f{i:02d}.txt" for i in range(30)]
    left = sorted(os.listdir(inbox))
    expected_left = ["fifo-after", "fifo-before", "sock-after", "sock-before"]
    if devices:
        expected_left += ["null-dev", "zero-dev"]
    assert left == sorted(expected_left)
    assert count_files(settings.failed_path) == 0
    if not devices:
        require_root("mknod character devices (the rest of the test passed)")


def test_odd_names_deep_trees_and_empty_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    deep = "/".join(f"lvl{i:02d}" for i in range(60))
    files = {
        "new\nline.txt": b"newline",
        "-leading-dash": b"dash",
        "--": b"double dash",
        "caf\u00e9.txt": b"NFC",
        "cafe\u0301.txt": b"NFD",
        os.fsdecode(b"latin1-\xe9t\xe9.bin"): b"not utf-8",
        os.fsdecode(b"\xff\xfe-raw-bytes"): b"raw bytes",
        "x" * 251 + ".bin": b"255 bytes",
        "\u00e9" * 126 + "x.b": b"255 bytes of 2-byte chars",
        "tab\tand space .txt": b"tab",
        "empty.bin": b"",
        f"{deep}/bottom.txt": b"60 levels down",
        f"{deep}/empty": b"",
        "dir with\nnewline/inner.txt": b"inner",
    }

    async def main() -> None:
        async with running(settings) as service:
            for rel, data in files.items():
                write(settings.inbox / rel, data)
            await await_until(lambda: count_files(settings.inbox) == 0, 20, "odd names delivered")
            await await_until(lambda: not service.intake.tracked, 10, "nothing pending")

    asyncio.run(main())
    assert tree(settings.outbox) == files
    assert count_files(settings.failed_path) == 0


def make_sparse(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.write(b"A" * MiB)
        handle.truncate(size)


def test_file_truncated_mid_copy_is_retried_never_delivered_short(tmp_path: Path) -> None:
    """A big file is copied to another filesystem; its writer truncates and rewrites it mid-copy.
    The copy must notice and start over: the outbox ends with the new content, never a prefix.
    """
    with shm_dir("trunc") as outbox:
        settings = make_settings(tmp_path, outbox=str(outbox), settle_seconds="0.2")
        staging = tmp_path / "staging"
        staging.mkdir()
        new_content = b"C" * (MiB + 17)

        async def main() -> int:
            async with running(settings) as service:
                hits = 0
                for attempt in range(3):
                    rel = f"big{attempt}.bin"
                    make_sparse(staging / rel, 512 * MiB)
                    os.rename(staging / rel, settings.inbox / rel)  # proven complete: the copy starts
                    await await_until(lambda: temp_files(outbox), 20, "copy in flight")
                    hit = await asyncio.to_thread(rewrite, settings.inbox / rel, new_content)
                    hits += hit

                    def gone(r: str = rel) -> bool:
                        return not os.path.lexists(settings.inbox / r)

                    await await_until(gone, 30, "delivered")
                    got = (outbox / rel).read_bytes() if hit else b""
                    if hit:
                        assert got == new_content, f"delivered {len(got)} bytes, not the rewritten file"
                    if hits >= 1:
                        break
                assert metric_value(service, "watcher_files_failed_total") == 0
                return hits

        hits = asyncio.run(main())
        assert hits >= 1, "never managed to truncate the file while it was being copied"
        assert not temp_files(outbox) and count_files(settings.failed_path) == 0


def rewrite(path: Path, data: bytes) -> bool:
    """Truncate `path` and write `data` into the same inode; True when the inode was still the inbox file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
        return os.fstat(fd).st_nlink > 0
    finally:
        os.close(fd)
