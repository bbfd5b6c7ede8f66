"""Scheduled maintenance: jobs are data (a kind from a closed registry, validated args, a trigger).

- :mod:`~watcher.jobs.specs`: the pydantic models of the API (requests, answers, per-kind args)
- :mod:`~watcher.jobs.triggers`: specs → APScheduler triggers, with errors naming the field
- :mod:`~watcher.jobs.kinds`: the registry: ``rescan``, ``purge``, ``retry_failed``, ``sweep``
- :mod:`~watcher.jobs.runner`: the one function every stored job names
- :mod:`~watcher.jobs.context`: how that function finds the running service
- :mod:`~watcher.jobs.history`: the run history table
- :mod:`~watcher.jobs.scheduler`: APScheduler's scheduler, surviving store outages
- :mod:`~watcher.jobs.runtime`: :class:`~watcher.jobs.runtime.JobRuntime`, the schedule's life cycle and runs
- :mod:`~watcher.jobs.service`: :class:`JobService`, the jobs API on top of it
- :mod:`~watcher.jobs.views`: the API's JSON views of jobs and runs
"""

from watcher.jobs.service import JobService

__all__ = ["JobService"]
