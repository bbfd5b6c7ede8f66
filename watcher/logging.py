"""structlog set-up: one event per line, JSON or console, with the stdlib loggers routed through it.

uvicorn, watchdog, APScheduler and Python warnings log through the stdlib; a ProcessorFormatter
renders their records with the same processors, so with ``json`` every line on stdout is a JSON
object, tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def printable(text: str) -> str:
    r"""Return `text` safe for any renderer: undecodable bytes of a file name become ``\xNN``."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _sanitize(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # File names may hold non-UTF-8 bytes (surrogate escapes), which JSON cannot carry.
    event_dict.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isascii():
            event_dict[key] = printable(value)
    return event_dict


def _json_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger for the whole process (idempotent)."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _sanitize,
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "watchdog", "apscheduler"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    # Access logs on every probe and scrape would drown the file events.
    logging.getLogger("uvicorn.access").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("watchdog").setLevel(max(_LEVELS[level], logging.INFO))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A module logger (``get_logger(__name__)``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
