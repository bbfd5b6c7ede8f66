"""The composition root: builds everything from one Settings object, starts in order, stops in
reverse, and owns the signals (the only module that imports ``signal``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Generator
from pathlib import Path

import uvicorn

from watcher import __version__
from watcher.config import ConfigError, Settings
from watcher.http.app import Check, create_app
from watcher.http.jobs_api import job_routes
from watcher.http.limits import Limits, header_deadline_protocol  # limits:
from watcher.jobs import JobService
from watcher.logging import get_logger
from watcher.metrics import Metrics, create_metrics
from watcher.pipeline.intake import Intake, Tracked
from watcher.pipeline.observer import (
    EventBridge,
    ObserverChoice,
    observer_alive,
    polling_fallback,
    start_observer,
    watch_shortfall,
)
from watcher.pipeline.outbox_gate import OutboxGate, outbox_problem
from watcher.pipeline.rescan import sweep_temp_files
from watcher.pipeline.workers import WorkerPool

log = get_logger(__name__)


def prepare_directories(settings: Settings, create: bool = True) -> None:
    """Create the inbox, outbox, state and failed dirs when missing; refuse a path that is a file.

    With `create=False` (``check-config``) nothing is created; only what exists is checked.
    """
    named = [
        ("WATCHER_INBOX", settings.inbox),
        ("WATCHER_OUTBOX", settings.outbox),
        ("WATCHER_STATE_DIR", settings.state_dir),
        ("WATCHER_FAILED_DIR", settings.failed_path),
    ]
    for name, path in named:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{name}={path} is not a directory: point it at a folder")
    outbox = settings.outbox
    if not outbox.exists() and not outbox.parent.is_dir():
        # A typo in a mount path must not deliver into the container's own filesystem.
        raise ConfigError(
            f"WATCHER_OUTBOX={outbox}: its parent folder {outbox.parent} does not exist; "
            "check the path (is the volume mounted?) or create the parent folder"
        )
    if not create:
        return _check_inbox_readable(settings)
    for name, path in named:
        if path.is_dir():
            continue
        try:
            path.mkdir(parents=name != "WATCHER_OUTBOX", exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{name}={path} cannot be created: {exc.strerror}; create it or fix permissions") from exc
        if name == "WATCHER_OUTBOX":
            log.info("outbox.created", outbox=str(path), reason="it did not exist; its parent folder does")
    _check_inbox_readable(settings)


def _check_inbox_readable(settings: Settings) -> None:
    if settings.inbox.exists() and not os.access(settings.inbox, os.R_OK | os.X_OK):
        raise ConfigError(f"WATCHER_INBOX={settings.inbox} is not readable by this user: fix its permissions")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave signal handling to the service."""
        yield


class Service:
    """One running watcher: observer, intake, workers, rescan and HTTP in one event loop."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        """Hold the settings; nothing starts before :meth:`run`."""
        self.settings = settings
        self.metrics = metrics or create_metrics()
        self.stop_event = asyncio.Event()
        self.stopping = False
        self.queue: asyncio.Queue[Tracked] = asyncio.Queue(maxsize=settings.queue_size)
        self.intake = Intake(settings, self.metrics, self.queue)
        self.gate = OutboxGate(settings.outbox, self.metrics)
        self.workers = WorkerPool(settings, self.metrics, self.intake, self.queue, self.gate)
        self.observer: ObserverChoice | None = None
        # jobs: the schedule (APScheduler + its store); its `rescan` job replaces an interval loop
        self.jobs = JobService(settings, self.metrics, self.rescan)
        self._signals = 0
        self.started = asyncio.Event()  # set once the observer, workers and HTTP are up

    # ---- readiness ---------------------------------------------------------------------------

    async def readiness(self) -> dict[str, Check]:
        """The named checks of /health/ready; file-system checks run in a thread."""
        s = self.settings

        def fs_checks() -> dict[str, Check]:
            inbox_ok = s.inbox.is_dir() and os.access(s.inbox, os.R_OK | os.X_OK)
            outbox = outbox_problem(s.outbox)
            state_ok = s.state_dir.is_dir() and os.access(s.state_dir, os.W_OK | os.X_OK)
            return {
                "inbox": (
                    inbox_ok,
                    f"{s.inbox} readable" if inbox_ok else f"{s.inbox} is missing or not readable",
                ),
                "outbox": (outbox is None, outbox or f"{s.outbox} writable"),
                "state_dir": (
                    state_ok,
                    f"{s.state_dir} writable" if state_ok else f"{s.state_dir} is not writable",
                ),
            }

        checks: dict[str, Check] = {}
        choice = self.observer
        if choice is None:
            checks["observer"] = (False, "not started yet")
        else:
            alive = observer_alive(choice.observer)
            checks["observer"] = (
                alive,
                f"{choice.mode}: {choice.reason}" if alive else f"{choice.mode} observer stopped",
            )
        checks.update(await asyncio.to_thread(fs_checks))
        checks["schedule_store"] = await self.jobs.check()
        outbox_ok, outbox_detail = checks["outbox"]
        if not outbox_ok and self.gate.is_open and self.started.is_set():
            self.gate.close(outbox_detail)  # readiness saw it first: delivery waits at once
        if self.gate.is_open:
            checks["delivery"] = (not self.stopping, "shutting down" if self.stopping else "delivering files")
        else:
            checks["delivery"] = (False, f"paused: {self.gate.reason}")
        self._export_readiness(checks)
        return checks

    def _export_readiness(self, checks: dict[str, Check]) -> None:
        """Make the metrics say what /health/ready says (it is computed before every scrape too)."""
        m = self.metrics
        for name, (passed, _) in checks.items():
            m.ready_check.labels(check=name).set(1.0 if passed else 0.0)
        m.ready.set(1.0 if all(passed for passed, _ in checks.values()) else 0.0)

    # ---- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First SIGTERM/SIGINT: graceful stop. A second one: abort in-flight copies at once."""
        # Act first, then log: a stop must never depend on the log output working.
        self._signals += 1
        if self._signals == 1:
            self.stop_event.set()
            log.info("service.stopping", reason="signal")
        else:
            self.workers.abort.set()
            log.warning("service.stopping_now", reason="second signal: interrupting transfers")

    def _bind(self) -> socket.socket:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.http_host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then, and without it Nagle's
        # algorithm and delayed ACKs add 40 ms to every response.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.http_host, s.http_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"WATCHER_HTTP_HOST/WATCHER_HTTP_PORT {s.http_host}:{s.http_port} cannot be bound: {exc.strerror}; "
                "pick a free port"
            ) from exc
        # limits: uvicorn's own default backlog. With 128, a burst of connections waits out SYN
        # retransmits (1 s, 3 s, 7 s) before the app can even answer 503 to it.
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    def _wire_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set_function(self.queue.qsize)
        m.oldest_pending.set_function(self.intake.oldest_pending_seconds)
        m.pending_files.set_function(lambda: len(self.intake.tracked))
        m.observer_up.set_function(lambda: 1.0 if self.observer and observer_alive(self.observer.observer) else 0.0)
        m.observer_polling.set_function(lambda: 1.0 if self.observer and self.observer.mode == "polling" else 0.0)

    async def run(self, handle_signals: bool = True) -> int:
        """Run until a signal (or :meth:`request_stop`) asks to stop; return the exit code.

        `handle_signals=False` keeps the service embeddable (tests run it off the main thread's
        signal handling, as arq's ``Worker(handle_signals=False)`` does).
        """
        s = self.settings
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        prepare_directories(s)
        await self.jobs.open()  # jobs: a bad WATCHER_JOBSTORE_URL stops us before anything starts
        sock = self._bind()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        self._wire_gauges()
        swept = await asyncio.to_thread(_sweep_all, [s.outbox, s.failed_path])
        bridge = EventBridge(loop, max_pending=max(4 * s.queue_size, 65536))
        self.observer = await asyncio.to_thread(start_observer, s.observer, s.inbox, s.recursive, bridge)
        log.info(
            "service.started",
            version=__version__,
            observer=self.observer.mode,
            observer_reason=self.observer.reason,
            stale_temp_files_removed=swept,
            settings=s.public_view(),
        )
        app = create_app(
            self.metrics.registry,
            self.readiness,
            extra_routes=job_routes(self.jobs, s.api_token),
            limits=Limits(s.http_max_connections, s.http_request_timeout),  # limits:
        )
        server = _EmbeddedServer(
            uvicorn.Config(
                app,
                log_config=None,
                lifespan="off",
                # limits: no uvicorn limit_concurrency. The app's RequestLimits caps requests, with
                # JSON answers and a budget of their own for the probes. uvicorn's cap would count
                # idle keep-alive connections too, answer in plain text, and refuse /health/live
                # along with everything else once it is reached; it does not bound sockets either
                # (it answers on a connection it has already accepted).
                limit_concurrency=None,
                http=header_deadline_protocol(s.http_request_timeout),  # limits: slow request heads too
                timeout_keep_alive=5,
                timeout_graceful_shutdown=5,
                server_header=False,
            )
        )
        tasks = [
            asyncio.create_task(self.intake.run_events(bridge, self.stop_event), name="events"),
            asyncio.create_task(self.intake.run_settler(self.stop_event), name="settler"),
            asyncio.create_task(self._startup_scan(started), name="startup-scan"),
            asyncio.create_task(self._supervise_observer(bridge), name="observer-supervisor"),
        ]
        self.workers.start()
        self.gate.start()
        http = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        try:
            # jobs: after the pipeline, since a job that fell due while we were down may run at once
            await self.jobs.start()
        except BaseException:
            await self._shutdown(tasks, server, http, started)
            raise
        self.started.set()
        await self.stop_event.wait()
        await self._shutdown(tasks, server, http, started)
        return 0

    async def _supervise_observer(self, bridge: EventBridge, interval: float = 5.0) -> None:
        """Restart a dead observer (a watchdog thread can die on an unexpected error) and rescan,
        so that no event source failure strands files until the next interval rescan.
        """
        s = self.settings
        ticks = 0
        while not self.stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), interval)
            ticks += 1
            choice = self.observer
            if self.stop_event.is_set() or choice is None:
                continue
            if choice.mode == "inotify" and ticks % 6 == 0 and await asyncio.to_thread(self._watches_short):
                # Folders created since start-up can exhaust fs.inotify.max_user_watches too.
                log.error(
                    "observer.inotify_exhausted",
                    error="fewer inotify watches than folders",
                    limit_to_raise="fs.inotify.max_user_watches",
                    mode="polling",
                )
                choice.observer.stop()
                self.observer = await asyncio.to_thread(
                    polling_fallback,
                    bridge,
                    s.inbox,
                    s.recursive,
                    "inotify watches exhausted: raise fs.inotify.max_user_watches on the node; polling instead",
                )
                await self.rescan()
                continue
            if observer_alive(choice.observer):
                continue
            log.error("observer.died", mode=choice.mode, action="restarting the observer and rescanning")
            with contextlib.suppress(Exception):
                choice.observer.stop()
            self.observer = await asyncio.to_thread(start_observer, s.observer, s.inbox, s.recursive, bridge)
            await self.rescan()

    def _watches_short(self) -> bool:
        s = self.settings
        return bool(watch_shortfall(s.inbox, s.recursive) and watch_shortfall(s.inbox, s.recursive))

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

    async def _shutdown(
        self,
        tasks: list[asyncio.Task[None]],
        server: uvicorn.Server,
        http: asyncio.Task[None],
        started: float,
    ) -> None:
        s = self.settings
        self.stopping = True
        self.intake.stopping = True
        t0 = time.monotonic()
        await self.jobs.stop()  # jobs: first, so that no job feeds the pipeline while it drains
        if self.observer is not None:
            observer = self.observer.observer
            observer.stop()
            await asyncio.to_thread(observer.join, 10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.intake.cancel_walks()
        interrupted = await self.workers.stop(s.shutdown_timeout)
        await self.gate.stop()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http, timeout=10)
        summary = dict(self.workers.summary)
        log.info(
            "service.stopped",
            uptime_s=round(time.monotonic() - started, 3),
            drain_s=round(time.monotonic() - t0, 3),
            interrupted=interrupted,
            left_in_queue=self.queue.qsize(),
            **{f"files_{k}": v for k, v in summary.items()},
        )


def _sweep_all(roots: list[Path]) -> int:
    """Remove every temporary file of ours at start-up: none can be in progress yet."""
    return sum(sweep_temp_files(root)[0] for root in roots)
