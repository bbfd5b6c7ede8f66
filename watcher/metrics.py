"""Prometheus metric definitions, registered on an explicit registry (never the global default)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from watcher import __version__
from watcher.logging import dropped_lines

# The `_created` series double the number of series per counter and histogram and no rule or panel
# reads them. Process-wide by prometheus-client's design; every registry of ours is built here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency runs from sub-millisecond renames to minutes-long copies of big files.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


@dataclass(frozen=True)
class Metrics:
    """Every metric the service exposes, bound to one registry so tests get fresh counters."""

    registry: CollectorRegistry
    files_discovered: Counter
    files_delivered: Counter
    files_duplicate: Counter
    files_failed: Counter
    files_retried: Counter
    files_skipped: Counter
    bytes_delivered: Counter
    delivery_latency: Histogram
    transfer_duration: Histogram
    queue_depth: Gauge
    inflight_transfers: Gauge
    events_dropped: Counter
    observer_up: Gauge
    observer_polling: Gauge
    delivery_paused: Gauge
    ready: Gauge
    ready_check: Gauge
    oldest_pending: Gauge
    pending_files: Gauge
    cluster_leader: Gauge
    cluster_replicas: Gauge
    cluster_dividing: Gauge
    cluster_oldest_claim_age: Gauge
    job_runs: Counter
    job_last_success: Gauge
    build_info: Info


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Build the metric set on `registry` (a new one when omitted), with process metrics."""
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)
    metrics = Metrics(
        registry=reg,
        files_discovered=Counter(
            "watcher_files_discovered",
            "Files found ready for delivery, by who found them (rescan = the events missed it).",
            ["source"],
            registry=reg,
        ),
        files_delivered=Counter("watcher_files_delivered", "Files delivered to the outbox.", registry=reg),
        files_duplicate=Counter(
            "watcher_files_duplicate",
            "Files whose identical bytes were already in the outbox (source removed).",
            registry=reg,
        ),
        files_failed=Counter("watcher_files_failed", "Files moved to the failed dir.", registry=reg),
        files_retried=Counter(
            "watcher_files_retried",
            "Failed transfer attempts that will be retried: counts attempts, so one file can count several times.",
            registry=reg,
        ),
        files_skipped=Counter(
            "watcher_files_skipped",
            "Paths never delivered, counted once each when first skipped, by reason (excluded, temporary, "
            "not_included, symlink, special).",
            ["reason"],
            registry=reg,
        ),
        bytes_delivered=Counter("watcher_bytes_delivered", "Bytes delivered to the outbox.", registry=reg),
        delivery_latency=Histogram(
            "watcher_delivery_latency_seconds",
            "From the moment a file was complete in the inbox to its delivery.",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ),
        transfer_duration=Histogram(
            "watcher_transfer_duration_seconds",
            "Time spent transferring one file: its own share of its batch (the last attempt).",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ),
        queue_depth=Gauge("watcher_queue_depth", "Files waiting in the in-memory queue.", registry=reg),
        inflight_transfers=Gauge("watcher_inflight_transfers", "Transfers running now.", registry=reg),
        events_dropped=Counter(
            "watcher_events_dropped",
            "Files not queued because the queue was full (the rescan delivers them later).",
            registry=reg,
        ),
        observer_up=Gauge("watcher_observer_up", "1 while the filesystem observer runs.", registry=reg),
        observer_polling=Gauge(
            "watcher_observer_polling",
            "1 when the observer polls (configured, network filesystem or inotify exhausted).",
            registry=reg,
        ),
        delivery_paused=Gauge(
            "watcher_delivery_paused",
            "1 while delivery waits because the outbox cannot take files (intake goes on).",
            registry=reg,
        ),
        ready=Gauge("watcher_ready", "1 exactly when /health/ready answers 200.", registry=reg),
        ready_check=Gauge(
            "watcher_ready_check",
            "One series per readiness check of /health/ready: 1 when it passes, 0 when it fails.",
            ["check"],
            registry=reg,
        ),
        oldest_pending=Gauge(
            "watcher_oldest_pending_seconds",
            "Age of the oldest file seen in the inbox but not yet delivered.",
            registry=reg,
        ),
        pending_files=Gauge("watcher_pending_files", "Files seen in the inbox but not yet delivered.", registry=reg),
        cluster_leader=Gauge(
            "watcher_cluster_leader",
            "1 on the replica that holds the schedule (cluster mode), else 0.",
            registry=reg,
        ),
        cluster_replicas=Gauge(
            "watcher_cluster_replicas",
            "Live replicas of the cluster, as this replica last saw them in PostgreSQL (cluster mode); "
            "0 without cluster mode or while this replica does not hold its own id.",
            registry=reg,
        ),
        cluster_dividing=Gauge(
            "watcher_cluster_dividing",
            "1 while this replica leaves other live replicas' event files to them (cluster mode), else 0.",
            registry=reg,
        ),
        cluster_oldest_claim_age=Gauge(
            "watcher_cluster_oldest_claim_age_seconds",
            "Age of the oldest claim in each replica's claims folder under <inbox>/.watcher/, by the "
            "replica that owns the folder (cluster mode; 0 when it holds none).",
            ["replica"],
            registry=reg,
        ),
        job_runs=Counter(
            "watcher_job_runs", "Scheduled job runs by job id and outcome.", ["job_id", "outcome"], registry=reg
        ),
        job_last_success=Gauge(
            "watcher_job_last_success_timestamp_seconds",
            "Unix time of the last successful run of each job.",
            ["job_id"],
            registry=reg,
        ),
        build_info=Info("watcher_build", "Build information.", registry=reg),
    )
    metrics.build_info.info({"version": __version__})
    for source in ("event", "rescan", "startup"):
        metrics.files_discovered.labels(source=source)
    for reason in ("excluded", "temporary", "not_included", "symlink", "special"):  # pipeline.skipped.REASONS
        metrics.files_skipped.labels(reason=reason)
    reg.register(_DroppedLogLines())
    return metrics


class _DroppedLogLines(Collector):
    """``watcher_log_lines_dropped_total``: read from the logging module, which has no registry."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Yield the counter of log lines the output could not take."""
        yield CounterMetricFamily(
            "watcher_log_lines_dropped",
            "Log lines dropped because the output could not take them (closed pipe, full disk).",
            value=dropped_lines(),
        )
