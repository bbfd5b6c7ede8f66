"""Reading a JSON request body: the Content-Type must be application/json (415), the body at most
64 KiB as it is read, whatever Content-Length claims (413), and valid JSON (400).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from watcher.http.errors import bad_request, payload_too_large, unsupported_media_type

MAX_BODY = 64 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() not in ("", "0"))


async def read_json(request: Request, *, required: bool) -> Any:
    """The JSON body (None when optional and absent), enforcing type, size and syntax."""
    if not required and not _has_body(request):
        return None
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise unsupported_media_type(content_type)
    length = request.headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > MAX_BODY:
        raise payload_too_large(MAX_BODY)  # early answer; the stream below is what enforces it
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise payload_too_large(MAX_BODY)
    if not body:
        if required:
            raise bad_request("the request needs a JSON body")
        return None
    try:
        return json.loads(bytes(body), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
