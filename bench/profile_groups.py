"""Group a py-spy profile of ``watcher run`` into the parts of a delivery (what bounds issue 16's misses).

Record a profile of the service while a workload runs, keeping only samples that hold the GIL (the
Python work, which one core serialises), then group it::

    py-spy record --threads --gil --nonblocking -r 200 -f raw -o /tmp/watcher.txt -- python -m watcher run
    python -m bench.profile_groups /tmp/watcher.txt

Each sample goes to the first group whose marker its stack contains; start-up (imports, the app, the
job store) is counted apart, and the shares of the rest are given out of the per-file work.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

STARTUP = ("_find_and_load", "create_app", "JobRuntime.open", "DeliveryRecord.open")
GROUPS = (
    ("record: rows and their insert", ("BatchRecorder.write", "DeliveryRecord.write", "GroupCommit")),
    ("log line per file (structlog, orjson, write)", ("structlog", "LineWriter")),
    ("metrics", ("prometheus_client",)),
    ("transfer: open, link, check, unlink, flush", ("deliver_batch",)),
    ("inotify read and parse", ("InotifyReader",)),
    ("intake: events, tracking, queue", ("Intake.",)),
    ("walk of the inbox (start-up scan)", ("rescan.py",)),
    ("workers: batches, outcomes", ("WorkerPool",)),
    ("event loop and thread hand-offs", ("",)),
)


def group(path: Path) -> tuple[int, int, collections.Counter[str]]:
    """(samples, start-up samples, per-file samples by group) of a py-spy ``-f raw`` file."""
    total = startup = 0
    groups: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        if any(marker in stack for marker in STARTUP):
            startup += n
            continue
        for name, markers in GROUPS:
            if any(marker in stack for marker in markers):
                groups[name] += n
                break
    return total, startup, groups


def main() -> None:
    """Print the groups of one profile as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="a py-spy record -f raw output")
    total, startup, groups = group(parser.parse_args().profile)
    work = sum(groups.values()) or 1
    lines = [f"samples {total}, start-up {startup} ({100 * startup / max(total, 1):.0f} %), per-file work {work}", ""]
    lines += ["| part | share of the per-file work |", "|---|---|"]
    lines += [f"| {name} | {100 * n / work:.0f} % |" for name, n in groups.most_common()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
