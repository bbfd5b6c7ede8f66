"""The transfer on its own: real files, the real syscalls."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.pipeline.transfer import TransferOutcome, deliver, deliver_batch


def test_a_folder_swapped_for_a_symlink_is_never_followed(tmp_path: Path) -> None:
    inbox, outbox, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for d in (inbox, outbox, outside):
        d.mkdir()
    (outside / "secret.txt").write_bytes(b"SECRET")
    (inbox / "sub").symlink_to(outside)  # the event said "sub/secret.txt"
    result = deliver(inbox / "sub" / "secret.txt", "sub/secret.txt", outbox)
    assert result.outcome is TransferOutcome.SKIPPED
    assert not any(p.is_file() for p in outbox.rglob("*"))
    assert (outside / "secret.txt").read_bytes() == b"SECRET"


def test_batch_delivers_every_file_and_reports_each(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    (inbox / "d").mkdir(parents=True)
    outbox.mkdir()
    names = [f"d/f{i}.bin" for i in range(10)]
    for i, rel in enumerate(names):
        (inbox / rel).write_bytes(bytes([i]) * 1000)
    (inbox / "link").symlink_to(inbox / "d" / "f0.bin")
    items = [(inbox / rel, rel) for rel in [*names, "missing.bin", "link"]]
    outcomes = deliver_batch(items, outbox)
    kinds = [o.outcome if not isinstance(o, Exception) else o for o in outcomes]
    assert kinds == [TransferOutcome.DELIVERED] * 10 + [TransferOutcome.VANISHED, TransferOutcome.SKIPPED]
    for i, rel in enumerate(names):
        assert (outbox / rel).read_bytes() == bytes([i]) * 1000
        assert not (inbox / rel).exists()


def test_other_filesystem_keeps_mtime_and_mode(tmp_path: Path) -> None:
    shm = Path("/dev/shm") / f"watcher-transfer-{os.getpid()}"
    shm.mkdir()
    try:
        src = tmp_path / "in" / "a.sh"
        src.parent.mkdir()
        src.write_bytes(b"#!/bin/sh\n")
        os.chmod(src, 0o751)
        os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        result = deliver(src, "a.sh", shm)
        assert result.outcome is TransferOutcome.DELIVERED
        st = os.stat(shm / "a.sh")
        assert st.st_mtime_ns == 1_600_000_000_000_000_000 and (st.st_mode & 0o777) == 0o751
        assert not [n for n in os.listdir(shm) if n.startswith(".")]
    finally:
        for p in shm.iterdir():
            p.unlink()
        shm.rmdir()
