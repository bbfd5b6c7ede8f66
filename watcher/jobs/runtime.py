"""The schedule's life cycle: APScheduler on the service's event loop, its SQLAlchemy job store,
the run history, and running the jobs (the API on top is :mod:`watcher.jobs.service`).

Life cycle (driven by :class:`watcher.service.Service`): :meth:`JobRuntime.open` before anything
else starts (a bad WATCHER_JOBSTORE_URL stops the service at once), :meth:`JobRuntime.start` after
the pipeline runs, :meth:`JobRuntime.stop` first at shutdown, before the pipeline drains and HTTP
closes.

Database calls of the API and of the run history go through ``asyncio.to_thread``. APScheduler 3
itself reads due jobs and writes their next run time on the loop when it wakes up; with SQLite in
the state dir that is a local file access of a millisecond or so.

Defaults of every job: ``coalesce`` (runs missed while the service was down collapse into one),
``max_instances=1`` (a job never overlaps itself; run-now waits for a running instance), and a
misfire grace time of one hour (a restart within the hour still runs a job that fell due while the
service was down; a run later than that is recorded as ``missed``).

Store outages (an unwritable state dir, a locked SQLite file, a restarted PostgreSQL) never stop the
schedule: :class:`~watcher.jobs.scheduler.ResilientScheduler` retries every
:data:`STORE_RETRY_SECONDS` and reports each run that could not happen as an ``error`` run; a watchdog
re-arms a scheduler whose wake-up failed anyway; and the ``schedule_store`` readiness check fails
while the store refuses a write or the scheduler's last wake-up met a store error.

Built-in jobs, present from start-up: ``rescan`` (follows WATCHER_RESCAN_INTERVAL at each start) and
a paused ``retry_failed`` (created when missing, otherwise left as the operator made it), so the advice
in every ``.error.json`` (``POST /jobs/retry_failed/run``) works on a fresh service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from watcher.config import ConfigError, Settings
from watcher.jobs import context
from watcher.jobs.history import Run, RunHistory
from watcher.jobs.kinds import KINDS, KindContext, KindFailed
from watcher.jobs.runner import RUN_JOB_REF, run_job
from watcher.jobs.scheduler import ResilientScheduler, ScheduleStore
from watcher.jobs.triggers import rescan_trigger, retry_failed_trigger
from watcher.logging import get_logger
from watcher.metrics import Metrics

log = get_logger(__name__)

RESCAN_JOB_ID = "rescan"
RETRY_FAILED_JOB_ID = "retry_failed"
MISFIRE_GRACE_SECONDS = 3600
JOB_DEFAULTS: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS}
OUTCOMES = ("success", "error", "missed")
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 3.0
STORE_RETRY_SECONDS = 5.0  # a wake-up that met a store error tries again this soon
WATCHDOG_SECONDS = 5.0  # how often the watchdog looks for a scheduler with no wake-up pending


class ScheduleStoreError(RuntimeError):
    """The schedule store cannot be opened (unreachable database, wrong credentials)."""


def make_engine(url: str) -> Engine:
    """An engine for WATCHER_JOBSTORE_URL; a bare ``postgresql://`` uses psycopg 3 (the extra)."""
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"WATCHER_JOBSTORE_URL is invalid: {exc}; use an SQLAlchemy URL") from None
    except ImportError as exc:
        raise ConfigError(
            f"WATCHER_JOBSTORE_URL needs a database driver that is not installed ({exc.name}); "
            "for PostgreSQL: pip install 'watcher[postgres]'"
        ) from None


class JobRuntime:
    """The schedule of one service: opened, started, checked and stopped by the service; stored jobs
    call :meth:`execute`.
    """

    def __init__(self, settings: Settings, metrics: Metrics, rescan: Callable[[], Awaitable[int]]) -> None:
        """Hold the settings; nothing touches the database before :meth:`open`."""
        self.settings = settings
        self.metrics = metrics
        self.tz: tzinfo = ZoneInfo(settings.timezone)
        self.abort = threading.Event()
        self.kind_context = KindContext(
            inbox=settings.inbox,
            outbox=settings.outbox,
            failed=settings.failed_path,
            fsync=settings.fsync,
            rescan=rescan,
            abort=self.abort,
        )
        self.engine: Engine | None = None
        self.history: RunHistory | None = None
        self.store: ScheduleStore | None = None
        self.scheduler: ResilientScheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._active: dict[str, int] = {}  # job id → runs in progress (a one-off job leaves the store first)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deleted: set[str] = set()
        self._stopping = asyncio.Event()
        self._probe: asyncio.Future[None] | None = None  # the readiness write probe in flight
        # The scheduler's own view of the store: since when its wake-ups fail, and why.
        self._store_failing_since: float | None = None
        self._store_error = ""
        self._runs_not_run = 0
        self._leader = False  # cluster mode: this replica holds the leader lock

    # ---- life cycle --------------------------------------------------------------------------

    @property
    def store_name(self) -> str:
        """The store's URL, password hidden."""
        if self.engine is None:
            return self.settings.public_view()["jobstore_url"]  # type: ignore[no-any-return]
        return self.engine.url.render_as_string(hide_password=True)

    async def open(self) -> None:
        """Connect to the schedule store and create the history table (before the pipeline starts)."""
        self.engine = make_engine(self.settings.jobstore)
        self.history = RunHistory(self.engine)
        self.store = ScheduleStore(engine=self.engine)
        try:
            # The job store's table too: APScheduler would create it on start, racing other replicas.
            await asyncio.to_thread(self.history.create, self.store.jobs_t)
        except Exception as exc:
            raise ScheduleStoreError(f"schedule store {self.store_name} cannot be opened: {exc}") from exc

    async def start(self) -> None:
        """Start the scheduler on this loop, make the `rescan` job match the settings, then run jobs."""
        assert self.engine is not None and self.store is not None, "open() first"
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.abort.clear()
        self._stopping.clear()
        self._store_failing_since = None
        scheduler = ResilientScheduler(
            self,
            fence=self._fence if self.settings.cluster else None,
            jobstores={"default": self.store},
            executors={"default": AsyncIOExecutor()},
            job_defaults=JOB_DEFAULTS,
            timezone=self.tz,
            event_loop=loop,
            jobstore_retry_interval=STORE_RETRY_SECONDS,
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        # Our `job.run` line says what a run did; APScheduler's two info lines per run would only
        # repeat it (every WATCHER_RESCAN_INTERVAL seconds for the rescan).
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        context.install(self)
        # Started paused: stored jobs that fell due while the service was down must not run
        # before the store is audited and the rescan job matches this start's settings.
        await asyncio.to_thread(scheduler.start, paused=True)
        try:
            jobs = await asyncio.to_thread(self._prepare_store, scheduler)
        except BaseException:
            scheduler.shutdown(wait=False)
            context.uninstall(self)
            raise
        self.scheduler = scheduler  # from here on the API and readiness see it
        for job_id in jobs:
            self._init_metrics(job_id)
        if not self.settings.cluster or self._leader:  # cluster mode: only the leader runs the schedule
            scheduler.resume()
        self._spawn(self._watchdog(scheduler))
        log.info("jobs.started", store=self.store_name, jobs=len(jobs), rescan_interval=self.settings.rescan_interval)

    def _fence(self, job_id: str, run_time: datetime) -> bool:
        """Cluster mode: claim this (job, run time) in the run history; False when another replica has."""
        assert self.history is not None
        return self.history.fence(job_id, run_time.timestamp(), self.settings.replica_id)

    def set_leader(self, leader: bool) -> None:
        """Cluster mode: run the schedule (the leader lock is ours) or hold it paused (on the loop)."""
        self._leader = leader
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return
        if leader:
            scheduler.resume()
        else:
            scheduler.pause()

    def wakeup(self) -> None:
        """Cluster mode: look at the store now (jobs made or changed through other replicas)."""
        scheduler = self.scheduler
        if scheduler is not None and self._leader and scheduler.state == STATE_RUNNING:
            scheduler.wakeup()

    def _prepare_store(self, scheduler: ResilientScheduler) -> list[str]:
        """Drop stored jobs that are not ours; (re)create or remove `rescan`; ensure `retry_failed` (blocking)."""
        for job in scheduler.get_jobs():
            spec = job.kwargs.get("spec") if isinstance(job.kwargs, dict) else None
            if job.func_ref != RUN_JOB_REF or not isinstance(spec, dict) or spec.get("kind") not in KINDS:
                log.warning("jobs.foreign_job_removed", job=job.id, func=job.func_ref)
                scheduler.remove_job(job.id)
        interval = self.settings.rescan_interval
        if interval > 0:
            # WATCHER_RESCAN_INTERVAL is the source of truth at each start: always replaced
            _add_builtin(scheduler, RESCAN_JOB_ID, "rescan", *rescan_trigger(interval, self.tz))
        else:
            with contextlib.suppress(JobLookupError):
                scheduler.remove_job(RESCAN_JOB_ID)
            assert self.history is not None
            self.history.delete(RESCAN_JOB_ID)
        self._ensure_retry_failed(scheduler)
        return sorted(job.id for job in scheduler.get_jobs())

    def _ensure_retry_failed(self, scheduler: ResilientScheduler) -> None:
        """Create the paused built-in `retry_failed` job when it is missing (blocking).

        Every `.error.json` and runbook says ``POST /jobs/retry_failed/run``, so the id must exist on
        any service. An existing job of that kind is the operator's (resumed, re-timed): left as it
        is. One of another kind (created by hand before this job was built in) would make that
        advice do something else, so it is replaced, and the log says so.
        """
        job = scheduler.get_job(RETRY_FAILED_JOB_ID)
        if job is not None:
            if job.kwargs["spec"]["kind"] == "retry_failed":
                return
            log.warning(
                "jobs.builtin_replaced",
                job=RETRY_FAILED_JOB_ID,
                kind=job.kwargs["spec"]["kind"],
                reason="the id is reserved for the built-in retry_failed job that quarantine advice names",
            )
        # paused (no next run time): runs only when asked (POST /jobs/retry_failed/run) or resumed
        _add_builtin(scheduler, RETRY_FAILED_JOB_ID, "retry_failed", *retry_failed_trigger(self.tz), next_run_time=None)

    async def stop(self) -> None:
        """Stop scheduling, interrupt running jobs (bounded) and record them; the store stays open
        until :meth:`close`.
        """
        scheduler, self.scheduler = self.scheduler, None
        self.abort.set()
        self._stopping.set()
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
            # AsyncIOScheduler.shutdown() only queues the real shutdown on the loop with
            # call_soon_threadsafe; a callback queued after it runs after it (FIFO).
            done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(done.set_result, None)
            await done
        pending = self._tasks | self._running
        for task in pending:
            task.cancel()
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
            if late:
                log.warning("jobs.stop_timeout", still_running=len(late))
        context.uninstall(self)
        log.info("jobs.stopped", interrupted=len(pending))

    async def close(self) -> None:
        """Release the store's connections (last at shutdown, and after a failed start-up)."""
        if self.engine is not None:
            await asyncio.to_thread(self.engine.dispose)

    async def check(self) -> tuple[bool, str]:
        """The ``schedule_store`` readiness check: the schedule is armed and the store takes a write.

        The write is rolled back (:meth:`RunHistory.probe_write`) and bounded by READY_TIMEOUT; at most
        one is in flight, so probes against a hanging database do not pile up threads.
        """
        scheduler, history = self.scheduler, self.history
        if scheduler is None or history is None:
            return False, "scheduler not running"
        if scheduler.stalled:
            return False, "the schedule has stopped: no wake-up is pending (the watchdog re-arms it)"
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.ensure_future(asyncio.to_thread(history.probe_write))
        try:
            await asyncio.wait_for(asyncio.shield(probe), READY_TIMEOUT)
        except TimeoutError:
            return False, f"{self.store_name} did not take a write within {READY_TIMEOUT:g} s"
        except Exception as exc:  # noqa: BLE001 - any driver error means "not writable"
            return False, f"{self.store_name} refuses writes: {_first_line(exc)}"
        if self._store_failing_since is not None:
            # The probe passed, but the scheduler's last wake-up did not: ready again after its next one.
            since = time.time() - self._store_failing_since
            return False, (
                f"{self.store_name}: the scheduler's wake-ups fail since {since:.0f} s ({self._store_error}); "
                f"retrying every {STORE_RETRY_SECONDS:g} s"
            )
        return True, f"{self.store_name} writable"

    # ---- store outages (StoreListener, called on the loop by the scheduler) --------------------

    def store_failed(self, error: Exception) -> None:
        """A scheduler wake-up met a store error: fail readiness, log once per outage."""
        self._store_error = _first_line(error)
        if self._store_failing_since is None:
            self._store_failing_since = time.time()
            log.error(
                "jobs.store_failed",
                store=self.store_name,
                error=self._store_error,
                retry_seconds=STORE_RETRY_SECONDS,
                action="scheduled runs wait until the store takes writes again; readiness fails meanwhile",
            )

    def store_ok(self) -> None:
        """A scheduler wake-up used the store: the outage, if any, is over."""
        since = self._store_failing_since
        if since is None:
            return
        self._store_failing_since = None
        log.info(
            "jobs.store_recovered",
            store=self.store_name,
            seconds=round(time.time() - since, 1),
            runs_not_run=self._runs_not_run,
        )
        self._runs_not_run = 0

    def job_not_run(self, job_id: str, due: datetime, error: Exception) -> None:
        """A due run did not happen because of the store: an ``error`` run (metric, log, history if it can)."""
        self._runs_not_run += 1
        message = (
            f"not run: the schedule store failed ({_first_line(error)}); the job runs once the store takes writes again"
        )
        run = Run(job_id, due.timestamp(), time.time(), "error", message)
        self._spawn(self._record(run))

    async def _watchdog(self, scheduler: ResilientScheduler) -> None:
        """Re-arm the scheduler if a wake-up failed in a way it did not catch (defence in depth)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WATCHDOG_SECONDS)
            if scheduler.stalled and not self._stopping.is_set():
                log.error("jobs.schedule_rearmed", reason="no scheduler wake-up was pending: the last one failed")
                scheduler.wakeup()

    # ---- running jobs ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def execute(self, job_id: str, spec: dict[str, Any]) -> None:
        """Run one job now, one instance per job at a time, and record the run (never raises but for cancel)."""
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        self._active[job_id] = self._active.get(job_id, 0) + 1
        try:
            await self._execute(job_id, spec, lock)
        finally:
            self._active[job_id] -= 1
            if not self._active[job_id]:
                del self._active[job_id]

    async def _execute(self, job_id: str, spec: dict[str, Any], lock: asyncio.Lock) -> None:
        async with lock:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            started = time.time()
            outcome, error, detail = "success", None, None
            try:
                kind = KINDS[spec["kind"]]
                args = kind.args.model_validate(spec.get("args", {}))
                detail = await kind.run(self.kind_context, args)
            except asyncio.CancelledError:
                run = Run(job_id, started, time.time(), "error", "interrupted: the service stopped during the run")
                await self._record(run)
                raise
            except KindFailed as exc:
                outcome, error, detail = "error", str(exc), exc.detail
            except Exception as exc:
                log.error("job.failed", job=job_id, kind=spec.get("kind"), exc_info=exc)
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
            finally:
                self._running.discard(task)
        await self._record(Run(job_id, started, time.time(), outcome, error, detail))

    async def _record(self, run: Run) -> None:
        if self.settings.cluster:
            run = replace(run, replica=self.settings.replica_id)
        if run.job_id in self._deleted:
            return  # deleted while it ran: its history and metrics are gone with it
        self.metrics.job_runs.labels(job_id=run.job_id, outcome=run.outcome).inc()
        if run.outcome == "success":
            self.metrics.job_last_success.labels(job_id=run.job_id).set(run.finished_at)
        # A rescan that found nothing is the steady state: not worth a line every interval.
        quiet = run.outcome == "success" and run.detail == {"files_found": 0}
        (log.debug if quiet else log.info)(
            "job.run",
            job=run.job_id,
            outcome=run.outcome,
            seconds=round(run.finished_at - run.started_at, 3),
            error=run.error,
            detail=run.detail,
        )
        assert self.history is not None
        try:
            await asyncio.to_thread(self.history.record, run)
        except Exception as exc:  # noqa: BLE001 - the run happened; losing its record must not fail it
            log.error("job.history_write_failed", job=run.job_id, error=str(exc))

    def _on_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        """APScheduler listener (called on the loop by the executor's callback, or by _process_jobs)."""
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("job.skipped", job=event.job_id, reason="the previous run is still going (max_instances 1)")
            return
        assert isinstance(event, JobExecutionEvent)
        scheduled = event.scheduled_run_time
        run = Run(
            event.job_id,
            scheduled.timestamp(),
            time.time(),
            "missed",
            f"not run: due at {scheduled.astimezone(self.tz).isoformat()}, more than the misfire grace time "
            f"({MISFIRE_GRACE_SECONDS} s) ago",
        )
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: self._spawn(self._record(run)))

    def _init_metrics(self, job_id: str) -> None:
        for outcome in OUTCOMES:
            self.metrics.job_runs.labels(job_id=job_id, outcome=outcome)

    def _drop_metrics(self, job_id: str) -> None:
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                self.metrics.job_runs.remove(job_id, outcome)
        with contextlib.suppress(KeyError):
            self.metrics.job_last_success.remove(job_id)


def _first_line(exc: BaseException) -> str:
    """A driver error in one line (SQLAlchemy appends the statement and its parameters)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _add_builtin(
    scheduler: ResilientScheduler,
    job_id: str,
    kind: str,
    trigger: BaseTrigger,
    trigger_spec: dict[str, Any],
    **options: Any,
) -> None:
    """Store a built-in job under `job_id`, replacing one of that id (blocking)."""
    spec = {"kind": kind, "args": {}, "trigger": trigger_spec}
    scheduler.add_job(
        run_job,
        trigger=trigger,
        id=job_id,
        name=job_id,
        kwargs={"job_id": job_id, "spec": spec},
        replace_existing=True,
        **JOB_DEFAULTS,
        **options,
    )
