"""What a cluster's replicas spend per file when a writer sets the pace (issue 14's bound, measured).

Starts 1 and then 2 replicas (``bench.cluster.start``, one PostgreSQL as ``make bench`` makes it), writes
``--files`` files of 4 KiB into the shared inbox at ``--rate`` files per second (0: as fast as one
writer goes), waits until all are in the outbox, and prints one JSON line per run: files/s, the writer's
time and each replica's CPU seconds over the run. ``--only-r1`` writes only names whose hash gives them
to replica ``r1``: then ``r2``'s CPU is what a file of another replica costs a replica that hears its
events. ``--base DIR`` runs a second build of the service (a git worktree) interleaved with this one,
repetition by repetition, and the summary compares the medians of CPU per 1,000 files::

    python -m bench.paced_cluster --files 3000 --rate 1000 --reps 3
    python -m bench.paced_cluster --files 3000 --rate 1000 --only-r1
    git worktree add /tmp/base <commit> && python -m bench.paced_cluster --rate 1000 --reps 3 --base /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from bench import cluster, postgres, procstat
from bench.harness import WORK_ROOT
from bench.inotify import OutboxObserver
from bench.subjects import CLUSTER_1, CLUSTER_2, REPO, Dirs, Subject, free_port
from bench.workloads import write_file

FILE_SIZE = 4096
TIMEOUT_S = 120.0


def names(count: int, only_r1: bool) -> Iterator[str]:
    """``count`` file names; with `only_r1`, only those whose hash gives them to ``r1`` of ``r1, r2``."""
    made = 0
    for i in range(100 * count):
        name = f"paced-{i:06d}.bin"
        if only_r1 and zlib.crc32(name.encode()) % 2:
            continue
        yield name
        made += 1
        if made == count:
            return


def run_once(subject: Subject, root: Path, files: int, rate: float, only_r1: bool) -> dict[str, object]:
    """One run of `subject` on fresh folders under `root`; its figures."""
    top = Path(tempfile.mkdtemp(prefix="paced-", dir=root))
    dirs = Dirs(top, top / "inbox", top / "outbox", top / "state", top / "staging", top / "log")
    for folder in (dirs.inbox, dirs.outbox, dirs.state, dirs.staging):
        folder.mkdir()
    with OutboxObserver(dirs.outbox) as observer:  # inotify, not a listing per poll that would take CPU
        running = cluster.start(subject, dirs)
        try:
            running.wait_ready(60)
            batch = [(name, os.urandom(FILE_SIZE)) for name in names(files, only_r1)]
            before = {r.id: procstat.sample(r.running.pid).cpu_s for r in running.replicas}
            t0 = time.monotonic()
            for i, (name, data) in enumerate(batch):
                if rate:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the writer's pace, not a synchronisation
                write_file(dirs.inbox / name, data)
            written = time.monotonic() - t0
            missing = observer.wait_delivered({name: FILE_SIZE for name, _ in batch}, TIMEOUT_S)
            if missing:
                raise TimeoutError(f"{subject.name}: {len(missing)} files not delivered after {TIMEOUT_S:g} s")
            span = max(observer.delivered_at(name) or t0 for name, _ in batch) - t0  # to the last delivery
            cpu = {r.id: round(procstat.sample(r.running.pid).cpu_s - before[r.id], 3) for r in running.replicas}
        finally:
            running.stop()
    return {
        "subject": subject.name,
        "replicas": subject.replicas,
        "files_per_s": round(len(batch) / span),
        "writer_s": round(written, 3),
        "cpu_s": cpu,
        "cpu_per_1k_files_s": round(sum(cpu.values()) / len(batch) * 1000, 3),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line per run and a summary of the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0, help="files per second (0: as fast as possible)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--only-r1", action="store_true", help="only names that hash to replica r1")
    parser.add_argument("--base", type=Path, help="a second build of the service to compare with (its folder)")
    args = parser.parse_args()
    builds = {"this": REPO, **({"base": args.base.resolve()} if args.base else {})}
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="paced-cluster-", dir=WORK_ROOT))
    root.chmod(0o755)  # the PostgreSQL server runs as `postgres` when we are root
    per: dict[tuple[str, int], list[float]] = {}
    with postgres.server(root / "postgres", free_port()) as url:
        for _ in range(args.reps):
            for build, where in builds.items():
                for base in (CLUSTER_1, CLUSTER_2):
                    subject = replace(
                        base, name=f"{base.name} ({build})", root=where, env={"WATCHER_JOBSTORE_URL": url}
                    )
                    figures = run_once(subject, root, args.files, args.rate, args.only_r1)
                    print(json.dumps(figures), flush=True)
                    cpu_per_1k = figures["cpu_per_1k_files_s"]
                    assert isinstance(cpu_per_1k, float)
                    per.setdefault((build, subject.replicas), []).append(cpu_per_1k)
    for (build, replicas), values in sorted(per.items()):
        print(
            f"{build}: {replicas} replica(s): CPU per 1,000 files, median {statistics.median(values):.3f} s of {values}"
        )


if __name__ == "__main__":
    main()
