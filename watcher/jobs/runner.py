"""The one callable every stored job names: ``watcher.jobs.runner:run_job``.

Whatever a request says, the job store only ever holds a reference to this function plus plain data
(the job id and its validated spec). The kind in the spec is looked up in the closed registry of
:mod:`watcher.jobs.kinds` at run time, so nothing in a request can name code to import or run.
"""

from __future__ import annotations

from typing import Any

from watcher.jobs import context


async def run_job(job_id: str, spec: dict[str, Any]) -> None:
    """Run one job through the running service (see :mod:`watcher.jobs.context` for why)."""
    await context.current().execute(job_id, spec)


RUN_JOB_REF = f"{run_job.__module__}:{run_job.__qualname__}"
