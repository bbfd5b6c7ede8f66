"""Command line: ``watcher run``, ``watcher check-config``, ``watcher --version``.

Exit codes: 0 after a clean shutdown, 2 for invalid configuration (one line on stderr naming the
setting), 1 for any other fatal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from watcher import __version__
from watcher.config import ConfigError, Settings, load_settings, unknown_variables
from watcher.logging import configure_logging, get_logger

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watcher", description="Deliver every file from an inbox to an outbox.")
    parser.add_argument("--version", action="version", version=f"watcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the service in the foreground"),
        ("check-config", "print the effective settings"),
        ("explain", "ask the running service where a file stands and why"),
        ("status", "ask the running service what waits, whether delivery is paused, what failed"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name == "explain":
            cmd.add_argument("path", help="relative to the inbox, or an absolute path inside it")
        cmd.add_argument("--config", type=Path, metavar="FILE", help="TOML file; environment variables override it")
    return parser


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def render_settings(settings: Settings) -> str:
    """The effective settings as TOML (usable as a --config file), the token masked."""
    lines = []
    for key, value in settings.public_view().items():
        lines.append(f"# {key} is unset" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _json_errors(command: str, log_format: str | None) -> bool:
    """Whether a fatal error line on stderr is JSON: with WATCHER_LOG_FORMAT=json, and for `run`
    under `auto` when stderr is not a terminal, so that a log collector sees only JSON lines.
    """
    fmt = (log_format or os.environ.get("WATCHER_LOG_FORMAT") or "auto").strip().lower()
    return fmt == "json" or (fmt == "auto" and command == "run" and not sys.stderr.isatty())


def _fail(message: str, code: int, json_line: bool = False) -> int:
    """Write the one error line on stderr and return the exit code."""
    if json_line:
        line = orjson.dumps(
            {"event": "watcher.fatal", "level": "error", "error": message, "exit_code": code,
             "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        ).decode()  # fmt: skip
    else:
        line = f"watcher: error: {message}"
    _stderr(line)
    return code


def _stderr(line: str) -> None:
    """Write one line on stderr; a closed stderr must not turn an exit code into a traceback."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``watcher`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, _json_errors(args.command, None))
    unknown = unknown_variables()
    advice = "; ".join(f"{name} (did you mean {near}?)" if near else name for name, near in unknown)
    if args.command == "check-config":
        if unknown:
            _stderr(f"watcher: warning: unknown environment variables ignored: {advice}")
        from watcher.directories import prepare_directories  # light: no uvicorn, APScheduler, watchdog

        try:
            prepare_directories(settings, create=False)
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG, _json_errors(args.command, settings.log_format))
        sys.stdout.write(render_settings(settings))
        return EXIT_OK
    if args.command in ("explain", "status"):
        return _ask(args, settings)
    configure_logging(settings.log_format, settings.log_level)
    from watcher.service import run_service  # imported late: check-config stays light

    log = get_logger("watcher.cli")
    if unknown:
        log.warning("config.unknown_variables", ignored=[name for name, _ in unknown], advice=advice)
    try:
        return run_service(settings)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, _json_errors(args.command, settings.log_format))
    except Exception as exc:
        log.critical("service.crashed", error=str(exc), exc_info=exc)
        return EXIT_FATAL


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    """``explain`` and ``status``: a question to the running service, printed for a person."""
    from watcher import client  # stdlib only: as light as check-config

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")

    try:
        if args.command == "explain":
            return client.explain(settings, args.path, out)
        return client.status(settings, out)
    except client.Unreachable as exc:
        _stderr(f"watcher: {exc}")
        return client.EXIT_UNREACHABLE
