"""The JSON error shape of every route: ``{"error": {"code": str, "message": str}}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from watcher.logging import get_logger

log = get_logger(__name__)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def http_exception(request: Request, exc: Exception) -> Response:
    """Render Starlette's HTTPException (404, 405, ...) in the JSON error shape."""
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, _code(exc.status_code), message, headers=exc.headers)


class ApiError(Exception):
    """An error answer raised from a handler: status, stable code, message naming what to fix."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        """Keep what the answer needs."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def api_error(_: Request, exc: Exception) -> Response:
    """Render an :class:`ApiError`."""
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


def bad_request(message: str) -> ApiError:
    """400: the body is not JSON."""
    return ApiError(400, "malformed_json", message)


def payload_too_large(limit: int) -> ApiError:
    """413: the body is over `limit` bytes."""
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit // 1024} KiB")


def unsupported_media_type(got: str | None) -> ApiError:
    """415: the body is not declared as JSON."""
    return ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, not {got or 'missing'}")


def unprocessable(message: str) -> ApiError:
    """422: invalid fields; the message names each one."""
    return ApiError(422, "validation_error", message)


async def unexpected_exception(request: Request, exc: Exception) -> Response:
    """Log an unexpected error with its traceback and answer a JSON 500 without internals."""
    log.error("http.unhandled_error", method=request.method, path=request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; the service log has the details")


EXCEPTION_HANDLERS = {ApiError: api_error, HTTPException: http_exception, Exception: unexpected_exception}
