"""The OpenAPI 3.1 document, generated from the routes and the pydantic models they validate with.

Every route of the app is an :class:`ApiRoute`, which carries the :class:`Operation` of each of its
methods: summary, request model, answers. :func:`build_openapi` walks the app's routes and asks
pydantic for the JSON Schemas of every model involved (``models_json_schema`` with
``#/components/schemas/{model}`` refs), so no schema is kept by hand, and a route without an
operation fails the build: the document covers every route by construction.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

REF_TEMPLATE = "#/components/schemas/{model}"

Endpoint = Callable[[Request], Awaitable[Response]]


# ---- models shared by every route ---------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: a stable code and a message for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class CheckOut(BaseModel):
    """One named health check."""

    ok: bool
    detail: str


class Health(BaseModel):
    """Body of ``/health/live`` and ``/health/ready``."""

    status: Literal["ok", "fail"]
    checks: dict[str, CheckOut]


# ---- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON model, a raw content schema, or no body."""

    description: str
    model: type[BaseModel] | None = None
    content: Mapping[str, dict[str, Any]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


ERROR_REPLIES: Mapping[int, Reply] = {
    400: Reply("Malformed JSON body.", ErrorBody),
    401: Reply(
        "Missing or wrong `Authorization: Bearer <token>`.",
        ErrorBody,
        headers={"WWW-Authenticate": "Always `Bearer`."},
    ),
    403: Reply("No WATCHER_API_TOKEN is configured: mutating calls are refused.", ErrorBody),
    404: Reply("No such job.", ErrorBody),
    409: Reply("Conflicts with the schedule (duplicate id, no future run time).", ErrorBody),
    413: Reply("Body over 64 KiB.", ErrorBody),
    415: Reply("Content-Type is not application/json.", ErrorBody),
    422: Reply("Invalid fields; the message names each one.", ErrorBody),
    500: Reply("Unexpected error (logged with its traceback).", ErrorBody),
    503: Reply("The scheduler is not running (the service is starting or stopping).", ErrorBody),
}


def errors(*statuses: int) -> dict[int, Reply]:
    """The standard error answers for `statuses` (500 is always added)."""
    return {status: ERROR_REPLIES[status] for status in (*statuses, 500)}


@dataclass(frozen=True)
class Operation:
    """The OpenAPI description of one method of one route."""

    operation_id: str
    summary: str
    replies: Mapping[int, Reply]
    request: type[BaseModel] | None = None
    auth: bool = False
    tag: str = "jobs"
    description: str = ""
    path_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    query_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # name → schema (optional)


class ApiRoute(Route):
    """A route whose every method carries its handler and its :class:`Operation`."""

    def __init__(self, path: str, methods: Mapping[str, tuple[Endpoint, Operation]]) -> None:
        """`methods` maps an HTTP method to its handler and operation; HEAD follows GET."""
        handlers = {method.upper(): handler for method, (handler, _) in methods.items()}
        self.operations = {method.upper(): op for method, (_, op) in methods.items()}

        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        super().__init__(path, dispatch, methods=list(handlers))


def _reply(reply: Reply, refs: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        out["content"] = {"application/json": {"schema": refs[(reply.model, "serialization")]}}
    elif reply.content is not None:
        out["content"] = dict(reply.content)
    if reply.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in reply.headers.items()
        }
    return out


def check_operations(routes: Iterable[BaseRoute]) -> list[ApiRoute]:
    """`routes`, each checked to carry its OpenAPI operations; TypeError when one has none."""
    api_routes: list[ApiRoute] = []
    for route in routes:
        if not isinstance(route, ApiRoute):
            raise TypeError(f"route {getattr(route, 'path', route)!r} is not an ApiRoute: it has no OpenAPI operation")
        api_routes.append(route)
    return api_routes


def build_openapi(routes: Iterable[BaseRoute], *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; TypeError when a route has no operation."""
    api_routes = check_operations(routes)
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in api_routes:
        for op in route.operations.values():
            if op.request is not None:
                wanted[(op.request, "validation")] = None
            for reply in op.replies.values():
                if reply.model is not None:
                    wanted[(reply.model, "serialization")] = None
    refs, defs = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    paths: dict[str, dict[str, Any]] = {}
    for route in api_routes:
        item = paths.setdefault(re.sub(r"{(\w+):\w+}", r"{\1}", route.path), {})
        for method, op in route.operations.items():
            doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
            if op.description:
                doc["description"] = op.description
            params = re.findall(r"{(\w+)(?::\w+)?}", route.path)
            if params:
                doc["parameters"] = [
                    {
                        "name": name,
                        "in": "path",
                        "required": True,
                        "schema": op.path_params.get(name, {"type": "string"}),
                    }
                    for name in params
                ]
            if op.query_params:
                doc.setdefault("parameters", []).extend(
                    {"name": name, "in": "query", "required": False, "schema": schema}
                    for name, schema in op.query_params.items()
                )
            if op.request is not None:
                doc["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
                }
            if op.auth:
                doc["security"] = [{"bearerAuth": []}]
            doc["responses"] = {str(status): _reply(reply, refs) for status, reply in sorted(op.replies.items())}
            item[method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of WATCHER_API_TOKEN; needed by POST, PATCH and DELETE, and (when set) by /files and /deliveries.",
                }
            },
        },
    }
