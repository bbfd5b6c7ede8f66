"""Self-defence of the HTTP side: a cap on concurrent requests and a deadline on each request.

:class:`RequestLimits` is a pure ASGI middleware (no ``BaseHTTPMiddleware``: no extra task per
request, no buffering, and the body stream stays the app's own).

- **Concurrency.** At most ``max_requests`` requests are in flight on the API (everything but the
  probes); one more answers 503 JSON with ``Retry-After`` at once, without touching the app. The
  probes (``/health/live``, ``/health/ready``, ``/metrics``) have a budget of their own
  (:data:`PROBE_BUDGET`), so a flood of ``/jobs`` never fails a Kubernetes probe or a scrape, and a
  flood of ``/metrics`` never starves the API either.
- **Time.** Each request has ``timeout`` seconds from its headers to the end of its answer, body
  reading included: a body trickled byte by byte is cut off. The deadline cancels the handler;
  while the body is still arriving the answer is 408, otherwise 503, both JSON and both closing
  the connection when the body was not read to its end. A handler cancelled this way may already
  have done its work (a job created, say): the client should look before it retries.
- **Unread bodies.** An answer given before the request body was read to its end (413 on a
  Content-Length that claims too much, 401 before the body, a GET with a body) carries
  ``Connection: close``: otherwise the connection would stay open while the client streams a body
  nobody reads.

The middleware cannot see what happens before a request's head is complete (uvicorn parses it).
:func:`watcher.http.server.header_deadline_protocol` covers that part: uvicorn's h11 protocol with the same deadline on
each request head, counted from the connection (or the previous answer), so a client that trickles
its headers (slowloris) is disconnected too. Header size is bounded by h11: an incomplete head over
16 KiB is refused with uvicorn's plain-text 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from watcher.http.errors import error_response
from watcher.logging import get_logger

log = get_logger(__name__)

PROBE_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
PROBE_BUDGET = 16
"""Concurrent probe and scrape requests; kubelet and Prometheus need a handful at most."""
RETRY_AFTER = 1
"""Seconds a client is told to wait after a 503 for the concurrency cap."""
_LOG_EVERY = 10.0
_CLOSE = (b"connection", b"close")


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


@dataclass(frozen=True)
class Limits:
    """The caps of :class:`RequestLimits`: WATCHER_HTTP_MAX_CONNECTIONS, WATCHER_HTTP_REQUEST_TIMEOUT."""

    max_requests: int
    timeout: float

    def middleware(self) -> Middleware:
        """The Starlette middleware entry for these caps."""
        return Middleware(RequestLimits, max_requests=self.max_requests, timeout=self.timeout)


class _Budget:
    """In-flight requests of one kind against their cap (single event loop: no lock needed)."""

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self.cap = cap
        self.inflight = 0


class _Exchange:
    """One request: watches its body and its answer for the middleware."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.body_done = not _has_body(scope)
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if not self.body_done:
                # Answered before the body was read: nobody will read the rest of it.
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await self._send(message)


class RequestLimits:
    """Pure ASGI middleware: concurrency cap (503 + Retry-After) and request deadline (408/503)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_requests: int,
        timeout: float,
        probe_paths: Collection[str] = PROBE_PATHS,
        probe_budget: int = PROBE_BUDGET,
    ) -> None:
        """Guard `app`: at most `max_requests` API requests at once, each at most `timeout` s."""
        if max_requests < 1 or probe_budget < 1 or not timeout > 0:
            raise ValueError("max_requests and probe_budget must be >= 1 and timeout > 0")
        self.app = app
        self.timeout = timeout
        self.probe_paths = frozenset(probe_paths)
        self.api = _Budget("api", max_requests)
        self.probes = _Budget("probes", probe_budget)
        self.rejected: dict[str, int] = {"api": 0, "probes": 0, "timeout": 0}
        self._logged_at = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request into its budget, or answer 503; run it under the deadline."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget = self.probes if scope["path"] in self.probe_paths else self.api
        if budget.inflight >= budget.cap:
            self._note(budget.name)
            reply = error_response(
                503,
                "overloaded",
                f"too many concurrent requests (at most {budget.cap}); retry in {RETRY_AFTER} s",
                headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
            )
            await reply(scope, receive, send)
            return
        budget.inflight += 1
        try:
            await self._run(scope, receive, send)
        finally:
            budget.inflight -= 1

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange(scope, receive, send)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self.app(scope, exchange.receive, exchange.send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own timeout, not ours: the app's error handling owns it
            self._note("timeout")
            await self._timed_out(scope, exchange)

    async def _timed_out(self, scope: Scope, exchange: _Exchange) -> None:
        if exchange.started:
            # Half an answer is out (a client that does not read it): nothing valid can follow.
            # Returning unfinished makes uvicorn close the connection (and log that it did).
            return
        if exchange.body_done:
            status, code = 503, "timeout"
            message = (
                f"the request took longer than {self.timeout:g} s; it may have taken effect, check before retrying"
            )
            headers = {"Retry-After": str(RETRY_AFTER)}
        else:
            status, code = 408, "request_timeout"
            message = f"the request body did not arrive within {self.timeout:g} s"
            headers = {}
        reply = error_response(status, code, message, headers=headers)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        # A few hundred bytes fit any socket buffer; the bound is for a client that never reads.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await reply(scope, nothing, exchange.send)

    def _note(self, what: str) -> None:
        """Count a refusal; log the counts at most every few seconds (a flood must not flood the log)."""
        self.rejected[what] += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning(
                "http.limited",
                reason=what,
                rejected_total=dict(self.rejected),
                api_inflight=self.api.inflight,
                api_cap=self.api.cap,
                probes_inflight=self.probes.inflight,
                timeout_s=self.timeout,
            )


async def client_gone(_: Request, exc: Exception) -> Response:
    """The client hung up while its body was being read: nobody will see the answer, nothing to log."""
    assert isinstance(exc, ClientDisconnect)
    return error_response(400, "client_disconnected", "the client closed the connection before its body arrived")


EXCEPTION_HANDLERS: dict[Any, Any] = {ClientDisconnect: client_gone}
