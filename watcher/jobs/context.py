"""The process-level registry through which a stored job finds the running service.

APScheduler persists a job as a *textual reference* to a module-level function plus pickled
arguments, and calls that function after a restart in a process that never saw the request. A bound
method of the live service cannot be stored that way (its ``self`` holds an event loop, queues and
threads, none of which can be pickled or should outlive the process), and a closure has no importable
name. So the stored callable (:func:`watcher.jobs.runner.run_job`) holds only plain data, and looks
the live runtime up here. :class:`~watcher.jobs.runtime.JobRuntime` installs itself at start and
removes itself at stop; a job that fires outside that window fails loudly instead of acting on a
half-built or stopped service.

One service per process is the deployment model (``watcher run``). Tests that run services one after
another in one process install each in turn; a newer install replaces an older one.
"""

from __future__ import annotations

from typing import Any, Protocol


class JobRuntime(Protocol):
    """What a stored job needs from the running service."""

    async def execute(self, job_id: str, spec: dict[str, Any]) -> None:
        """Run the job `job_id` described by `spec` (kind, args, trigger) and record its run."""


_current: JobRuntime | None = None


def install(runtime: JobRuntime) -> None:
    """Make `runtime` the one stored jobs call (JobService.start)."""
    global _current
    _current = runtime


def uninstall(runtime: JobRuntime) -> None:
    """Remove `runtime` (JobService.stop); a no-op when another one is installed."""
    global _current
    if _current is runtime:
        _current = None


def current() -> JobRuntime:
    """The installed runtime, or RuntimeError when no service is running in this process."""
    if _current is None:
        raise RuntimeError("no watcher service is running in this process: scheduled jobs cannot run")
    return _current
