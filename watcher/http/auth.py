"""Bearer authentication of mutating API calls: ``Authorization: Bearer <WATCHER_API_TOKEN>``, exactly,
compared in constant time; without a configured token every mutating call answers 403.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from watcher.http.errors import ApiError

_WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


class BearerAuth:
    """Checks ``Authorization: Bearer <WATCHER_API_TOKEN>`` on mutating calls."""

    def __init__(self, token: SecretStr | None) -> None:
        """Keep the token's bytes; None leaves the API read-only."""
        self._token = token.get_secret_value().encode("utf-8") if token is not None else None

    def check_read(self, request: Request) -> None:
        """Reads of the delivery record: open without a configured token, else like :meth:`check`."""
        if self._token is not None:
            self.check(request)

    def check(self, request: Request) -> None:
        """Raise 403 when no token is configured, 401 unless the header carries the token."""
        if self._token is None:
            raise ApiError(
                403,
                "api_disabled",
                "mutating calls are disabled: set WATCHER_API_TOKEN to enable them, "
                "then send it as 'Authorization: Bearer <token>'",
            )
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>'", _WWW_AUTHENTICATE)
        scheme, _, credentials = header.partition(" ")
        # RFC 7235 makes the scheme case-insensitive; we accept exactly one spelling, so a client
        # bug shows at once instead of working against some servers and not others.
        if scheme != "Bearer" or not credentials:
            raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'", _WWW_AUTHENTICATE)
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes that were sent.
        if not hmac.compare_digest(credentials.encode("latin-1"), self._token):
            raise ApiError(401, "unauthorized", "the bearer token is wrong", _WWW_AUTHENTICATE)
