"""The HTTP side's transport: the listening socket and uvicorn embedded in the service's event loop.

Everything that leans on uvicorn's internals sits here: a ``Server`` that leaves the signals to the
service, and an h11 protocol with a deadline on every request head (slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from watcher.config import ConfigError, Settings

LISTEN_BACKLOG = 2048  # uvicorn's own default: with 128, a burst waits out SYN retransmits (1 s, 3 s, 7 s)
GRACEFUL_CLOSE = 5  # seconds open connections get to finish at shutdown (less if the deadline is near)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port; ConfigError (exit 2) naming the settings when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then, and without it Nagle's
    # algorithm and delayed ACKs add 40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"WATCHER_HTTP_HOST/WATCHER_HTTP_PORT {host}:{port} cannot be bound: {exc.strerror}; pick a free port"
        ) from exc
    return sock


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave signal handling to the service."""
        yield


class HttpServer:
    """uvicorn serving `app` on an already bound socket, in the running event loop."""

    def __init__(self, app: Starlette, settings: Settings) -> None:
        """Configure uvicorn; nothing is served before :meth:`start`."""
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                log_config=None,
                lifespan="off",
                # No uvicorn limit_concurrency: the app's RequestLimits caps requests, with JSON
                # answers and a budget of their own for the probes. uvicorn's cap would count idle
                # keep-alive connections too, answer in plain text, and refuse /health/live along with
                # everything else once reached; it does not bound sockets either.
                limit_concurrency=None,
                http=header_deadline_protocol(settings.http_request_timeout),
                timeout_keep_alive=5,
                timeout_graceful_shutdown=GRACEFUL_CLOSE,
                server_header=False,
            )
        )
        self._task: asyncio.Task[None] | None = None

    def start(self, sock: socket.socket) -> None:
        """Serve on `sock` (which uvicorn closes when it stops)."""
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")

    async def stop(self, timeout: float) -> None:
        """Close the listener, give open connections what is left of `timeout`, then cancel."""
        task = self._task
        if task is None:
            return
        # An int for uvicorn, and never 0, which uvicorn reads as "wait for ever".
        self._server.config.timeout_graceful_shutdown = max(1, int(min(GRACEFUL_CLOSE, timeout - 0.5)))
        self._server.should_exit = True
        _, pending = await asyncio.wait({task}, timeout=max(0.1, timeout))
        for late in pending:
            late.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class _HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that sends no whole request head in time."""

    header_timeout = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock of the first request head."""
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        """Start the clock of the next request head."""
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_deadline, self.cycle)

    def _head_deadline(self, armed: RequestResponseCycle | None) -> None:
        # No new request head since the clock started, and none in progress: close. A request that
        # did start is the middleware's business (its deadline answers 408/503).
        idle = self.cycle is armed and (armed is None or armed.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """The uvicorn ``http`` protocol class with a deadline of `timeout` s on every request head."""
    return type("HeaderDeadlineH11", (_HeaderDeadlineH11,), {"header_timeout": timeout})
