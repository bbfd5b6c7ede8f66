"""Command line of the benchmark: ``python -m bench [--smoke] [--reps N] [--workloads ...] [--subjects ...]``.

Repetitions are interleaved (repetition 1 of every subject, then repetition 2, ...) so that slow drift of
the machine (page cache, disk write-back) spreads over all subjects instead of biasing one. The cluster
workloads (``cluster``, ``failover``) run the cluster subjects against one PostgreSQL server started for
the whole run; ``--smoke`` leaves them out unless they are named in ``--workloads``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType

from bench import harness, postgres, report, subjects
from bench.harness import RunResult
from bench.report import Summary
from bench.workloads import FULL, SMOKE, WORKLOADS, Config, Workload, repetitions

log = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"
SUBJECT_KEYS = {
    "watcher": subjects.WATCHER,
    "limit": subjects.LIMIT,
    "limit-durable": subjects.LIMIT_DURABLE,
    "inotifywait": subjects.INOTIFYWAIT,
    "watcher-warning": subjects.WATCHER_WARNING,
    "watcher-norecord": subjects.WATCHER_NO_RECORD,
    "cp-sync": subjects.CP_SYNC,
    "watcher-base": subjects.WATCHER_BASE,  # only with --base-commit
    "cluster-1": subjects.CLUSTER_1,
    "cluster-2": subjects.CLUSTER_2,
    "cluster-3": subjects.CLUSTER_3,
}
DEFAULT_SUBJECTS = [k for k in SUBJECT_KEYS if k != "watcher-base"]
WORKLOAD_GROUPS = {"big": ["big_same_fs", "big_other_fs"], "backlog": ["backlog_small", "backlog_large"]}


def _applies(subject: subjects.Subject, workload: Workload) -> str | None:
    """None if ``subject`` runs ``workload``; otherwise the status to show (or "" to show nothing)."""
    if workload.cluster != (subject.kind == "cluster"):
        return ""
    if subject.workloads is not None and workload.key not in subject.workloads:
        return ""
    if workload.backlog and not subject.can_backlog:
        return "n/a: an inotify loop does not see files present before it starts"
    return None


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="1 repetition, tiny sizes (under a minute)")
    p.add_argument(
        "--reps",
        type=int,
        help="repetitions per subject and workload (default 3, and 9 for cluster and cluster_renamed; smoke 1)",
    )
    p.add_argument(
        "--workloads",
        help="comma-separated subset of: "
        + ", ".join(w.key for w in WORKLOADS)
        + "; `big` and `backlog` name both of theirs (default: all; with --smoke all but cluster and failover)",
    )
    p.add_argument(
        "--subjects",
        default=",".join(DEFAULT_SUBJECTS),
        help="comma-separated subset of: " + ", ".join(SUBJECT_KEYS) + " (default: all but watcher-base)",
    )
    p.add_argument(
        "--base-commit",
        metavar="REV",
        help="also run `watcher-base`: the watcher package of commit REV (git archive into a snapshot folder, "
        "with this venv's dependencies), interleaved with the other subjects; the report adds the ratios "
        "watcher / watcher-base (e.g. --base-commit 8f72ade, the commit before the delivery record)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.md/json/png (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep each run's folders under bench/.work")
    p.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the service from the working tree instead of a copy of watcher/ taken at start",
    )
    args = p.parse_args(argv)
    keys = [k for k in args.subjects.split(",") if k]
    if unknown := [k for k in keys if k not in SUBJECT_KEYS]:
        p.error(f"unknown subject(s): {', '.join(unknown)}")
    if "watcher-base" in keys and not args.base_commit:
        p.error("subject watcher-base needs --base-commit REV")
    if args.base_commit and "watcher-base" not in keys:
        keys.append("watcher-base")
    args.subjects = ",".join(keys)
    if args.workloads is None:
        args.workloads = ",".join(w.key for w in WORKLOADS if not (args.smoke and w.cluster))
    names = [n for k in args.workloads.split(",") if k for n in WORKLOAD_GROUPS.get(k, [k])]
    if unknown := [k for k in names if k not in {w.key for w in WORKLOADS}]:
        p.error(f"unknown workload(s): {', '.join(unknown)}")
    args.workloads = ",".join(names)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every run finished (targets may still be missed), 1 otherwise."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = SMOKE if args.smoke else FULL
    if args.reps:
        cfg = replace(cfg, reps=args.reps, cluster_reps=args.reps)
    workloads = [w for w in WORKLOADS if w.key in args.workloads.split(",")]
    chosen = [SUBJECT_KEYS[k] for k in args.subjects.split(",") if k]
    base = subjects.WATCHER_BASE
    snapshot: Path | None = None
    base_snapshot: Path | None = None
    base_name: str | None = None
    try:
        if base in chosen:
            try:
                commit, title = subjects.resolve_commit(args.base_commit)
            except ValueError as exc:
                log.error("--base-commit: %s", exc)
                return 2
            harness.WORK_ROOT.mkdir(parents=True, exist_ok=True)
            base_snapshot = subjects.snapshot_commit(
                commit, Path(tempfile.mkdtemp(prefix="snapshot-base-", dir=harness.WORK_ROOT))
            )
            base_name = f"watcher @{commit[:7]}"
            base_as_run = replace(
                base,
                name=base_name,
                root=base_snapshot,
                description=f"`python -m watcher run` (fsync on) from `git archive {commit[:7]}` ({title[:80]})",
            )
            chosen = [base_as_run if s is base else s for s in chosen]
        service = ("watcher", "cluster")
        if args.snapshot and any(s.kind in service and s.root == subjects.REPO for s in chosen):
            harness.WORK_ROOT.mkdir(parents=True, exist_ok=True)
            snapshot = subjects.snapshot_watcher(Path(tempfile.mkdtemp(prefix="snapshot-", dir=harness.WORK_ROOT)))
            chosen = [replace(s, root=snapshot) if s.kind in service and s.root == subjects.REPO else s for s in chosen]
        return _run(args, cfg, workloads, chosen, snapshot, base_name)
    finally:
        for folder in (snapshot, base_snapshot):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    cfg: Config,
    workloads: list[Workload],
    chosen: list[subjects.Subject],
    snapshot: Path | None,
    base_name: str | None = None,
) -> int:
    unavailable = {s.name: reason for s in chosen if (reason := s.available())}
    with contextlib.ExitStack() as stack:
        chosen = _with_postgres(stack, workloads, chosen, unavailable)
        for name, reason in unavailable.items():
            log.warning("%s: %s", name, reason)
        return _run_all(args, cfg, workloads, chosen, snapshot, unavailable, base_name)


def _with_postgres(
    stack: contextlib.ExitStack,
    workloads: list[Workload],
    chosen: list[subjects.Subject],
    unavailable: dict[str, str],
) -> list[subjects.Subject]:
    """Start the PostgreSQL server if a cluster subject will run; ``chosen`` with its URL in their env."""
    wanted = [s for s in chosen if s.name not in unavailable and any(_applies(s, w) is None for w in workloads)]
    if not any(s.kind == "cluster" for s in wanted):
        return chosen
    try:
        url = stack.enter_context(postgres.server(harness.WORK_ROOT, subjects.free_port()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        unavailable.update({s.name: f"not runnable: PostgreSQL: {exc}" for s in chosen if s.kind == "cluster"})
        return chosen
    log.info("PostgreSQL for the cluster subjects at %s", url)
    return [replace(s, env={**s.env, "WATCHER_JOBSTORE_URL": url}) if s.kind == "cluster" else s for s in chosen]


def _run_all(
    args: argparse.Namespace,
    cfg: Config,
    workloads: list[Workload],
    chosen: list[subjects.Subject],
    snapshot: Path | None,
    unavailable: dict[str, str],
    base_name: str | None = None,
) -> int:
    started = time.monotonic()
    load_at_start = os.getloadavg()
    runs: dict[tuple[str, str], list[RunResult]] = {}
    status: dict[tuple[str, str], str] = {}
    try:
        for workload in workloads:
            for subject in chosen:
                why = _applies(subject, workload)
                if why is None and subject.name in unavailable:
                    why = unavailable[subject.name]
                if why is not None:
                    if why:
                        status[(subject.name, workload.key)] = why
                    continue
                runs[(subject.name, workload.key)] = []
            for rep in range(repetitions(workload, cfg)):
                for subject in chosen:
                    key = (subject.name, workload.key)
                    if key not in runs:
                        continue
                    result = harness.run_one(subject, workload, cfg, rep, keep=args.keep)
                    runs[key].append(result)
                    log.info(
                        "%-13s %-20s rep %d: %s files/s, p50 %s ms, time %s s, ready %s s, CPU %s s%s, integrity %s%s",
                        workload.key,
                        subject.name,
                        rep + 1,
                        report.fmt(result.files_per_s),
                        report.fmt(result.lat_p50_ms),
                        report.fmt(result.span_s),
                        report.fmt(result.ready_s),
                        report.fmt(result.cpu_s),
                        _failover_note(result),
                        "ok" if result.faults == 0 else f"{result.faults} faults",
                        f" ({result.error})" if result.error else "",
                    )
    except KeyboardInterrupt:
        log.warning("interrupted: reporting the runs finished so far")
    duration = time.monotonic() - started

    summaries: list[Summary] = []
    for workload in workloads:
        for subject in chosen:
            key = (subject.name, workload.key)
            if runs.get(key):
                summaries.append(report.summarize(*key, runs[key]))
            elif key in status:
                summaries.append(Summary(subject.name, workload.key, status=status[key]))
    index = {(s.subject, s.workload): s for s in summaries}
    targets = report.evaluate_targets(lambda subj, wl: index.get((subj, wl)), cfg)
    targets = [t for t in targets if t.workload in {w.key for w in workloads}]
    machine = report.machine_info(snapshot or subjects.REPO)
    machine["watcher_source"] = "copy of watcher/ taken at start" if snapshot else "working tree"
    # other work on the machine skews every number: say how busy it was
    machine["load_average_1_5_15_min"] = "start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}".format(
        *load_at_start, *os.getloadavg()
    )
    mode = "smoke" if args.smoke else "full"
    shown = {key[0] for key in [*runs, *status]}
    notes = {s.name: s.description for s in chosen if s.name in shown}
    compared: list[dict[str, object]] = []
    extra: list[str] = []
    if base_name is not None:
        machine["watcher_base_source"] = f"git archive of {base_name.removeprefix('watcher @')}"
        extra, compared = report.comparison(runs, subjects.WATCHER.name, base_name, [w.key for w in workloads])
    no_record = subjects.WATCHER_NO_RECORD.name
    if any(key[0] == no_record for key in runs):
        # Issue 13: what the delivery record costs, the same build with and without it in one run.
        lines, rows = report.comparison(runs, subjects.WATCHER.name, no_record, ["burst", "renamed"])
        extra += [*lines[:-1], "Target (issue 13): files/s ratio >= 0.90 on burst and renamed.", ""]
        compared += rows
    cluster_lines, cluster_json = report.cluster_section(runs)
    md = report.markdown(summaries, targets, machine, cfg, mode, duration, notes, [*cluster_lines, *extra])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(md)
    report.write_json(
        args.out / "latest.json",
        {
            "mode": mode,
            "config": asdict(cfg),
            "machine": machine,
            "duration_s": duration,
            "subjects": notes,
            "summary": [s.as_dict() for s in summaries],
            "targets": [t.as_dict() for t in targets],
            "comparison": compared,
            "cluster": cluster_json,
            "runs": [r.as_dict() for rs in runs.values() for r in rs],
        },
    )
    report.latency_png(args.out / "latency.png", summaries, cfg)
    print(md)
    log.info("wrote %s, latest.json and latency.png", args.out / "latest.md")
    broken = [r for rs in runs.values() for r in rs if r.error]
    return 1 if broken or not runs else 0


def _failover_note(result: RunResult) -> str:
    if result.failover_claims_s is None and result.failover_leader_run_s is None:
        return ""
    return (
        f", failover: {result.failover_claims_at_kill} claims done in {report.fmt(result.failover_claims_s)} s,"
        f" new leader {report.fmt(result.failover_new_leader_s)} s,"
        f" next job run {report.fmt(result.failover_leader_run_s)} s,"
        f" empty {report.fmt(result.failover_drained_s)} s"
    )
