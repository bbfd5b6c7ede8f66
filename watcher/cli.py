"""Command line: ``watcher run``, ``watcher check-config``, ``watcher --version``.

Exit codes: 0 after a clean shutdown, 2 for invalid configuration (one line on stderr naming the
setting), 1 for any other fatal error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher import __version__
from watcher.config import ConfigError, Settings, load_settings
from watcher.logging import configure_logging, get_logger

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watcher", description="Deliver every file from an inbox to an outbox.")
    parser.add_argument("--version", action="version", version=f"watcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the service in the foreground"),
        ("check-config", "print the effective settings"),
    ):
        cmd = sub.add_parser(name, help=text)
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


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"watcher: error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``watcher`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    if args.command == "check-config":
        from watcher.service import prepare_directories

        try:
            prepare_directories(settings, create=False)
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG)
        sys.stdout.write(render_settings(settings))
        return EXIT_OK
    configure_logging(settings.log_format, settings.log_level)
    from watcher.service import Service  # imported late: check-config stays light

    log = get_logger("watcher.cli")
    try:
        return asyncio.run(Service(settings).run())
    except ConfigError as exc:
        log.error("service.config_error", error=str(exc))
        return _fail(str(exc), EXIT_CONFIG)
    except Exception as exc:
        log.critical("service.crashed", error=str(exc), exc_info=exc)
        return EXIT_FATAL
