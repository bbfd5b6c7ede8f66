"""JobService: the jobs API over the running schedule (create, read, change, delete, pause, resume,
run now, runs), with its JSON views in :mod:`watcher.jobs.views`.

Database calls go through ``asyncio.to_thread``; the life cycle is :class:`~watcher.jobs.runtime.JobRuntime`'s.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from pydantic import ValidationError

from watcher.jobs.errors import InvalidJob, JobConflict, JobNotFound, SchedulerUnavailable
from watcher.jobs.runner import run_job
from watcher.jobs.runtime import JOB_DEFAULTS, JobRuntime, log
from watcher.jobs.scheduler import ResilientScheduler
from watcher.jobs.specs import ARGS_MODELS, JobPatch, NewJob, field_errors
from watcher.jobs.triggers import compile_trigger, tidy_numbers
from watcher.jobs.views import job_view, run_view


class JobService(JobRuntime):
    """The schedule of one service as the jobs API sees it."""

    def _running_scheduler(self) -> ResilientScheduler:
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            raise SchedulerUnavailable("the scheduler is not running: the service is starting or stopping")
        return scheduler

    def view(self, job: Job) -> dict[str, Any]:
        """A job as the API answers it (JobOut)."""
        return job_view(job, self.tz)

    async def _job(self, job_id: str) -> Job:
        job = await asyncio.to_thread(self._running_scheduler().get_job, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def next_run(self, job_id: str) -> float | None:
        """Unix time of the job's next run; None when paused, absent or the scheduler is down."""
        try:
            job = await self._job(job_id)
        except (JobNotFound, SchedulerUnavailable):
            return None
        return job.next_run_time.timestamp() if job.next_run_time is not None else None

    async def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, by id."""
        jobs = await asyncio.to_thread(self._running_scheduler().get_jobs)
        return [self.view(job) for job in sorted(jobs, key=lambda j: j.id)]

    async def get(self, job_id: str) -> dict[str, Any]:
        """One job, or JobNotFound."""
        return self.view(await self._job(job_id))

    async def create(self, new: NewJob) -> dict[str, Any]:
        """Add a job; JobConflict when the id is taken, InvalidJob when its trigger cannot run."""
        scheduler = self._running_scheduler()
        job_id = new.id or uuid.uuid4().hex
        compiled = await asyncio.to_thread(compile_trigger, new.trigger, self.tz, datetime.now(self.tz))
        spec = {"kind": new.kind, "args": tidy_numbers(new.args.model_dump(mode="json")), "trigger": compiled.spec}

        def add() -> Job:
            job = scheduler.add_job(
                run_job,
                trigger=compiled.trigger,
                id=job_id,
                name=job_id,
                kwargs={"job_id": job_id, "spec": spec},
                next_run_time=compiled.first_run,
                **JOB_DEFAULTS,
            )
            assert self.history is not None
            self.history.delete(job_id)  # runs left by a finished one-off job of the same id
            return job

        try:
            job = await asyncio.to_thread(add)
        except ConflictingIdError:
            raise JobConflict(f"a job with id {job_id!r} exists; pick another id or PATCH it") from None
        self._deleted.discard(job_id)
        self._init_metrics(job_id)
        log.info("job.created", job=job_id, kind=new.kind, trigger=compiled.spec)
        return self.view(job)

    async def patch(self, job_id: str, patch: JobPatch) -> dict[str, Any]:
        """Replace the trigger and/or the args of a job; a paused job stays paused."""
        scheduler = self._running_scheduler()
        job = await self._job(job_id)
        spec = dict(job.kwargs["spec"])
        changes: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        if patch.args is not None:
            try:
                args = ARGS_MODELS[spec["kind"]].model_validate(patch.args)
                spec["args"] = tidy_numbers(args.model_dump(mode="json"))
            except ValidationError as exc:
                problems += field_errors(exc, prefix="args")
        if patch.trigger is not None:
            try:
                compiled = await asyncio.to_thread(compile_trigger, patch.trigger, self.tz, datetime.now(self.tz))
            except InvalidJob as exc:
                problems += exc.problems
            else:
                spec["trigger"] = compiled.spec
                changes["trigger"] = compiled.trigger
                changes["next_run_time"] = None if job.next_run_time is None else compiled.first_run
        if problems:
            raise InvalidJob(problems)
        changes["kwargs"] = {"job_id": job_id, "spec": spec}
        try:
            job = await asyncio.to_thread(scheduler.modify_job, job_id, **changes)
        except JobLookupError:
            raise JobNotFound(f"no job with id {job_id!r}") from None
        log.info("job.modified", job=job_id, trigger=spec["trigger"], args=spec["args"])
        return self.view(job)

    async def delete(self, job_id: str) -> None:
        """Remove a job and its history (also the history of a finished one-off job)."""
        scheduler = self._running_scheduler()
        history = self.history
        assert history is not None

        def remove() -> bool:
            try:
                scheduler.remove_job(job_id)
                found = True
            except JobLookupError:
                found = bool(history.runs(job_id))
            history.delete(job_id)
            return found

        if not await asyncio.to_thread(remove):
            raise JobNotFound(f"no job with id {job_id!r}")
        self._deleted.add(job_id)
        self._drop_metrics(job_id)
        log.info("job.deleted", job=job_id)

    async def pause(self, job_id: str) -> dict[str, Any]:
        """Stop scheduling a job until it is resumed (run-now still works)."""
        scheduler = self._running_scheduler()
        await self._job(job_id)
        try:
            job = await asyncio.to_thread(scheduler.pause_job, job_id)
        except JobLookupError:
            raise JobNotFound(f"no job with id {job_id!r}") from None
        return self.view(job)

    async def resume(self, job_id: str) -> dict[str, Any]:
        """Schedule a paused job again from now; JobConflict when its trigger has no future run."""
        scheduler = self._running_scheduler()

        def resume() -> Job | None:
            job = scheduler.get_job(job_id)
            if job is None or job.next_run_time is not None:
                return job
            next_run = job.trigger.get_next_fire_time(None, datetime.now(self.tz))
            if next_run is None:
                raise JobConflict(f"job {job_id!r} has no future run time; PATCH its trigger first")
            modified: Job = scheduler.modify_job(job_id, next_run_time=next_run)
            return modified

        try:
            job = await asyncio.to_thread(resume)
        except JobLookupError:
            job = None
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return self.view(job)

    async def run_now(self, job_id: str) -> dict[str, Any]:
        """Start one run now, beside the schedule (after a running instance, if any)."""
        job = await self._job(job_id)
        self._spawn(self.execute(job_id, job.kwargs["spec"]))
        return self.view(job)

    async def runs(self, job_id: str) -> list[dict[str, Any]]:
        """The job's runs, newest first; JobNotFound when neither the job nor any run exists."""
        assert self.history is not None
        rows = await asyncio.to_thread(self.history.runs, job_id)
        if not rows and job_id not in self._active:
            await self._job(job_id)
        return [run_view(r, self.tz) for r in rows]
