"""The delivery record over HTTP: ``GET /files/{path}`` (why is this file where it is) and
``GET /deliveries`` (every outcome, oldest first, by pages) and ``GET /status`` (``watcher status``).

Both need the bearer token when WATCHER_API_TOKEN is set (401 without it) and are open otherwise.
A path is taken from the raw request path, percent-decoded to bytes, so a file name that is not
UTF-8 can be asked about too; absolute paths, ``..`` segments and NUL bytes answer 400.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from urllib.parse import unquote_to_bytes

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from watcher.http.auth import BearerAuth
from watcher.http.errors import ApiError
from watcher.http.openapi import ApiRoute, Operation, Reply, errors
from watcher.record.explain import BadPath, Explainer, UnknownPath
from watcher.record.models import DeliveriesOut, FileOut, StatusOut
from watcher.record.store import OUTCOMES, PAGE_MAX, BadCursor, DeliveryRecord, entries_of

FILES_PREFIX = b"/files/"


def _raw_rel(request: Request) -> str:
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode("utf-8", "surrogateescape")
    raw = raw.split(b"?", 1)[0]
    if not raw.startswith(FILES_PREFIX):
        raise ApiError(404, "not_found", "no such route")
    return os.fsdecode(unquote_to_bytes(raw[len(FILES_PREFIX) :]))


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid", "since: must be RFC 3339, e.g. 2026-12-07T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ApiError(422, "invalid", "since: needs an offset or Z, e.g. 2026-12-07T00:00:00Z")
    return moment.timestamp()


def _limit(text: str | None) -> int:
    if text is None:
        return 100
    if not text.isdigit() or not 1 <= int(text) <= PAGE_MAX:
        raise ApiError(422, "invalid", f"limit: must be a whole number from 1 to {PAGE_MAX}")
    return int(text)


def record_routes(explainer: Explainer, record: DeliveryRecord, token: SecretStr | None) -> list[ApiRoute]:
    """The routes of the delivery record."""
    auth = BearerAuth(token)

    async def get_file(request: Request) -> Response:
        auth.check_read(request)
        try:
            return JSONResponse(await explainer.explain(_raw_rel(request)))
        except BadPath as exc:
            raise ApiError(400, "bad_path", str(exc)) from None
        except UnknownPath as exc:
            raise ApiError(404, "not_found", str(exc)) from None

    async def deliveries(request: Request) -> Response:
        auth.check_read(request)
        query = request.query_params
        unknown = sorted(set(query) - {"since", "outcome", "prefix", "limit", "cursor"})
        if unknown:
            raise ApiError(
                422, "invalid", f"{unknown[0]}: unknown parameter; use since, outcome, prefix, limit, cursor"
            )
        outcome = query.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise ApiError(422, "invalid", f"outcome: must be one of {', '.join(OUTCOMES)}")
        prefix = query.get("prefix")
        if prefix is not None and "\0" in prefix:
            raise ApiError(422, "invalid", "prefix: contains a NUL byte")
        try:
            items, cursor = await asyncio.to_thread(
                record.page,
                since=_since(query.get("since")),
                outcome=outcome,
                prefix=prefix,
                limit=_limit(query.get("limit")),
                cursor=query.get("cursor"),
            )
        except BadCursor as exc:
            raise ApiError(422, "invalid", str(exc)) from None
        return JSONResponse({"items": entries_of(items), "next": cursor})

    async def status(request: Request) -> Response:
        auth.check_read(request)
        return JSONResponse(await explainer.status())

    read_errors = (400, 401, 404, 422)
    return [
        ApiRoute(
            "/files/{path:path}",
            {
                "GET": (
                    get_file,
                    Operation(
                        "explainFile",
                        "Where a file stands and why: in the inbox (waiting, excluded, ignored, queued, "
                        "transferring, retrying, paused) or its record once it has left.",
                        {200: Reply("The file's state and records.", FileOut), **errors(*read_errors)},
                        tag="record",
                        path_params={"path": {"type": "string", "description": "Relative to the inbox."}},
                    ),
                )
            },
        ),
        ApiRoute(
            "/status",
            {
                "GET": (
                    status,
                    Operation(
                        "status",
                        "Waiting files by state with the oldest one named, whether delivery is paused and why, "
                        "and the latest failures (what `watcher status` prints).",
                        {200: Reply("The status.", StatusOut), **errors(401)},
                        tag="record",
                    ),
                )
            },
        ),
        ApiRoute(
            "/deliveries",
            {
                "GET": (
                    deliveries,
                    Operation(
                        "listDeliveries",
                        "Every file that left the inbox, oldest first, by pages.",
                        {200: Reply("A page of records.", DeliveriesOut), **errors(401, 422)},
                        tag="record",
                        query_params={
                            "since": {"type": "string", "format": "date-time"},
                            "outcome": {"type": "string", "enum": list(OUTCOMES)},
                            "prefix": {"type": "string"},
                            "limit": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX},
                            "cursor": {"type": "string"},
                        },
                    ),
                )
            },
        ),
    ]
