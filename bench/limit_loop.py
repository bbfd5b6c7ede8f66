"""Baseline "limit": the least work that moves a closed file from an inbox to an outbox.

``python -m bench.limit_loop INBOX OUTBOX`` watches INBOX (not recursive) with ctypes inotify for
``IN_CLOSE_WRITE | IN_MOVED_TO`` and, per event, renames the file into OUTBOX on the same filesystem or
``shutil.copyfile`` + unlink across filesystems. No bookkeeping, no fsync, no retries, no start-up scan: it
is the physical limit of the machine, not a service. It writes ``ready`` to stderr once the watch is
established and exits 0 on SIGTERM.
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


def run(inbox: str, outbox: str) -> None:
    """Move every file that is closed or renamed in ``inbox`` to ``outbox`` until SIGTERM."""
    same_fs = os.stat(inbox).st_dev == os.stat(outbox).st_dev
    fd = inotify_init()
    add_watch(fd, inbox, IN_CLOSE_WRITE | IN_MOVED_TO)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    src_dir, dst_dir = os.fsencode(inbox), os.fsencode(outbox)
    while True:
        for _wd, mask, name in parse_events(os.read(fd, READ_SIZE)):
            if not name or mask & IN_ISDIR:
                continue
            src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
            try:
                if same_fs:
                    os.rename(src, dst)
                else:
                    shutil.copyfile(src, dst)
                    os.unlink(src)
            except FileNotFoundError:
                continue  # a second event for a file that is already gone


def main(argv: list[str] | None = None) -> int:
    """Parse ``INBOX OUTBOX`` and run until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m bench.limit_loop INBOX OUTBOX\n")
        return 2
    signal.signal(signal.SIGTERM, _exit)
    run(args[0], args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
