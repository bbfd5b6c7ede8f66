"""Which files does a local process hold open for writing? (Linux /proc; blocking)

inotify close events usually answer this, but an event can be lost (queue overflow) and the polling
observer has none; before a file is taken on the strength of its quiet time, the truth is checked
here. Only processes visible in our PID namespace can be seen: a writer in another container that
shares the volume is covered by the settle time alone (documented in docs/guarantees.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

FileId = tuple[int, int]  # (st_dev, st_ino)


def _open_files(proc: str) -> Iterator[tuple[int, FileId, str]]:
    """(pid, file id, its fdinfo path) of every file descriptor we may look at."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return
    # Our own process is included on purpose: it only ever opens inbox files read-only.
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            yield int(pid), (st.st_dev, st.st_ino), f"{proc}/{pid}/fdinfo/{fd}"


def open_for_writing(wanted: Iterable[FileId], proc: str = "/proc") -> set[FileId]:
    """Return the members of `wanted` that some process has open with write access."""
    targets = set(wanted)
    if not targets:
        return set()
    return {key for _, key, fdinfo in _open_files(proc) if key in targets and _writable(fdinfo)}


def _writable(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
                    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError):
        return False
    return False


def writers_of(wanted: FileId, proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, program) of each process that holds the file `wanted` open for writing (for GET /files)."""
    pids = sorted({pid for pid, key, fdinfo in _open_files(proc) if key == wanted and _writable(fdinfo)})
    return [(pid, _program(f"{proc}/{pid}/comm")) for pid in pids]


def _program(comm: str) -> str:
    try:
        with open(comm, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"
