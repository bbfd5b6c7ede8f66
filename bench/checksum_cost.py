"""What WATCHER_CHECKSUM=sha256 costs for one big file, on both delivery paths (issue 13, item 2).

Run (as root to drop the page cache before each cold repetition; otherwise only warm runs are made)::

    .venv/bin/python -m bench.checksum_cost                  # 1 GiB, 5 repetitions, cold and warm
    .venv/bin/python -m bench.checksum_cost --mib 512 --reps 3 --cache warm

One master file of random bytes is written once under ``--dir`` (default ``bench/.work``, the
repository's filesystem) and fsynced, like the benchmark's writer does before close. Each repetition
hard-links it into a fresh inbox and times :func:`watcher.pipeline.transfer.deliver` (``fsync=True``,
``checksum`` off or on) into an outbox on the same filesystem (``link``, then one read of the file to
hash it) or on ``--other-fs`` (default ``/dev/shm``: ``copy_file_range`` without the checksum, a copy
through user space that hashes on the way with it); the delivered file is then removed. The master
keeps a name, so the source's bytes are never rewritten between repetitions.

Cache modes: ``cold`` calls ``sync`` and writes 3 to ``/proc/sys/vm/drop_caches`` before the delivery,
so every read of the source comes from the disk; ``warm`` reads the master once first, so it comes from
the page cache (the usual case: a writer has just written the file). The runs are interleaved
(repetition 1 of every combination, then repetition 2, ...) and the medians printed as a markdown table,
with the in-memory SHA-256 throughput of this CPU (hashlib over the same bytes) as the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from watcher.pipeline.transfer import TransferOutcome, deliver

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class Sample:
    """One timed delivery."""

    path: str  # "same fs" or "other fs"
    checksum: bool
    cache: str  # "cold" or "warm"
    wall_s: float
    cpu_s: float  # this process's user+system CPU during the call


def can_drop_caches() -> bool:
    """True when this process may write to /proc/sys/vm/drop_caches."""
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    """Flush dirty pages, then drop the page cache, dentries and inodes."""
    os.sync()
    DROP_CACHES.write_text("3\n")


def read_through(path: Path) -> None:
    """Read the whole file once so its pages are cached."""
    with path.open("rb", buffering=0) as f:
        while f.read(16 * MIB):
            pass


def write_master(path: Path, size: int) -> tuple[str, float, float]:
    """Write ``size`` random bytes to ``path`` (fsynced); return their SHA-256 and the in-memory hash rates.

    The rates are MiB/s of hashlib over the bytes held in memory: one ``update`` of the whole buffer,
    and ``update`` per 4 MiB chunk (the service's read size).
    """
    data = os.urandom(size)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    t0 = time.perf_counter()
    digest = hashlib.sha256(data).hexdigest()
    whole = size / MIB / (time.perf_counter() - t0)
    view = memoryview(data)
    hasher = hashlib.sha256()
    t0 = time.perf_counter()
    for off in range(0, size, 4 * MIB):
        hasher.update(view[off : off + 4 * MIB])
    chunked = size / MIB / (time.perf_counter() - t0)
    assert hasher.hexdigest() == digest
    return digest, whole, chunked


def one_delivery(
    master: Path, work: Path, outbox: Path, checksum: bool, cache: str, digest: str
) -> tuple[float, float]:
    """Link ``master`` into a fresh inbox, deliver it to ``outbox``; wall and CPU seconds of ``deliver``."""
    inbox = Path(tempfile.mkdtemp(prefix="inbox-", dir=work))
    src = inbox / "big.bin"
    os.link(master, src)
    if cache == "cold":
        drop_caches()
    else:
        read_through(master)
    c0, t0 = time.process_time(), time.perf_counter()
    result = deliver(src, "big.bin", outbox, fsync=True, checksum=checksum)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if result.outcome is not TransferOutcome.DELIVERED or result.dest is None:
        raise RuntimeError(f"not delivered: {result}")
    if checksum and result.sha256 != digest:
        raise RuntimeError(f"digest {result.sha256} != {digest}")
    if src.exists():
        raise RuntimeError("source still in the inbox")
    result.dest.unlink()
    inbox.rmdir()
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    """Measure and print the medians; exit 0."""
    p = argparse.ArgumentParser(prog="python -m bench.checksum_cost", description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="file size in MiB (default 1024)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each combination (default 5)")
    p.add_argument("--dir", type=Path, default=REPO / "bench" / ".work", help="where the master and inbox go")
    p.add_argument("--other-fs", type=Path, default=Path("/dev/shm"), help="a folder on another filesystem")
    p.add_argument("--cache", default="cold,warm", help="cold, warm or cold,warm (cold needs root)")
    args = p.parse_args(argv)
    caches = [c for c in args.cache.split(",") if c]
    if "cold" in caches and not can_drop_caches():
        print("cannot write /proc/sys/vm/drop_caches: warm runs only")
        caches = [c for c in caches if c != "cold"] or ["warm"]
    size = args.mib * MIB
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="checksum-cost-", dir=args.dir))
    other = Path(tempfile.mkdtemp(prefix="checksum-cost-", dir=args.other_fs))
    outboxes = {"same fs": work / "outbox", "other fs": other / "outbox"}
    for d in outboxes.values():
        d.mkdir()
    if os.stat(work).st_dev == os.stat(other).st_dev:
        raise SystemExit(f"{args.other_fs} is on the same filesystem as {args.dir}")
    samples: list[Sample] = []
    try:
        master = work / "master.bin"
        digest, whole, chunked = write_master(master, size)
        fs = {
            k: subprocess.run(["df", "-PT", str(v)], capture_output=True, text=True, check=False)
            .stdout.splitlines()[-1]
            .split()[1]
            for k, v in outboxes.items()
        }
        print(f"{args.mib} MiB, {args.reps} reps; same fs: {fs['same fs']} ({args.dir}), other fs: {fs['other fs']}")
        print(f"sha256 in memory: {whole:,.0f} MiB/s (one update), {chunked:,.0f} MiB/s (4 MiB updates)")
        print(f"loadavg at start: {os.getloadavg()}")
        combos = list(itertools.product(outboxes, (False, True), caches))
        for rep in range(args.reps):
            for path, checksum, cache in combos:
                wall, cpu = one_delivery(master, work, outboxes[path], checksum, cache, digest)
                samples.append(Sample(path, checksum, cache, wall, cpu))
                sha = "sha256" if checksum else "none"
                print(f"rep {rep + 1} {path:8} {sha:6} {cache}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
        print(f"loadavg at end: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
    print()
    print("| path | cache | checksum | median s | min .. max s | MiB/s | CPU s | + vs none |")
    print("|---|---|---|---|---|---|---|---|")
    for path, cache in itertools.product(outboxes, caches):
        base = None
        for checksum in (False, True):
            walls = [s.wall_s for s in samples if (s.path, s.checksum, s.cache) == (path, checksum, cache)]
            cpus = [s.cpu_s for s in samples if (s.path, s.checksum, s.cache) == (path, checksum, cache)]
            med = statistics.median(walls)
            extra = "" if base is None else f"+{med - base:.3f} s ({med / base:.1f}x)"
            base = med if base is None else base
            print(
                f"| {path} | {cache} | {'sha256' if checksum else 'none'} | {med:.3f} | "
                f"{min(walls):.3f} .. {max(walls):.3f} | {args.mib / med:,.0f} | {statistics.median(cpus):.3f} | "
                f"{extra} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
