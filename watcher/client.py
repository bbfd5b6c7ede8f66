"""``watcher explain PATH`` and ``watcher status``: ask the running service, print for a person.

The address and the token come from the same settings as the service's (environment, ``--config``).
Only the standard library is used (urllib), so these commands stay as light as ``check-config``.
Exit codes: 0 known, 1 unknown path, 2 invalid configuration, 3 the service cannot be reached.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from watcher.config import Settings

EXIT_OK, EXIT_UNKNOWN, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3
TIMEOUT = 10.0


class Unreachable(Exception):
    """The service did not answer (not running, wrong address, a proxy in the way)."""


def _base(settings: Settings) -> str:
    host = settings.http_host
    if host in ("0.0.0.0", ""):  # noqa: S104 - listening on every address: ask it on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{settings.http_port}" if ":" in host else f"http://{host}:{settings.http_port}"


def _get(settings: Settings, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(_base(settings) + path, headers={"Accept": "application/json"})  # noqa: S310
    if settings.api_token is not None:
        request.add_header("Authorization", f"Bearer {settings.api_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - our own http URL
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(
            f"the service at {_base(settings)} does not answer ({exc}); is `watcher run` running?"
        ) from exc


def inbox_relative(settings: Settings, path: str) -> str:
    """PATH relative to the inbox, also when given as an absolute path inside it."""
    if os.path.isabs(path):
        absolute = Path(os.path.abspath(path))
        if not absolute.is_relative_to(settings.inbox):
            raise ValueError(f"{path} is not inside the inbox {settings.inbox}")
        return str(absolute.relative_to(settings.inbox))
    return path


def explain(settings: Settings, path: str, out: Callable[[str], None]) -> int:
    """Print where the file stands and why; the exit code."""
    try:
        rel = inbox_relative(settings, path)
    except ValueError as exc:
        out(f"watcher: {exc}")
        return EXIT_UNKNOWN
    status, body = _get(settings, "/files/" + quote(os.fsencode(rel), safe="/"))
    if status == 404:
        out(f"{rel}: not in the inbox and not in the delivery record")
        return EXIT_UNKNOWN
    if status != 200:
        out(f"watcher: the service answered {status}: {_message(body)}")
        return EXIT_UNKNOWN if status == 400 else EXIT_UNREACHABLE
    out(f"{body['path']}: {body['state']}")
    out(f"  {body['detail']}")
    for record in body.get("records", [])[:5]:
        digest = f", sha256 {record['sha256']}" if record.get("sha256") else ""
        error = f", error: {record['error']}" if record.get("error") else ""
        out(
            f"  {record['finished_at']}  {record['outcome']} → {record['target']} "
            f"({record['size']} bytes, {record['attempts']} attempt(s), {record['source']}{digest}{error})"
        )
    return EXIT_OK


def status(settings: Settings, out: Callable[[str], None]) -> int:
    """Print waiting files by state with the oldest named, whether delivery is paused, the latest failures."""
    code, body = _get(settings, "/status")
    if code != 200:
        out(f"watcher: the service answered {code}: {_message(body)}")
        return EXIT_UNREACHABLE
    out(f"delivery: {body['delivery']}")
    waiting = body["waiting"]
    if waiting["total"]:
        by_state = ", ".join(f"{n} {state}" for state, n in sorted(waiting["by_state"].items()))
        out(f"waiting: {waiting['total']} ({by_state})")
        oldest = waiting["oldest"]
        out(
            f"  oldest: {oldest['path']}, seen {oldest['age_seconds']:.0f} s ago: {oldest['state']}: {oldest['detail']}"
        )
    else:
        out("waiting: none")
    failures = body["latest_failures"]
    out("latest failures:" if failures else "latest failures: none")
    for record in failures:
        out(f"  {record['finished_at']}  {record['path']} → {record['target']}: {record['error']}")
    return EXIT_OK


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))
    return "no details"
