"""The jobs API's JSON views: a stored job and a run, timestamps as ISO-8601 in WATCHER_TIMEZONE."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from apscheduler.job import Job

from watcher.jobs.history import Run


def iso(tz: tzinfo, value: datetime | float | None) -> str | None:
    """A timestamp (aware datetime or Unix time) as ISO-8601 with offset in `tz`; None stays None."""
    if value is None:
        return None
    if isinstance(value, float | int):
        return datetime.fromtimestamp(value, tz).isoformat()
    return value.astimezone(tz).isoformat()


def job_view(job: Job, tz: tzinfo) -> dict[str, Any]:
    """A job as the API answers it (JobOut)."""
    spec = job.kwargs["spec"]
    return {
        "id": job.id,
        "kind": spec["kind"],
        "trigger": spec["trigger"],
        "args": spec["args"],
        "next_run_time": iso(tz, job.next_run_time),
        "paused": job.next_run_time is None,
    }


def run_view(run: Run, tz: tzinfo) -> dict[str, Any]:
    """One run as the API answers it (newest first in ``/jobs/{id}/runs``)."""
    view = {
        "started_at": iso(tz, run.started_at),
        "finished_at": iso(tz, run.finished_at),
        "outcome": run.outcome,
        "error": run.error,
        "detail": run.detail,
    }
    if run.replica is not None:  # cluster mode: the replica that ran it
        view["replica"] = run.replica
    return view
