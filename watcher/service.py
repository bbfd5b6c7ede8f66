"""The composition root: builds everything from one Settings object, starts in order, stops in
reverse, and owns the signals (the only module that imports ``signal``).

:meth:`Service.run` is one :class:`contextlib.AsyncExitStack`: each part is entered in start-up
order and pushes its own release, so a failure at any step releases what came before it (the
socket, the database engine, the signal handlers, the threads) in reverse order, and a normal stop
is the same unwinding. Every release takes what is left of one deadline,
WATCHER_SHUTDOWN_TIMEOUT + :data:`STOP_MARGIN` seconds, counted from the moment the stop began.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from watcher import __version__
from watcher.config import Settings
from watcher.directories import prepare_directories, sweep_stale_temp_files
from watcher.health import Health
from watcher.http.app import create_app
from watcher.http.cluster_api import cluster_routes
from watcher.http.jobs_api import job_routes
from watcher.http.limits import Limits
from watcher.http.record_api import record_routes
from watcher.http.server import HttpServer, bind_socket
from watcher.jobs import JobService
from watcher.jobs.runtime import RESCAN_JOB_ID
from watcher.lifecycle import PHASE_CAP, STOP_MARGIN, StopDeadline, run_until_exit
from watcher.logging import get_logger
from watcher.metrics import Metrics, create_metrics
from watcher.pipeline.intake import Intake, Tracked
from watcher.pipeline.observer import EventBridge
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.pipeline.progress import BacklogProgress
from watcher.pipeline.supervisor import ObserverSupervisor
from watcher.pipeline.workers import WorkerPool
from watcher.record import DeliveryRecord
from watcher.record.explain import Explainer
from watcher.record.retention import keep_tidy, open_record

if TYPE_CHECKING:
    from watcher.cluster.membership import Membership

log = get_logger(__name__)
STALE_TEMP_AGE = 3600.0  # cluster mode: a temporary file this old is no replica's copy in progress

HTTP_RESERVE = 1.5  # seconds of the deadline kept for closing HTTP after the drain
API_READ_ONLY = "read-only: set WATCHER_API_TOKEN to change jobs"
API_READ_WRITE = "read-write with the bearer token of WATCHER_API_TOKEN"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Service:
    """One running watcher: observer, intake, workers, rescan and HTTP in one event loop."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        """Build the parts; nothing starts before :meth:`run`."""
        self.settings = settings
        self.metrics = metrics or create_metrics()
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()  # set once the observer, workers, jobs and HTTP are up
        self.queue: asyncio.Queue[Tracked] = asyncio.Queue(maxsize=settings.queue_size)
        self.intake = Intake(settings, self.metrics, self.queue)
        # Every file that leaves the inbox leaves a row; a record that cannot be written pauses
        # delivery exactly as an unusable outbox does.
        self.record = DeliveryRecord(settings.record_url)
        self.gate = OutboxGate(settings.outbox, self.metrics, also=self.record.problem)
        self.workers = WorkerPool(settings, self.metrics, self.intake, self.queue, self.gate, self.record)
        # The schedule (APScheduler + its store); its `rescan` job replaces an interval loop.
        self.jobs = JobService(settings, self.metrics, self.rescan)
        self.supervisor: ObserverSupervisor | None = None
        self.progress = BacklogProgress()
        self.membership: Membership | None = None
        if settings.cluster:
            from watcher.cluster.membership import Membership  # psycopg (an extra) only in cluster mode

            self.membership = Membership(settings, self.metrics, self.jobs.set_leader, self.jobs.wakeup)
            self.intake.owns = self.membership.owns  # an event's file goes to one replica, not to a race
        self.health = Health(
            settings,
            self.metrics,
            self.gate,
            self._observer_status,
            self.jobs.check,
            self.record.problem,
            self.membership.check if self.membership is not None else None,
        )
        self._signals = 0
        self.deadline = StopDeadline(settings.shutdown_timeout + STOP_MARGIN)
        self._interrupted = 0

    # ---- signals -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First SIGTERM/SIGINT: graceful stop. A second one: abort in-flight copies at once."""
        # Act first, then log: a stop must never depend on the log output working.
        self._signals += 1
        if self._signals == 1:
            self.stop_event.set()
            log.info("service.stopping", reason="signal")
        else:
            self.workers.interrupt()
            log.warning("service.stopping_now", reason="second signal: interrupting transfers")

    @contextlib.contextmanager
    def _signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Handle SIGTERM and SIGINT on the loop; restore the previous handlers afterwards (as
        uvicorn's ``capture_signals`` does), so an embedding program gets its own back.
        """
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for sig in previous:
                loop.add_signal_handler(sig, self.request_stop)
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    # ---- health and gauges ---------------------------------------------------------------------

    def _observer_status(self) -> tuple[bool, str]:
        return self.supervisor.status() if self.supervisor is not None else (False, "not started yet")

    async def readiness(self) -> dict[str, tuple[bool, str]]:
        """The named checks of /health/ready (see :class:`watcher.health.Health`)."""
        return await self.health.readiness()

    def _wire_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set_function(self.queue.qsize)
        m.oldest_pending.set_function(self.intake.oldest_pending_seconds)
        m.pending_files.set_function(lambda: len(self.intake.tracked))
        m.observer_up.set_function(lambda: 1.0 if self.supervisor and self.supervisor.alive() else 0.0)
        m.observer_polling.set_function(lambda: 1.0 if self.supervisor and self.supervisor.polling() else 0.0)

    # ---- scans ---------------------------------------------------------------------------------

    async def _startup_scan(self, started: float) -> None:
        found = await self.intake.scan(source="startup")
        log.info("rescan.startup_done", files_found=found, seconds=round(time.monotonic() - started, 3))

    async def rescan(self) -> int:
        """A full scan now (the `rescan` job calls it every WATCHER_RESCAN_INTERVAL s); returns the
        files it found that nothing had reported.
        """
        found = await self.intake.scan()
        if found:
            log.info("rescan.found", files_found=found)
        return found

    async def _follower_rescans(self, membership: Membership) -> None:
        """Cluster mode: every replica rescans the shared inbox itself (inotify sees only local writes);
        on the leader the schedule's `rescan` job does it, elsewhere this loop.
        """
        interval = self.settings.rescan_interval
        while interval > 0 and not self.stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), interval)
            if not self.stop_event.is_set() and not membership.leader:
                await self.rescan()

    # ---- life cycle ----------------------------------------------------------------------------

    def _left(self, cap: float | None = None, reserve: float = 0.0) -> float:
        return self.deadline.left(cap, reserve)

    def _begin_stop(self) -> None:
        """The first release of the stack: start the clock, stop taking new work."""
        self.deadline.start()
        self.health.stopping = True
        self.intake.stop_accepting()

    async def run(self, handle_signals: bool = True) -> int:
        """Run until a signal (or :meth:`request_stop`) asks to stop; return the exit code.

        `handle_signals=False` keeps the service embeddable (tests run it off the main thread's
        signal handling, as arq's ``Worker(handle_signals=False)`` does).
        """
        s = self.settings
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        bounded = self.deadline.bounded
        async with contextlib.AsyncExitStack() as stack:
            prepare_directories(s)
            membership = self.membership
            if membership is not None:
                from watcher.cluster.preflight import check_filesystem

                await asyncio.to_thread(check_filesystem, s)  # atomic rename and link(), or exit 2
                # Then: a replica id that a live replica holds stops us (exit 2) before anything runs.
                await membership.start()
                stack.push_async_callback(bounded, "cluster", membership.close, PHASE_CAP)
                await membership.finish_own_claims()  # back into the inbox: the start-up scan takes them
            await self.jobs.open()  # a bad WATCHER_JOBSTORE_URL stops us before anything starts
            stack.push_async_callback(bounded, "schedule store", self.jobs.close, PHASE_CAP)
            await open_record(self.record, self.record.engine.url.render_as_string(hide_password=True))
            stack.push_async_callback(
                bounded, "delivery record", lambda: asyncio.to_thread(self.record.close), PHASE_CAP
            )
            sock = bind_socket(s.http_host, s.http_port)
            stack.callback(sock.close)  # uvicorn closes it too once serving; twice is harmless
            if handle_signals:
                stack.enter_context(self._signal_handlers(loop))
            self._wire_gauges()
            # In cluster mode another replica's copy may be in progress: only old ones are stale.
            swept = await asyncio.to_thread(
                sweep_stale_temp_files, [s.outbox, s.failed_path], STALE_TEMP_AGE if s.cluster else 0.0
            )

            app = create_app(
                self.metrics.registry,
                self.readiness,
                extra_routes=[
                    *job_routes(self.jobs, s.api_token),
                    *record_routes(self._explainer(), self.record, s.api_token),
                    *(cluster_routes(membership.view) if membership is not None else []),
                ],
                limits=Limits(s.http_max_connections, s.http_request_timeout),
            )
            http = HttpServer(app, s)
            stack.push_async_callback(bounded, "http", lambda: http.stop(self._left()))
            http.start(sock)

            stack.push_async_callback(bounded, "outbox gate", self.gate.stop, PHASE_CAP)
            stack.push_async_callback(bounded, "drain", self._drain)
            self.workers.start()
            self.gate.start()

            bridge = EventBridge(loop, max_pending=max(4 * s.queue_size, 65536))
            self.supervisor = supervisor = ObserverSupervisor(s, bridge, self.rescan)
            stack.push_async_callback(bounded, "observer", lambda: supervisor.stop(self._left(PHASE_CAP)), PHASE_CAP)
            choice = await supervisor.start()

            startup_scan = asyncio.create_task(self._startup_scan(started), name="startup-scan")
            self.progress.begin(started, 0)  # whatever the start-up scan finds is a backlog
            tasks = [
                asyncio.create_task(self.intake.run_events(bridge, self.stop_event), name="events"),
                asyncio.create_task(self.intake.run_settler(self.stop_event), name="settler"),
                startup_scan,
                asyncio.create_task(supervisor.run(self.stop_event), name="observer-supervisor"),
                asyncio.create_task(
                    keep_tidy(self.record, s.record_retention_days, self.stop_event), name="record-retention"
                ),
                asyncio.create_task(
                    self.progress.run(
                        self.stop_event,
                        lambda: self.queue.qsize() + self.workers.inflight,
                        self.workers.handled,
                        lambda: not startup_scan.done(),
                    ),
                    name="backlog-progress",
                ),
            ]
            if membership is not None:
                tasks.append(asyncio.create_task(membership.run(self.stop_event), name="cluster-heartbeat"))
                tasks.append(asyncio.create_task(self._follower_rescans(membership), name="follower-rescans"))
            stack.push_async_callback(bounded, "intake", lambda: self._cancel_intake(tasks), PHASE_CAP)
            log.info(
                "service.started",
                inbox=str(s.inbox),
                outbox=str(s.outbox),
                http=f"http://{_host_port(s.http_host, sock.getsockname()[1])}",
                api=API_READ_WRITE if s.api_token else API_READ_ONLY,
                observer=choice.mode,
                # Why it polls matters (a network filesystem, inotify exhausted); why not is at debug.
                observer_reason=choice.reason if choice.mode == "polling" else None,
                version=__version__,
                stale_temp_files_removed=swept or None,
            )
            log.debug("service.settings", observer_reason=choice.reason, settings=s.public_view())
            # After the pipeline, since a job that fell due while we were down may run at once.
            if membership is not None:  # released right after the scheduler stops
                stack.push_async_callback(bounded, "leadership", membership.step_down, PHASE_CAP)
            await self.jobs.start()
            stack.push_async_callback(bounded, "scheduler", self.jobs.stop, PHASE_CAP)
            stack.callback(self._begin_stop)  # released first: the clock starts with the stop
            self.health.serving = True
            self.started.set()
            await self.stop_event.wait()
        self._log_summary(started)
        return 0

    def _explainer(self) -> Explainer:
        return Explainer(
            inbox=self.settings.inbox,
            settle_seconds=self.settings.settle_seconds,
            intake=self.intake,
            gate=self.gate,
            path_filter=self.intake.filter,
            record=self.record,
            next_rescan=lambda: self.jobs.next_run(RESCAN_JOB_ID),
            replica=self.settings.replica_id if self.settings.cluster else None,
        )

    async def _cancel_intake(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stop_event.set()  # the loops that wait on it return (also after a start-up failure)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await self.intake.cancel_walks()

    async def _drain(self) -> None:
        """In-flight transfers get WATCHER_SHUTDOWN_TIMEOUT (within the deadline), then are aborted."""
        drain = self._left(self.settings.shutdown_timeout, reserve=STOP_MARGIN)
        self._interrupted = await self.workers.stop(drain, abort_wait=self._left(reserve=HTTP_RESERVE))

    def _log_summary(self, started: float) -> None:
        summary = dict(self.workers.summary)
        log.info(
            "service.stopped",
            uptime_s=round(time.monotonic() - started, 3),
            stop_s=round(self.deadline.used(), 3),
            interrupted=self._interrupted,
            left_in_queue=self.queue.qsize(),
            **{f"files_{k}": v for k, v in summary.items()},
        )


def run_service(settings: Settings) -> int:
    """Run the service in this process until it stops; the exit code (see :func:`run_until_exit`)."""
    return run_until_exit(Service(settings).run())
