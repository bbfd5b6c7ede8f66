"""Baselines "limit" and "limit-durable": the least work that moves a closed file from an inbox to an outbox.

``python -m bench.limit_loop [--durable] INBOX OUTBOX`` watches INBOX (not recursive) with ctypes inotify
for ``IN_CLOSE_WRITE | IN_MOVED_TO``, writes ``ready`` to stderr once the watch is established, then moves
every regular file already in INBOX (one ``scandir``: the files of a backlog, which no event names) and
from then on each file an event names. It exits 0 on SIGTERM. No bookkeeping, no retries: it is the
physical limit of the machine, not a service.

Without ``--durable`` a file is moved by ``rename`` (same filesystem) or ``shutil.copyfile`` + ``unlink``
(another filesystem), and nothing is flushed.

With ``--durable`` the delivered file and its folder are flushed before the source goes, in the order the
service uses, so that the source leaving the inbox marks the delivery as durable: same filesystem,
``fsync`` of the file, ``link`` under its final name, ``fsync`` of the outbox folder, ``unlink`` of the
source; another filesystem, ``copyfile`` to a dot-name in the outbox, ``fsync`` of the copy, ``rename`` to
the final name, ``fsync`` of the outbox folder, ``unlink`` of the source.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from types import FrameType

from bench.inotify import (
    IN_CLOSE_WRITE,
    IN_ISDIR,
    IN_MOVED_TO,
    READ_SIZE,
    add_watch,
    inotify_init,
    parse_events,
)


def _exit(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _fsync_path(path: bytes, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Mover:
    """Moves one named file from the inbox to the outbox, durably or not (see the module docstring)."""

    def __init__(self, inbox: str, outbox: str, durable: bool) -> None:
        self.same_fs = os.stat(inbox).st_dev == os.stat(outbox).st_dev
        self.src_dir, self.dst_dir = os.fsencode(inbox), os.fsencode(outbox)
        self.durable = durable
        self.dst_fd = os.open(outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def move(self, name: bytes) -> None:
        """Deliver ``name``; a name that is already gone (a second event for it) is skipped."""
        src, dst = os.path.join(self.src_dir, name), os.path.join(self.dst_dir, name)
        try:
            if not self.durable:
                if self.same_fs:
                    os.rename(src, dst)
                else:
                    shutil.copyfile(src, dst)
                    os.unlink(src)
                return
            if self.same_fs:
                _fsync_path(src)
                os.link(src, dst)
            else:
                tmp = os.path.join(self.dst_dir, b"." + name + b".tmp")
                shutil.copyfile(src, tmp)
                _fsync_path(tmp, os.O_WRONLY)
                os.rename(tmp, dst)
            os.fsync(self.dst_fd)
            os.unlink(src)
        except FileNotFoundError:
            return

    def move_present(self) -> None:
        """Move every regular file already in the inbox (the start-up scan)."""
        with os.scandir(self.src_dir) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith(b"."):
                    self.move(entry.name)


def run(inbox: str, outbox: str, durable: bool = False) -> None:
    """Move every file that is in, closed in or renamed into ``inbox`` to ``outbox`` until SIGTERM."""
    mover = Mover(inbox, outbox, durable)
    fd = inotify_init()
    add_watch(fd, inbox, IN_CLOSE_WRITE | IN_MOVED_TO)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    mover.move_present()
    while True:
        for _wd, mask, name in parse_events(os.read(fd, READ_SIZE)):
            if name and not mask & IN_ISDIR:
                mover.move(name)


def main(argv: list[str] | None = None) -> int:
    """Parse ``[--durable] INBOX OUTBOX`` and run until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    durable = "--durable" in args
    args = [a for a in args if a != "--durable"]
    if len(args) != 2:
        sys.stderr.write("usage: python -m bench.limit_loop [--durable] INBOX OUTBOX\n")
        return 2
    signal.signal(signal.SIGTERM, _exit)
    run(args[0], args[1], durable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
