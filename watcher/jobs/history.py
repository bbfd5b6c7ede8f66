"""Run history: one table beside APScheduler's in the same database (SQLAlchemy Core).

Every method blocks on the database; the job service calls them through ``asyncio.to_thread``.
Timestamps are stored as UTC epoch floats, as APScheduler stores its own, so SQLite and PostgreSQL
behave the same; the API renders them with the offset of WATCHER_TIMEZONE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Unicode,
    UnicodeText,
    delete,
    insert,
    inspect,
    select,
    text,
)

from watcher.schema import create_tables

KEEP_PER_JOB = 100

metadata = MetaData()

runs_table = Table(
    "watcher_job_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Unicode(191), nullable=False, index=True),
    Column("started_at", Float(25), nullable=False),
    Column("finished_at", Float(25), nullable=False),
    Column("outcome", Unicode(16), nullable=False),
    Column("error", UnicodeText, nullable=True),
    Column("detail", JSON, nullable=True),
    Column("replica", Unicode(63), nullable=True),  # cluster mode: the replica that ran it
)

# Cluster mode: one row per (job, scheduled run time), inserted before the run. Whoever inserts it
# runs it; a stale leader that read the same due time finds the row and skips (the fence).
fence_table = Table(
    "watcher_job_fence",
    metadata,
    Column("job_id", Unicode(191), primary_key=True),
    Column("run_time", Float(25), primary_key=True),
    Column("replica", Unicode(63), nullable=False),
    Column("claimed_at", Float(25), nullable=False, index=True),
)
FENCE_KEEP_SECONDS = 7 * 86400.0

# Readiness writes one row here and rolls it back: proof that the store takes writes, leaving no trace.
probe_table = Table(
    "watcher_store_probe",
    metadata,
    Column("checked_at", Float(25), nullable=False),
)


@dataclass(frozen=True)
class Run:
    """One recorded run."""

    job_id: str
    started_at: float
    finished_at: float
    outcome: str
    error: str | None = None
    detail: dict[str, Any] | None = None
    replica: str | None = None  # cluster mode: the replica that ran it


class RunHistory:
    """Records runs, newest first, keeping at most `keep` per job (blocking calls)."""

    def __init__(self, engine: Engine, keep: int = KEEP_PER_JOB) -> None:
        """Use `engine`, the one APScheduler's job store uses too."""
        self.engine = engine
        self.keep = keep

    def create(self, *others: Table) -> None:
        """Create the tables (and `others`, such as the job store's) when missing; add the ``replica``
        column to a table made before it. One replica at a time (see :mod:`watcher.schema`).
        """

        def create(conn: Connection) -> None:
            metadata.create_all(conn)
            for table in others:
                table.create(conn, checkfirst=True)
            columns = {c["name"] for c in inspect(conn).get_columns(runs_table.name)}
            if "replica" not in columns:
                conn.execute(text(f"ALTER TABLE {runs_table.name} ADD COLUMN replica VARCHAR(63)"))

        create_tables(self.engine, create)

    def fence(self, job_id: str, run_time: float, replica: str) -> bool:
        """Claim the run of `job_id` due at `run_time` (PostgreSQL); False when another replica has."""
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # cluster mode only: not at start-up

        t = fence_table
        statement = (
            pg_insert(t)
            .values(job_id=job_id, run_time=run_time, replica=replica, claimed_at=time.time())
            .on_conflict_do_nothing(index_elements=[t.c.job_id, t.c.run_time])
            .returning(t.c.replica)
        )
        with self.engine.begin() as conn:
            won = conn.execute(statement).first() is not None
            conn.execute(delete(t).where(t.c.claimed_at < time.time() - FENCE_KEEP_SECONDS))
        return won

    def probe_write(self) -> None:
        """Write a row in a transaction that is rolled back (readiness); raises when the store refuses.

        A ``SELECT 1`` passes on a SQLite file whose folder is unwritable (SQLite cannot create its
        journal there, so every write fails) and says nothing about a read-only replica; a write
        that changes a page does, and the rollback leaves no row behind.
        """
        with self.engine.connect() as conn:
            try:
                conn.execute(insert(probe_table).values(checked_at=time.time()))
            finally:
                conn.rollback()

    def record(self, run: Run) -> None:
        """Insert `run` and drop the job's runs beyond the newest `keep`, in one transaction."""
        t = runs_table
        newest = (
            select(t.c.id)
            .where(t.c.job_id == run.job_id)
            .order_by(t.c.started_at.desc(), t.c.id.desc())
            .limit(self.keep)
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert(t).values(
                    job_id=run.job_id,
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    outcome=run.outcome,
                    error=run.error,
                    detail=run.detail,
                    replica=run.replica,
                )
            )
            # A derived table around the LIMIT: MySQL refuses LIMIT directly inside NOT IN.
            conn.execute(delete(t).where(t.c.job_id == run.job_id, t.c.id.not_in(select(newest.subquery().c.id))))

    def runs(self, job_id: str) -> list[Run]:
        """The job's runs, newest first."""
        t = runs_table
        query = select(t).where(t.c.job_id == job_id).order_by(t.c.started_at.desc(), t.c.id.desc()).limit(self.keep)
        with self.engine.connect() as conn:
            return [
                Run(r.job_id, r.started_at, r.finished_at, r.outcome, r.error, r.detail, r.replica)
                for r in conn.execute(query)
            ]

    def delete(self, job_id: str) -> None:
        """Forget every run of the job."""
        with self.engine.begin() as conn:
            conn.execute(delete(runs_table).where(runs_table.c.job_id == job_id))
