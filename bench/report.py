"""Medians, targets and the three outputs: markdown table, JSON, latency PNG.

Every numeric measure of a (subject, workload) pair is the median over its repetitions; integrity faults
are summed. The targets (issue 16's, the ones of issue 6 it keeps, and issue 14's cluster numbers) are
evaluated on those medians: for the ``watcher`` subject, and for the cluster subjects on the cluster
workloads.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import WORK_ROOT, RunResult
from bench.postgres import pg_tool
from bench.subjects import REPO
from bench.workloads import WORKLOADS, Config, describe

MEASURES = (
    "files_per_s",
    "mib_per_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "span_s",
    "ready_s",
    "peak_rss_mib",
    "cpu_s",
    "cpu_total_s",
    "cpu_per_1k_files_s",
    "idle_cpu_pct",
    "failover_claims_at_kill",
    "failover_claims_s",
    "failover_new_leader_s",
    "failover_leader_run_s",
    "failover_drained_s",
)


@dataclass
class Summary:
    """Medians of one subject on one workload (or why it has none)."""

    subject: str
    workload: str
    runs: int = 0
    medians: dict[str, float | None] = field(default_factory=dict)
    faults: int = 0
    checked: int = 0  # runs whose integrity was checked (a run that broke before the check is not)
    missing_at_deadline: int = 0
    found_by_scan: int = 0
    errors: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok", "n/a: reason", "missing", "not run: reason"
    latencies_ms: list[float] = field(default_factory=list)

    def get(self, key: str) -> float | None:
        """Median of a measure, None when not measured."""
        return self.medians.get(key)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "subject": self.subject,
            "workload": self.workload,
            "status": self.status,
            "runs": self.runs,
            "medians": self.medians,
            "integrity_faults": self.faults,
            "integrity_checked_runs": self.checked,
            "missing_at_deadline": self.missing_at_deadline,
            "found_by_scan": self.found_by_scan,
            "errors": self.errors,
        }


def summarize(subject: str, workload: str, runs: Sequence[RunResult]) -> Summary:
    """Median every measure over ``runs``."""
    summary = Summary(subject=subject, workload=workload, runs=len(runs))
    for key in MEASURES:
        values = [v for r in runs if (v := getattr(r, key)) is not None]
        summary.medians[key] = statistics.median(values) if values else None
    summary.faults = sum(r.faults for r in runs)
    summary.checked = sum(1 for r in runs if r.integrity)
    summary.missing_at_deadline = sum(r.missing_at_deadline for r in runs)
    summary.found_by_scan = sum(r.found_by_scan for r in runs)
    summary.errors = [r.error for r in runs if r.error]
    summary.latencies_ms = sorted(x for r in runs for x in r.latencies_ms)
    if summary.errors:
        summary.status = "error"
    return summary


@dataclass(frozen=True)
class Target:
    """One target of an issue, evaluated."""

    workload: str
    name: str
    value: str
    threshold: str
    met: bool | None  # None: could not be evaluated
    subject: str = "watcher"  # the row of the results table it belongs to

    @property
    def verdict(self) -> str:
        """``met``, ``missed`` or ``n/a``."""
        return {True: "met", False: "missed", None: "n/a"}[self.met]

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "workload": self.workload,
            "subject": self.subject,
            "target": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "verdict": self.verdict,
        }


def fmt(value: float | None, unit: str = "") -> str:
    """A number with a sensible count of digits, ``-`` for None."""
    if value is None:
        return "-"
    if value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return text + unit


Lookup = Callable[[str, str], Summary | None]


CLUSTER_RATIO_MIN = 0.9  # issue 14 item 6: 2 replicas at 0.9 x 1 replica or better
CLAIMS_DONE_MAX_S = 60.0  # issue 14 item 1: a dead replica's claims done by another within 60 s
LEADER_RUN_MAX_S = 30.0  # issue 14: failover within 30 s


def evaluate_targets(get: Lookup, cfg: Config, subject: str = "watcher") -> list[Target]:
    """The issues' targets (``subject`` and the cluster subjects, medians), each met, missed or n/a."""
    targets: list[Target] = []

    def add(
        workload: str,
        name: str,
        value: float | None,
        threshold: float | None,
        le: bool,
        unit: str,
        who: str = subject,
    ) -> None:
        met = None if value is None or threshold is None else value <= threshold if le else value >= threshold
        sign = "<=" if le else ">="
        targets.append(Target(workload, name, fmt(value, unit), f"{sign} {fmt(threshold, unit)}", met, who))

    def m(workload: str, key: str, who: str = subject) -> float | None:
        s = get(who, workload)
        return s.get(key) if s is not None and s.status in ("ok", "error") else None

    def times(x: float | None, factor: float) -> float | None:
        return None if x is None else x * factor

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    # issue 16 (fsync on, defaults otherwise: log level info)
    add("trickle", "latency p50", m("trickle", "lat_p50_ms"), 2.0, True, " ms")
    add("trickle", "latency p99", m("trickle", "lat_p99_ms"), 10.0, True, " ms")
    burst_limit = m("burst", "files_per_s", "limit")
    add("burst", "files/s >= 0.9x limit", m("burst", "files_per_s"), times(burst_limit, 0.9), False, "/s")
    add("burst", "latency p99", m("burst", "lat_p99_ms"), 50.0, True, " ms")
    renamed_limit = m("renamed", "files_per_s", "limit")
    add("renamed", "files/s >= 0.5x limit", m("renamed", "files_per_s"), times(renamed_limit, 0.5), False, "/s")
    add("renamed", "CPU s <= 3x limit", m("renamed", "cpu_s"), times(m("renamed", "cpu_s", "limit"), 3), True, " s")
    add("backlog_small", "last delivery from process start", m("backlog_small", "span_s"), 3.0, True, " s")
    backlog_cpu = m("backlog_small", "cpu_s", "limit")
    add("backlog_small", "CPU s <= 3x limit", m("backlog_small", "cpu_s"), times(backlog_cpu, 3), True, " s")
    add("backlog_small", "peak RSS", m("backlog_small", "peak_rss_mib"), 80.0, True, " MiB")
    durable = m("big_same_fs", "lat_p50_ms", "limit-durable")
    add(
        "big_same_fs",
        "close -> durable <= limit-durable + 50 ms",
        m("big_same_fs", "lat_p50_ms"),
        None if durable is None else durable + 50.0,
        True,
        " ms",
    )
    add("startup", "process start -> ready", m("startup", "ready_s"), 0.5, True, " s")
    # issue 6, kept
    add("backlog_large", "peak RSS", m("backlog_large", "peak_rss_mib"), 120.0, True, " MiB")
    add(
        "backlog_large",
        f"peak RSS <= 1.3x the {cfg.backlog_small} run",
        m("backlog_large", "peak_rss_mib"),
        times(m("backlog_small", "peak_rss_mib"), 1.3),
        True,
        " MiB",
    )
    add(
        "big_other_fs",
        "MiB/s >= 0.9x cp+sync",
        m("big_other_fs", "mib_per_s"),
        times(m("big_other_fs", "mib_per_s", "cp+sync"), 0.9),
        False,
        " MiB/s",
    )
    add("idle", "CPU of one core", m("idle", "idle_cpu_pct"), 1.0, True, " %")
    # faster than the inotifywait loop: latency where the rate is fixed, throughput where it is not (big on
    # the same fs is durable for watcher and not for the loop: its yardstick is limit-durable, above)
    speed = {
        "trickle": ("lat_p50_ms", True),
        "burst": ("files_per_s", False),
        "renamed": ("files_per_s", False),
        "big_other_fs": ("lat_p50_ms", True),
    }
    for workload, (key, lower_is_better) in speed.items():
        label = "latency p50" if key == "lat_p50_ms" else "files/s"
        unit = " ms" if key == "lat_p50_ms" else "/s"
        ours, theirs = m(workload, key), m(workload, key, "inotifywait")
        met = None if ours is None or theirs is None else (ours < theirs if lower_is_better else ours > theirs)
        sign = "<" if lower_is_better else ">"
        targets.append(
            Target(
                workload,
                f"faster than inotifywait ({label})",
                fmt(ours, unit),
                f"{sign} {fmt(theirs, unit)}",
                met,
            )
        )
    # issue 14 item 6
    one = m("cluster", "files_per_s", "cluster x1")
    two = ratio(m("cluster", "files_per_s", "cluster x2"), one)
    add("cluster", "files/s 2 replicas / 1 replica", two, CLUSTER_RATIO_MIN, False, "", "cluster x2")
    renamed_one = m("cluster_renamed", "files_per_s", "cluster x1")
    renamed_two = ratio(m("cluster_renamed", "files_per_s", "cluster x2"), renamed_one)
    add("cluster_renamed", "files/s 2 replicas / 1 replica", renamed_two, CLUSTER_RATIO_MIN, False, "", "cluster x2")
    claims = m("failover", "failover_claims_s", "cluster x3")
    add("failover", "SIGKILL of a follower -> its claims done", claims, CLAIMS_DONE_MAX_S, True, " s", "cluster x3")
    run = m("failover", "failover_leader_run_s", "cluster x3")
    add("failover", "SIGKILL of the leader -> next job run", run, LEADER_RUN_MAX_S, True, " s", "cluster x3")
    for w in WORKLOADS:
        for who in _integrity_subjects(w.key, subject):
            s = get(who, w.key)
            if s is None or s.status not in ("ok", "error") or not s.checked:
                targets.append(Target(w.key, "0 integrity faults", "-", "0", None, who))
            else:
                value = f"{s.faults} in {s.checked} checked run(s)"
                targets.append(Target(w.key, "0 integrity faults", value, "0", s.faults == 0, who))
    return targets


def _integrity_subjects(workload: str, subject: str) -> list[str]:
    """Whose integrity is a target on ``workload``: the service's runs (every replica count on a cluster)."""
    return {
        "cluster": list(CLUSTER_SUBJECTS),
        "cluster_renamed": list(CLUSTER_SUBJECTS),
        "failover": ["cluster x3"],
        "startup": [],
    }.get(workload, [subject])


def machine_info(watcher_root: Path = REPO) -> dict[str, str]:
    """The facts a reader needs to compare two result files."""

    def run(*args: str, cwd: Path = REPO) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False, cwd=cwd)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout or out.stderr).strip() or "?"
        return text if out.returncode == 0 else f"unavailable ({text.splitlines()[-1]})"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        (int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")),
        0,
    )
    os_name = "?"
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    inotifywait = "missing"
    if shutil.which("inotifywait"):  # `--help` exits 1, so not through run()
        help_text = subprocess.run(["inotifywait", "--help"], capture_output=True, text=True, check=False)
        inotifywait = (help_text.stdout or help_text.stderr or "?").splitlines()[0]
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    df = run("df", "-PT", str(WORK_ROOT)).splitlines()[-1].split()
    shm = run("df", "-PT", "/dev/shm").splitlines()[-1].split()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu_model": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": os_name,
        "python": sys.version.split()[0],
        "work_dir": str(WORK_ROOT),
        "work_dir_filesystem": f"{df[1]} on {df[0]}" if len(df) > 1 else "?",
        "other_filesystem": f"{shm[1]} at /dev/shm" if len(shm) > 1 else "?",
        "inotify_max_queued_events": Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip(),
        "inotifywait": inotifywait,
        "postgresql": run(postgres_bin, "--version") if (postgres_bin := pg_tool("postgres")) else "missing",
        "watcher_version": run(sys.executable, "-m", "watcher", "--version", cwd=watcher_root),
        "git_commit": run("git", "rev-parse", "--short", "HEAD"),
    }


COLUMNS = (
    "workload",
    "subject",
    "files/s",
    "MiB/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "time s",
    "ready s",
    "peak RSS MiB",
    "CPU s",
    "CPU s/1k files",
    "idle CPU %",
    "integrity",
    "targets",
)


def _row(s: Summary, workload_label: str, targets: Iterable[Target]) -> list[str]:
    if s.status not in ("ok", "error"):
        return [workload_label, s.subject, s.status, *[""] * (len(COLUMNS) - 3)]
    integrity = f"**{s.faults} faults**" if s.faults else ("ok" if s.checked else "-")
    if s.missing_at_deadline:
        integrity += f", {s.missing_at_deadline} undelivered at deadline"
    if s.found_by_scan:
        integrity += f" ({s.found_by_scan} seen by scan after queue overflow)"
    if s.errors:
        integrity += f"; {len(s.errors)} of {s.runs} run(s) broke: {_short(s.errors[0])}"
    verdicts = "; ".join(f"{t.name}: {t.verdict}" for t in targets)
    g = s.get
    return [
        workload_label,
        s.subject,
        fmt(g("files_per_s")),
        fmt(g("mib_per_s")),
        fmt(g("lat_p50_ms")),
        fmt(g("lat_p99_ms")),
        fmt(g("lat_max_ms")),
        fmt(g("span_s")),
        fmt(g("ready_s")),
        fmt(g("peak_rss_mib")),
        fmt(g("cpu_s")),
        fmt(g("cpu_per_1k_files_s")),
        fmt(g("idle_cpu_pct")),
        integrity,
        verdicts,
    ]


def _short(error: str) -> str:
    """First and last line of an error (the exception, then the subject's last log line)."""
    lines = [x.strip() for x in error.splitlines() if x.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0][:80]} ... {lines[-1][:120]}"
    return text.replace("|", "/")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows)]


def markdown(
    summaries: Sequence[Summary],
    targets: Sequence[Target],
    machine: dict[str, str],
    cfg: Config,
    mode: str,
    duration_s: float,
    subject_notes: dict[str, str],
    extra: Sequence[str] = (),
) -> str:
    """The whole report as markdown."""
    by_workload = {w.key: describe(w, cfg) for w in WORKLOADS}
    lines = [
        "# watcher benchmark",
        "",
        f"Mode `{mode}`: {cfg.reps} repetition(s) per subject and workload ({cfg.cluster_reps} for the cluster's "
        "throughput workloads), medians shown; "
        f"run took {duration_s / 60:.1f} min, finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
        "## Machine",
        "",
        *_table(["", ""], [[k, f"`{v}`"] for k, v in machine.items()]),
        "",
        "## Subjects",
        "",
        *_table(["subject", "what"], [[k, v] for k, v in subject_notes.items()]),
        "",
        "## Results",
        "",
        "`time s`: first close -> last delivery (backlog: process start -> last delivery; "
        "big: close -> delivery). Latency: writer close (or rename into the inbox) -> complete under the "
        "final name in the outbox (big, same fs: and the source gone from the inbox, i.e. durable). "
        "`CPU s`: subject CPU from ready to drained (backlog: from process start); `CPU s/1k files`: that "
        "per 1000 files delivered. `ready s`: process start -> ready (startup: median of its starts). "
        "See bench/README.md.",
        "",
    ]
    rows = []
    for s in summaries:
        relevant = [t for t in targets if t.workload == s.workload and t.subject == s.subject]
        rows.append(_row(s, by_workload[s.workload], relevant))
    lines += _table(COLUMNS, rows)
    lines += ["", "## Targets (medians)", ""]
    lines += _table(
        ["workload", "subject", "target", "value", "threshold", "verdict"],
        [[by_workload[t.workload], t.subject, t.name, t.value, t.threshold, f"**{t.verdict}**"] for t in targets],
    )
    met = sum(t.met is True for t in targets)
    missed = sum(t.met is False for t in targets)
    na = sum(t.met is None for t in targets)
    lines += ["", f"{met} met, {missed} missed, {na} not evaluated.", "", *extra]
    return "\n".join(lines)


COMPARED = (("files_per_s", "files/s"), ("cpu_s", "CPU s"), ("lat_p50_ms", "p50 ms"), ("peak_rss_mib", "peak RSS MiB"))


def comparison(
    runs: Mapping[tuple[str, str], Sequence[RunResult]], subject: str, base: str, workloads: Sequence[str]
) -> tuple[list[str], list[dict[str, object]]]:
    """Markdown lines and JSON rows comparing ``subject`` with ``base`` (another commit) per workload.

    For each measure: both medians, their ratio ``subject / base``, and the range of the per-repetition
    ratios (repetition i of one against repetition i of the other: they ran next to each other, so the
    spread of these says how much the machine moved during the run).
    """
    rows: list[list[str]] = []
    out: list[dict[str, object]] = []
    for wl in workloads:
        mine, theirs = runs.get((subject, wl), []), runs.get((base, wl), [])
        if not mine or not theirs:
            continue
        for key, label in COMPARED:
            a = [v for r in mine if (v := getattr(r, key)) is not None]
            b = [v for r in theirs if (v := getattr(r, key)) is not None]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = ma / mb if mb else None
            paired = [
                x / y
                for r, q in zip(mine, theirs, strict=False)
                if (x := getattr(r, key)) is not None and (y := getattr(q, key))
            ]
            spread = f"{min(paired):.3f} .. {max(paired):.3f}" if paired else "-"
            rows.append([wl, label, fmt(ma), fmt(mb), f"{ratio:.3f}" if ratio is not None else "-", spread])
            out.append(
                {
                    "workload": wl,
                    "measure": key,
                    subject: ma,
                    base: mb,
                    "ratio": ratio,
                    "paired_ratios": paired,
                    "values": {subject: a, base: b},
                }
            )
    lines = [f"## {subject} / {base} (medians, one run, interleaved)", ""]
    lines += _table(["workload", "measure", subject, base, "ratio", "per-rep ratios min .. max"], rows)
    return [*lines, ""], out


CLUSTER_SUBJECTS = ("cluster x1", "cluster x2", "cluster x3")
CLUSTER_WORKLOADS = (
    ("cluster", "a burst written into one shared inbox"),
    ("cluster_renamed", "files renamed into one shared inbox at once (no writer competing for the cores)"),
)


def _scaling(
    runs: Mapping[tuple[str, str], Sequence[RunResult]], workload: str
) -> tuple[list[list[str]], list[dict[str, object]]]:
    """The table rows and JSON of one cluster workload: files/s by replica count against one replica."""
    base = runs.get((CLUSTER_SUBJECTS[0], workload), [])
    base_median = _median([r.files_per_s for r in base])
    rows: list[list[str]] = []
    scaling: list[dict[str, object]] = []
    for name in CLUSTER_SUBJECTS:
        mine = runs.get((name, workload), [])
        if not mine:
            continue
        median = _median([r.files_per_s for r in mine])
        ratio = median / base_median if median is not None and base_median else None
        paired = [x / y for r, q in zip(mine, base, strict=False) if (x := r.files_per_s) and (y := q.files_per_s)]
        spread = f"{min(paired):.3f} .. {max(paired):.3f}" if paired else "-"
        rows.append(
            [
                name,
                fmt(median),
                f"{ratio:.3f}" if ratio is not None else "-",
                spread,
                fmt(_median([r.lat_p50_ms for r in mine])),
                fmt(_median([r.lat_p99_ms for r in mine])),
                fmt(_median([r.cpu_per_1k_files_s for r in mine])),
            ]
        )
        scaling.append({"subject": name, "files_per_s": median, "ratio_to_1": ratio, "paired_ratios": paired})
    return rows, scaling


def cluster_section(runs: Mapping[tuple[str, str], Sequence[RunResult]]) -> tuple[list[str], dict[str, object]]:
    """Markdown lines and JSON of the cluster workloads: throughput by replica count, failover times.

    Throughput: each replica count's median files/s, its ratio to one replica's median, and the range of
    the per-repetition ratios (repetition i of N replicas against repetition i of one: they ran next to
    each other). Failover: every repetition's times and their medians.
    """
    lines: list[str] = []
    out: dict[str, object] = {}
    for workload, title in CLUSTER_WORKLOADS:
        rows, scaling = _scaling(runs, workload)
        if rows:
            lines += [f"## Cluster: {title}, 1, 2 and 3 replicas (medians, interleaved)", ""]
            header = ["replicas", "files/s", "/ 1 replica", "per-rep ratios min .. max", "p50 ms", "p99 ms"]
            lines += _table([*header, "CPU s/1k files"], rows)
            lines.append("")
            out["scaling" if workload == "cluster" else f"scaling_{workload}"] = scaling
    failover = runs.get((CLUSTER_SUBJECTS[2], "failover"), [])
    if failover:
        measures = (
            ("failover_claims_at_kill", "claims held at the kill (planted)"),
            ("failover_claims_s", "SIGKILL of a follower -> its claims done, s"),
            ("failover_new_leader_s", "SIGKILL of the leader -> new leader in GET /cluster, s"),
            ("failover_leader_run_s", "SIGKILL of the leader -> next run of the 1 s interval job, s"),
            ("failover_drained_s", "SIGKILL of the leader -> inbox and claims folders empty, s"),
        )
        frows = []
        for key, label in measures:
            values = [getattr(r, key) for r in failover]
            cells = [fmt(v) for v in values]
            if key == "failover_claims_at_kill":
                cells = [f"{fmt(v)} ({fmt(r.failover_claims_planted)})" for v, r in zip(values, failover, strict=True)]
            frows.append([label, fmt(_median(values)), ", ".join(cells)])
        lines += ["## Failover: 3 replicas, SIGKILL of a follower holding claims, then of the leader", ""]
        lines += _table(["measure", "median", "per repetition"], frows)
        lines.append("")
        out["failover"] = {key: [getattr(r, key) for r in failover] for key, _ in measures}
    return lines, out


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def write_json(path: Path, payload: dict[str, object]) -> None:
    """Write ``payload`` atomically (temp file, then rename)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def latency_png(path: Path, summaries: Sequence[Summary], cfg: Config) -> None:
    """ECDF of delivery latency per subject for each latency workload, and the big-file times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["trickle", "burst", "renamed", "cluster"]
    fig, axes = plt.subplots(1, 5, figsize=(25, 5))
    labels = {w.key: describe(w, cfg) for w in WORKLOADS}
    for ax, key in zip(axes, panels, strict=False):
        for s in summaries:
            if s.workload == key and s.latencies_ms:
                lat = [max(x, 1e-3) for x in s.latencies_ms]
                ys = [(i + 1) / len(lat) for i in range(len(lat))]
                ax.step(lat, ys, where="post", label=f"{s.subject} (p50 {fmt(s.get('lat_p50_ms'))} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("close -> delivered (ms, log)")
        ax.set_ylabel("fraction of files")
        ax.set_title(labels[key])
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    ax = axes[4]
    bars = [
        (f"{s.subject}\n{'same fs' if s.workload == 'big_same_fs' else 'other fs'}", s.get("lat_p50_ms"))
        for s in summaries
        if s.workload in ("big_same_fs", "big_other_fs") and s.get("lat_p50_ms") is not None
    ]
    if bars:
        names, values = zip(*bars, strict=True)
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
    ax.set_ylabel("close -> delivered (ms, log)")
    ax.set_title(f"big file {cfg.big_size // (1024 * 1024)} MiB")
    fig.tight_layout()
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
