"""structlog set-up: one event per line, JSON or console, with the stdlib loggers routed through it.

Our own events take structlog's fast path (a filtering bound logger, orjson, one write per line);
uvicorn, watchdog, APScheduler and Python warnings log through the stdlib, and a ProcessorFormatter
renders their records with the same processors. Both write through one locked line writer, so with
``json`` every line on stdout is a whole JSON object, tracebacks included.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from typing import TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

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
    event_dict.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    if "logger_name" in event_dict:  # ("logger" itself is a reserved argument of structlog.get_logger)
        event_dict["logger"] = event_dict.pop("logger_name")
    if None in event_dict.values():  # one C-level scan; a field with nothing to say is left out
        for key in [key for key, value in event_dict.items() if value is None]:
            del event_dict[key]
    return event_dict


def _printable_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # File names may hold non-UTF-8 bytes (surrogate escapes), which JSON cannot carry.
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isascii():
            event_dict[key] = printable(value)
    return event_dict


_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level names them


class _Stamp:
    """Level and UTC time (RFC 3339, microseconds, ``Z``) in one processor: the date and time of day are
    formatted once per second, not per line (structlog's TimeStamper builds a datetime for each).
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:  # a race between threads here only formats the same second twice
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def human_size(size: int) -> str:
    """`size` in bytes for a person: ``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``3.2 GiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _human_sizes(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Console only: a person reads `bytes=1.5 MiB`; JSON keeps the integer for machines.
    size = event_dict.get("bytes")
    if type(size) is int:
        event_dict["bytes"] = human_size(size)
    return event_dict


def _orjson_bytes(logger: WrappedLogger, method: str, event_dict: EventDict) -> bytes:
    try:
        return orjson.dumps(event_dict, default=str)
    except TypeError:  # orjson refuses a str holding surrogate escapes (a non-UTF-8 file name): rare
        return orjson.dumps(_printable_fields(logger, method, event_dict), default=str)


def _orjson_text(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    return _orjson_bytes(logger, method, event_dict).decode()


class LineWriter:
    """Writes whole lines to a stream under one lock, shared by structlog and the stdlib handler.

    Writing never raises: a closed pipe (EPIPE), a dead terminal (EIO) or a full disk (ENOSPC)
    under the output must not stop the service from delivering, counting or obeying a signal. A
    line that cannot be written is dropped and counted (:func:`dropped_lines`, exported as
    ``watcher_log_lines_dropped_total``). Lines go straight to the file descriptor with
    ``os.write``: Python's buffered stream would keep the failed bytes and raise again on every
    later flush, including the one at interpreter exit (which turns exit code 0 into 120).
    """

    def __init__(self, stream: TextIO) -> None:
        """Write to `stream` (its file descriptor when it has one)."""
        self._stream = stream
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):  # io.StringIO in tests, a closed stream
            self._fd = None
        self._lock = threading.Lock()

    def write(self, line: str | bytes) -> None:
        """Write one line (unbuffered, so a crash loses no finished line), or drop and count it."""
        data = (line.encode("utf-8", "backslashreplace") if isinstance(line, str) else line) + b"\n"
        with self._lock:
            try:
                if self._fd is not None:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                else:
                    self._stream.write(data.decode("utf-8", "backslashreplace"))
                    self._stream.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                _drop()


_dropped = itertools.count()
_dropped_total = 0


def _drop() -> None:
    global _dropped_total
    _dropped_total = next(_dropped) + 1


def dropped_lines() -> int:
    """Log lines dropped since start because the output could not take them."""
    return _dropped_total


class _WriterLogger:
    """The object structlog's bound logger hands rendered events to."""

    def __init__(self, writer: LineWriter) -> None:
        self._write = writer.write

    def msg(self, message: str | bytes) -> None:
        self._write(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _WriterHandler(logging.Handler):
    """A stdlib handler that emits through the shared line writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never crash the service, nor print to stderr
            _drop()


def configure_logging(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger for the whole process (idempotent)."""
    out = stream or sys.stdout
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    writer = LineWriter(out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _Stamp(),
        _sanitize,
    ]
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
    else:
        shared += [_printable_fields, _human_sizes]
    console = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _orjson_text if use_json else console,
        ],
    )
    handler = _WriterHandler(writer)
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
    # APScheduler's own info lines ("Added job", "Scheduler started", "Job executed successfully") repeat
    # what jobs.* events say; its warnings (a missed run) and errors still come through.
    logging.getLogger("apscheduler").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*shared, _orjson_bytes if use_json else console],
        logger_factory=lambda *_: _WriterLogger(writer),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A module logger (``get_logger(__name__)``); its events carry ``logger=<name>``."""
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger
