"""The delivery record: one row per file that left the inbox (SQLAlchemy Core; SQLite in the state dir).

Rows are written by the transfer thread in one transaction per batch, once the batch's files are
placed and before the flush that makes them durable (one syncfs for links and rows alike when the
record shares the outbox's filesystem), and before any source is removed, so a record survives SIGKILL once its
source is gone. SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is in the WAL when it
returns, and the batch's flush makes it durable together with the links (see :meth:`flush`). On
PostgreSQL (cluster mode) a batch's rows go in by one binary COPY in autocommit, durable when it returns.
Concurrent batches share one insert either way (:class:`GroupCommit`). Every method blocks; the service
calls them from worker threads.

Only what the contract asks is kept: paths, sizes, times, outcomes, the error text and (with
WATCHER_CHECKSUM=sha256) the digest. Never any file content.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Unicode,
    UnicodeText,
    and_,
    create_engine,
    delete,
    event,
    insert,
    select,
    tuple_,
)
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from watcher.pipeline.transfer import OutboxUnavailable
from watcher.schema import create_tables

RecordOutcome = Literal["delivered", "duplicate", "quarantined"]
OUTCOMES: tuple[RecordOutcome, ...] = ("delivered", "duplicate", "quarantined")
PAGE_MAX = 1000

metadata = MetaData()

deliveries = Table(
    "watcher_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", UnicodeText, nullable=False),
    Column("outcome", Unicode(16), nullable=False),
    Column("target", UnicodeText, nullable=False),
    Column("size", BigInteger, nullable=False),  # PostgreSQL's INTEGER stops at 2 GiB
    Column("sha256", Unicode(64), nullable=True),
    Column("first_seen", Float(25), nullable=False),
    Column("completed_at", Float(25), nullable=False),
    Column("finished_at", Float(25), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", UnicodeText, nullable=True),
    Column("replica", Unicode(63), nullable=False),
    Column("source", Unicode(16), nullable=False),
    # What the queries filter on: a path's history, a time window in order, an outcome in order.
    Index("watcher_deliveries_path", "path", "id"),
    Index("watcher_deliveries_finished", "finished_at", "id"),
    Index("watcher_deliveries_outcome", "outcome", "finished_at", "id"),
)

COLUMNS = tuple(column.name for column in deliveries.columns if column.name != "id")  # Entry's field order
# Names from the table above, values bound by the driver.
_INSERT_SQLITE = f"INSERT INTO {deliveries.name} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
_COPY_POSTGRES = f"COPY {deliveries.name} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _copy_type(column: Column[Any]) -> str:
    """The PostgreSQL type a binary COPY sends for `column` (the server reads exactly that type)."""
    kind = column.type
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, Float):
        return "float8"
    return "text"  # Unicode (varchar) and UnicodeText: the same bytes on the wire


_COPY_TYPES = [_copy_type(deliveries.c[name]) for name in COLUMNS]

# The readiness probe writes here and rolls back: proof that the record takes writes.
probe = Table("watcher_record_probe", metadata, Column("checked_at", Float(25), nullable=False))


class Entry(NamedTuple):
    """One row of the record (times are Unix seconds, UTC). A named tuple: one is made per delivered
    file on the hot path, and its first fields are the insert's values in :data:`COLUMNS` order.
    """

    path: str
    outcome: RecordOutcome
    target: str
    size: int
    sha256: str | None
    first_seen: float
    completed_at: float
    finished_at: float
    attempts: int
    error: str | None
    replica: str
    source: str
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        """The record as the API answers it (timestamps RFC 3339, UTC)."""
        return {
            "id": self.id,
            "path": self.path,
            "outcome": self.outcome,
            "target": self.target,
            "size": self.size,
            "sha256": self.sha256,
            "first_seen": rfc3339(self.first_seen),
            "completed_at": rfc3339(self.completed_at),
            "finished_at": rfc3339(self.finished_at),
            "attempts": self.attempts,
            "error": self.error,
            "replica": self.replica,
            "source": self.source,
        }


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 in UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class RecordUnavailable(OutboxUnavailable):
    """The record cannot be written (state dir full or read-only, database locked): delivery pauses,
    exactly as for an unusable outbox, and no source is removed.
    """


class BadCursor(ValueError):
    """A ``cursor=`` that this service did not hand out."""


def _sqlite_pragmas(conn: DBAPIConnection, _: ConnectionPoolEntry) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # No flush at commit: a batch's rows are made durable together with its links (the outbox's
        # syncfs when the record shares its filesystem, else DeliveryRecord.flush). A commit is in
        # the WAL at once, so a SIGKILL never loses it.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=2000")
    finally:
        cursor.close()


def _encode_cursor(finished_at: float, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([finished_at, row_id]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        finished_at, row_id = json.loads(raw)
        return float(finished_at), int(row_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadCursor("cursor: not a cursor this service handed out; start again without it") from exc


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Commits the rows of batches that arrive together in one transaction (blocking; thread-safe).

    The first thread to arrive writes everything waiting, its own rows included, while later ones
    wait for that commit; whoever finds rows waiting after a commit writes them next. A commit costs
    about 0.1 ms whatever it holds, so the workers' concurrent batches share one instead of queueing
    one each. A failure is every waiting batch's failure.
    """

    def __init__(self, write: Callable[[list[tuple[Any, ...]]], None]) -> None:
        """`write` commits a list of rows in one transaction."""
        self._write = write
        self._lock = threading.Lock()
        self._waiting: list[tuple[list[tuple[Any, ...]], _Waiter]] = []
        self._writing = False

    def submit(self, rows: list[tuple[Any, ...]]) -> None:
        """Return once `rows` are committed; raise the commit's error."""
        mine = _Waiter()
        with self._lock:
            self._waiting.append((rows, mine))
            lead = not self._writing
            self._writing = True
        if lead:
            self._write_while_waiting()
        mine.done.wait()
        if mine.error is not None:
            raise mine.error

    def _write_while_waiting(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._writing = False
                    return
            error: BaseException | None = None
            try:
                self._write([row for rows, _ in batch for row in rows])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting batch
                error = exc
            for _, waiter in batch:
                waiter.error = error
                waiter.done.set()


class DeliveryRecord:
    """The record's table in its database (blocking calls)."""

    def __init__(self, url: str) -> None:
        """Bind to the database at `url`; nothing is opened before :meth:`open`."""
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, as the schedule store
        self.engine: Engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        self._file: str | None = None  # the SQLite file (None for a server database)
        self._group: GroupCommit | None = None  # the hot path's writer (None: through SQLAlchemy Core)
        self._writer: Engine | None = None
        self.dev: int | None = None  # the device of its folder, once open
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._file = self.engine.url.database
            self._group = GroupCommit(self._write_sqlite)
        elif self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg":
            # One connection in autocommit for the batches' COPY: each COPY is its own transaction, a
            # single round trip with no BEGIN or COMMIT. Pinged on checkout, so a restarted server costs
            # a reconnect, not a failed batch.
            self._writer = create_engine(parsed, pool_pre_ping=True, isolation_level="AUTOCOMMIT", pool_size=1)
            self._group = GroupCommit(self._copy_postgres)

    def open(self) -> None:
        """Create the table and its indexes when missing."""
        create_tables(self.engine, metadata.create_all)
        if self._file:
            self.dev = os.stat(os.path.dirname(os.path.abspath(self._file))).st_dev

    def flush(self, synced_devs: set[int]) -> None:
        """Make committed rows durable: nothing to do when a syncfs of the record's filesystem just
        ran (`synced_devs`) or for a server database; else one fsync of the SQLite WAL.
        """
        if not self._file or self.dev in synced_devs:
            return
        try:
            fd = os.open(self._file + "-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)  # checkpointed meanwhile: the rows are there
        try:
            os.fsync(fd)
        except OSError as exc:
            raise RecordUnavailable(f"the delivery record cannot be flushed: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
        if self._writer is not None:
            self._writer.dispose()

    def write(self, entries: Sequence[Entry]) -> None:
        """Insert `entries` in one transaction; RecordUnavailable when the database refuses."""
        if not entries:
            return
        try:
            if self._group is not None:
                width = len(COLUMNS)
                self._group.submit([entry[:width] for entry in entries])
            else:
                rows = [dict(zip(COLUMNS, entry, strict=False)) for entry in entries]
                with self.engine.begin() as conn:
                    conn.execute(insert(deliveries), rows)
        except Exception as exc:
            raise RecordUnavailable(f"the delivery record cannot be written: {_first_line(exc)}") from exc

    def _write_sqlite(self, rows: list[tuple[Any, ...]]) -> None:
        # The hot path of every batch: one executemany on the driver's connection. Measured for 2,000
        # rows: 29 ms in batches of 64 and 350 ms one by one, against 80 ms and 977 ms through Core.
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.executemany(_INSERT_SQLITE, rows)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _copy_postgres(self, rows: list[tuple[Any, ...]]) -> None:
        # The hot path on PostgreSQL: one binary COPY in autocommit (atomic: one statement). Measured per
        # commit of 1 / 16 / 64 rows: 0.18 / 0.18 / 0.30 ms of client CPU, against 0.25 / 1.0 / 2.9 ms
        # for executemany + commit and about 0.6 ms for one row through Core (bench notes, issue 14).
        assert self._writer is not None
        conn = self._writer.raw_connection()
        try:
            cursor = conn.cursor()
            with cursor.copy(_COPY_POSTGRES) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        except BaseException:
            conn.invalidate()  # a connection that failed mid-COPY is not given out again
            raise
        finally:
            conn.close()

    def has_delivery(self, path: str, target: str) -> bool:
        """True when a `delivered` row of `path` to `target` exists (a crash came after the record)."""
        t = deliveries
        query = select(t.c.id).where(t.c.path == path, t.c.target == target, t.c.outcome == "delivered").limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def problem(self) -> str | None:
        """None when the record takes writes (a row inserted and rolled back), else why not."""
        try:
            with self.engine.connect() as conn:
                try:
                    conn.execute(insert(probe).values(checked_at=time.time()))
                finally:
                    conn.rollback()
        except Exception as exc:  # noqa: BLE001 - any driver error means "cannot be written"
            return f"the delivery record cannot be written: {_first_line(exc)}"
        return None

    def history(self, path: str, limit: int = 100) -> list[Entry]:
        """The records of one inbox-relative path, newest first."""
        t = deliveries
        query = select(t).where(t.c.path == path).order_by(t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def page(
        self,
        *,
        since: float | None = None,
        outcome: str | None = None,
        prefix: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Entry], str | None]:
        """Records oldest first (by finished_at, then id) after `cursor`, and the cursor of the next page."""
        t = deliveries
        where = []
        if since is not None:
            # Half a microsecond of slack: the RFC 3339 text a client passes back is rounded to it.
            where.append(t.c.finished_at >= since - 5e-7)
        if outcome is not None:
            where.append(t.c.outcome == outcome)
        if prefix:
            # A range on the path, not LIKE: `%` and `_` in a file name are not wildcards.
            # PostgreSQL compares in the database's collation, where that range is not a prefix:
            # compare code points there (collation "C"; UTF-8 byte order is code point order).
            path = t.c.path.collate("C") if self.engine.dialect.name == "postgresql" else t.c.path
            where.append(and_(path >= prefix, path < prefix + "\U0010ffff"))
        if cursor is not None:
            after_time, after_id = _decode_cursor(cursor)
            # A row value, not an OR: SQLite and PostgreSQL seek the (finished_at, id) index with it.
            where.append(tuple_(t.c.finished_at, t.c.id) > tuple_(after_time, after_id))
        query = select(t).where(*where).order_by(t.c.finished_at, t.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            entries = [_entry(row) for row in conn.execute(query)]
        if len(entries) <= limit:
            return entries, None
        last = entries[limit - 1]
        return entries[:limit], _encode_cursor(last.finished_at, last.id)

    def latest_failures(self, limit: int = 5) -> list[Entry]:
        """The newest quarantined files."""
        t = deliveries
        query = select(t).where(t.c.outcome == "quarantined").order_by(t.c.finished_at.desc(), t.c.id.desc())
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query.limit(limit))]

    def purge(self, older_than: float) -> int:
        """Remove records that finished before `older_than` (Unix time); returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(delete(deliveries).where(deliveries.c.finished_at < older_than)).rowcount or 0


def _entry(row: Any) -> Entry:
    return Entry(
        path=row.path,
        outcome=row.outcome,
        target=row.target,
        size=row.size,
        sha256=row.sha256,
        first_seen=row.first_seen,
        completed_at=row.completed_at,
        finished_at=row.finished_at,
        attempts=row.attempts,
        error=row.error,
        replica=row.replica,
        source=row.source,
        id=row.id,
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def entries_of(rows: Iterable[Entry]) -> list[dict[str, Any]]:
    """Records as the API answers them."""
    return [entry.to_json() for entry in rows]
