"""The scheduler: APScheduler 3's AsyncIOScheduler whose wake-up survives schedule store errors.

Why a subclass. APScheduler 3.11 wakes up on a ``loop.call_later`` timer and runs
``_process_jobs`` on the loop: it reads the due jobs, submits each to the executor, then writes the
job's next run time with ``update_job`` (or ``remove_job`` for a finished one-off job), and arms the
timer again with what ``_process_jobs`` returned. Only ``get_due_jobs`` is guarded (a warning and a
retry after ``jobstore_retry_interval``). An error of ``update_job``, ``remove_job`` or
``get_next_run_time`` escapes ``_process_jobs``, so ``wakeup`` never reaches ``_start_timer``: the
schedule stops for good, the job's stored next run time stays in the past, and nothing says so. That
is what an unwritable state dir did (``sqlite3.OperationalError: unable to open database file`` from
``SQLAlchemyJobStore.update_job``: SQLite cannot create its journal next to the database).

:class:`ResilientScheduler` replaces ``_process_jobs`` with one that

- writes a due job's next run time *before* it submits the run: a run whose schedule cannot be
  advanced does not happen, and is reported (:class:`StoreListener.job_not_run`) instead of running
  again at every retry while the store refuses writes (a ``retry_failed`` or ``purge`` job would
  otherwise repeat every few seconds for the whole outage). After the outage the job is still due in
  the store and runs once (coalesced), or is recorded ``missed`` beyond the misfire grace time;
- treats any error of a store call as a store outage: reported once per pass
  (:meth:`StoreListener.store_failed`), and the timer is armed again after ``jobstore_retry_interval``;
- reports the first pass that works again (:meth:`StoreListener.store_ok`);
- says when its timer is not armed although it should be (:attr:`ResilientScheduler.stalled`), for
  the job service's watchdog, which covers anything else that might still escape a wake-up.

It keeps APScheduler's behaviour otherwise (executor lookup, coalescing, max instances, events), and
is written against the 3.11 internals (``_jobstores``, ``_jobstores_lock``, ``Job._get_run_times``);
pyproject pins ``apscheduler<4``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from threading import TIMEOUT_MAX
from typing import Any, Protocol

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_REMOVED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.jobstores.base import BaseJobStore, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from sqlalchemy import null, select

from watcher.logging import get_logger

log = get_logger(__name__)


class StoreListener(Protocol):
    """What the scheduler tells its owner about the store (called on the event loop)."""

    def store_failed(self, error: Exception) -> None:
        """A wake-up could not use the store; the scheduler retries after its retry interval."""

    def store_ok(self) -> None:
        """A wake-up used the store without an error."""

    def job_not_run(self, job_id: str, due: datetime, error: Exception) -> None:
        """The run of `job_id` due at `due` did not happen because the store failed (once per due time)."""


Fence = Callable[[str, datetime], bool]


class ScheduleStore(SQLAlchemyJobStore):  # type: ignore[misc]  # untyped base (apscheduler has no stubs)
    """APScheduler's SQLAlchemy job store, plus the schedule at a glance (ids and next run times)."""

    def upcoming(self) -> list[tuple[str, float]]:
        """``(job id, next run time as a UTC timestamp)`` of every scheduled job, soonest first.

        One query without unpickling, as cheap as ``get_next_run_time``; the scheduler keeps the
        answer so that, when the store cannot even be read, it still knows which runs it misses.
        """
        t = self.jobs_t
        query = select(t.c.id, t.c.next_run_time).where(t.c.next_run_time != null()).order_by(t.c.next_run_time)
        with self.engine.begin() as conn:
            return [(str(row.id), float(row.next_run_time)) for row in conn.execute(query)]


class ResilientScheduler(AsyncIOScheduler):  # type: ignore[misc]  # untyped base (apscheduler has no stubs)
    """An AsyncIOScheduler whose schedule survives store errors (see the module docstring)."""

    def __init__(self, listener: StoreListener, fence: Fence | None = None, **options: Any) -> None:
        """`options` as for AsyncIOScheduler (``jobstore_retry_interval`` sets the retry delay).

        `fence` (cluster mode) is asked before each due run is submitted: False means another
        replica has claimed that (job, run time) already, and the run is skipped here.
        """
        self._listener = listener
        self._fence = fence
        self._upcoming: list[tuple[str, float]] = []  # as of the last pass that could read the store
        self._reported: set[tuple[str, float]] = set()  # (job, due time) already reported as not run
        self._armed = False  # the timer is pending (or its wake-up is queued on the loop)
        self._idle = False  # the last pass found nothing scheduled: no timer is the right state
        super().__init__(**options)

    # ---- the timer ---------------------------------------------------------------------------

    def _start_timer(self, wait_seconds: float | None) -> None:
        super()._start_timer(wait_seconds)
        self._armed = wait_seconds is not None
        self._idle = wait_seconds is None

    def _stop_timer(self) -> None:
        super()._stop_timer()
        self._armed = self._idle = False

    def wakeup(self) -> None:
        """Queue a wake-up on the loop (thread-safe); counts as armed until it has run."""
        self._armed = True
        super().wakeup()

    @property
    def stalled(self) -> bool:
        """Running, not paused, jobs scheduled, and yet no wake-up pending: the schedule has stopped.

        Read on the loop: a wake-up stops the timer and arms it again within one callback, so
        between callbacks only a wake-up that raised leaves both flags down.
        """
        return bool(self.state == STATE_RUNNING and not self._armed and not self._idle)

    # ---- one wake-up -------------------------------------------------------------------------

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING:
            return None  # paused: resume() wakes us up
        now = datetime.now(self.timezone)
        events: list[JobEvent] = []
        next_wakeup: float | None = None
        failure: Exception | None = None
        with self._jobstores_lock:
            for alias, store in self._jobstores.items():
                try:
                    store_next = self._process_store(alias, store, now, events)
                except Exception as exc:  # noqa: BLE001 - any driver error: the store is out, retry
                    failure = exc
                    store_next = now.timestamp() + self.jobstore_retry_interval
                if store_next is not None and (next_wakeup is None or store_next < next_wakeup):
                    next_wakeup = store_next
        for event in events:
            self._dispatch_event(event)
        if failure is not None:
            self._listener.store_failed(failure)
        else:
            self._reported.clear()
            self._listener.store_ok()
        if next_wakeup is None:
            return None
        return min(max(next_wakeup - datetime.now(self.timezone).timestamp(), 0.0), TIMEOUT_MAX)

    def _process_store(self, alias: str, store: BaseJobStore, now: datetime, events: list[JobEvent]) -> float | None:
        """Run the due jobs of one store; the UTC timestamp of its next run, or None (raises on store errors)."""
        failure: Exception | None = None
        try:
            due_jobs = store.get_due_jobs(now)
        except Exception as exc:
            self._report_not_run(now, exc)
            raise
        for job in due_jobs:
            try:
                executor = self._lookup_executor(job.executor)
            except KeyError:
                self._logger.error('Executor lookup ("%s") failed for job "%s": removing it', job.executor, job)
                self.remove_job(job.id, alias)
                continue
            run_times = job._get_run_times(now)
            run_times = run_times[-1:] if run_times and job.coalesce else run_times
            if not run_times:
                continue
            # The next run time is stored first (APScheduler submits first): a run that the store
            # cannot account for is reported and happens later, not repeated at every retry.
            next_run = job.trigger.get_next_fire_time(run_times[-1], now)
            stored_due = job.next_run_time
            try:
                if next_run:
                    job._modify(next_run_time=next_run)
                    store.update_job(job)
                else:
                    try:
                        store.remove_job(job.id)
                    except JobLookupError:
                        continue  # removed through the API meanwhile
                    events.append(JobEvent(EVENT_JOB_REMOVED, job.id, alias))
            except Exception as exc:  # noqa: BLE001 - the other due jobs may still be stored and run
                failure = exc
                self._not_run(job.id, stored_due.timestamp(), exc)
                continue
            if self._fence is not None:
                try:
                    if not self._fence(job.id, run_times[-1]):
                        continue  # another replica runs this one (a stale leader's second look)
                except Exception as exc:  # noqa: BLE001 - not fenced, not run: reported as a store failure
                    failure = exc
                    self._not_run(job.id, stored_due.timestamp(), exc)
                    continue
            try:
                executor.submit_job(job, run_times)
            except MaxInstancesReachedError:
                self._logger.warning('Execution of job "%s" skipped: %d instance(s) running', job, job.max_instances)
                events.append(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job.id, alias, run_times))
            except Exception:
                self._logger.exception('Error submitting job "%s" to executor "%s"', job, job.executor)
            else:
                events.append(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job.id, alias, run_times))
        if isinstance(store, ScheduleStore):
            self._upcoming = store.upcoming()
            soonest = self._upcoming[0][1] if self._upcoming else None
        else:
            next_time = store.get_next_run_time()
            soonest = None if next_time is None else next_time.timestamp()
        if failure is not None:
            raise failure
        return soonest

    def _report_not_run(self, now: datetime, error: Exception) -> None:
        """The store could not be read: the runs it had scheduled until now did not happen."""
        for job_id, due in self._upcoming:
            if due > now.timestamp():
                break
            self._not_run(job_id, due, error)

    def _not_run(self, job_id: str, due: float, error: Exception) -> None:
        # Keyed by the due time as stored, the same whether the read or the write failed.
        if (job_id, due) in self._reported:
            return  # the same missed due time, seen again at a retry
        self._reported.add((job_id, due))
        self._listener.job_not_run(job_id, datetime.fromtimestamp(due, self.timezone), error)
