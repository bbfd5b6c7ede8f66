"""The Starlette app factory: health, metrics and (when wired) the jobs API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from watcher.http.errors import EXCEPTION_HANDLERS

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
    registry: CollectorRegistry, readiness: ReadinessProbe, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """Build the app; `readiness` answers the named checks of ``/health/ready``."""

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok", "checks": {"process": {"ok": True, "detail": "serving requests"}}})

    async def ready(_: Request) -> Response:
        status, body = _health_body(await readiness())
        return JSONResponse(body, status_code=status)

    async def metrics(request: Request) -> Response:
        # Rendered on the loop: gauges read pipeline state that only the loop may touch.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    routes: list[BaseRoute] = [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
