"""The Starlette app factory: health, metrics and (when wired) the jobs API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from watcher import __version__
from watcher.http.errors import EXCEPTION_HANDLERS
from watcher.http.limits import EXCEPTION_HANDLERS as LIMIT_HANDLERS
from watcher.http.limits import Limits
from watcher.http.openapi import ApiRoute, Health, Operation, Reply, build_openapi, check_operations, errors

Check = tuple[bool, str]
ReadinessProbe = Callable[[], Awaitable[dict[str, Check]]]


def _health_body(checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    ok = all(passed for passed, _ in checks.values())
    body = {
        "status": "ok" if ok else "fail",
        "checks": {name: {"ok": passed, "detail": detail} for name, (passed, detail) in checks.items()},
    }
    return (200 if ok else 503), body


def create_app(
    registry: CollectorRegistry,
    readiness: ReadinessProbe,
    extra_routes: Sequence[BaseRoute] = (),
    limits: Limits | None = None,
) -> Starlette:
    """Build the app; `readiness` answers the named checks of ``/health/ready``; `limits` caps
    concurrent requests and request time (see :mod:`watcher.http.limits`).
    """

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok", "checks": {"process": {"ok": True, "detail": "serving requests"}}})

    async def ready(_: Request) -> Response:
        status, body = _health_body(await readiness())
        return JSONResponse(body, status_code=status)

    async def metrics(request: Request) -> Response:
        # The readiness checks run first, so watcher_ready and watcher_ready_check say exactly what
        # /health/ready would answer now. Rendered on the loop: gauges read loop-only state.
        await readiness()
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    routes: list[BaseRoute] = [
        ApiRoute("/health/live", {"GET": (live, _LIVE)}),
        ApiRoute("/health/ready", {"GET": (ready, _READY)}),
        ApiRoute("/metrics", {"GET": (metrics, _METRICS)}),
        *extra_routes,
    ]
    # From the routes themselves: a route without an operation fails here, at start. The document
    # (pydantic's JSON schemas, a tenth of a second) is built on the first request and kept.
    documented = check_operations([*routes, ApiRoute("/openapi.json", {"GET": (live, _OPENAPI)})])
    document: dict[str, Any] = {}

    async def openapi(_: Request) -> Response:
        if not document:
            document.update(
                build_openapi(
                    documented,
                    title="watcher",
                    version=__version__,
                    description="Delivers every file from an inbox to an outbox; schedules maintenance jobs.",
                )
            )
        return JSONResponse(document)

    routes.append(ApiRoute("/openapi.json", {"GET": (openapi, _OPENAPI)}))
    # Inside Starlette's ServerErrorMiddleware (a bug in it is still a logged JSON 500), outside
    # the routes and their exception handlers (so the deadline cancels a handler and answers for it).
    return Starlette(
        routes=routes,
        exception_handlers={**EXCEPTION_HANDLERS, **LIMIT_HANDLERS},
        middleware=[limits.middleware()] if limits is not None else [],
    )


# ---- OpenAPI operations of the core routes ------------------------------------------------------

_LIVE = Operation(
    "live", "200 while the process serves requests.", {200: Reply("Serving.", Health), **errors()}, tag="health"
)
_READY = Operation(
    "ready",
    "200 when every check passes (observer, inbox, outbox, state dir, schedule store, delivery); 503 otherwise.",
    {200: Reply("Ready.", Health), 503: Reply("Not ready: a check failed.", Health), 500: errors()[500]},
    tag="health",
)
_METRICS = Operation(
    "metrics",
    "Prometheus text exposition; OpenMetrics when the Accept header asks for it.",
    {
        200: Reply(
            "The metrics.",
            content={
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        ),
        **errors(),
    },
    tag="metrics",
)
_OPENAPI = Operation(
    "openapi",
    "This document (OpenAPI 3.1).",
    {200: Reply("The document.", content={"application/json": {"schema": {"type": "object"}}}), **errors()},
    tag="meta",
)
