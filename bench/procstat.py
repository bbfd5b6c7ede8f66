"""Resource use of a subject, read from ``/proc``.

Every subject runs in its own session (``start_new_session=True``), so its processes are the live ones
whose session id is the subject's pid. CPU time sums ``utime + stime + cutime + cstime`` over them: the
children a shell loop has already reaped (``mv``) are in its ``cutime``/``cstime``, the live ones
(``inotifywait``, the loop's subshell) count themselves, and nothing is counted twice. Peak memory is the
sum of ``VmHWM`` over the same processes (for the Python subjects, that is one process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds and peak resident memory of a process tree at one moment."""

    cpu_s: float
    peak_rss_kib: int
    pids: int


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return raw[raw.rfind(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is ``sid``."""
    pids = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields[0] is the state, then ppid, pgrp, session
        if fields is not None and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """``utime + stime + cutime + cstime`` of one process, in seconds (0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after the state: utime is field 14 of stat(5), i.e. index 11 here
    return sum(int(v) for v in fields[11:15]) / _CLK_TCK


def peak_rss_kib(pid: int) -> int:
    """``VmHWM`` of one process in KiB (0 if it is gone)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def sample(sid: int) -> ProcSample:
    """CPU seconds and summed peak RSS of every live process of session ``sid``."""
    pids = session_pids(sid) or [sid]
    return ProcSample(
        cpu_s=sum(cpu_seconds(p) for p in pids),
        peak_rss_kib=sum(peak_rss_kib(p) for p in pids),
        pids=len(pids),
    )


def signal_state(pid: int) -> str:
    """The process state and signal masks of ``pid``, for a diagnosis when it ignores SIGTERM."""
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    keep = ("State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:")
    return ", ".join(" ".join(x.split()) for x in lines if x.startswith(keep))
