"""Creating the service's tables safely when several replicas share one PostgreSQL database.

Two sessions that run ``CREATE TABLE IF NOT EXISTS`` for one name at the same moment can both miss
the table and one fails with a unique violation in ``pg_type``: replicas started together on an empty
database did exactly that (one exited 1). Every creation of tables therefore runs in one transaction
under a transaction-level advisory lock on PostgreSQL: the replicas create their tables one at a time,
and the later ones find them made. SQLite (one process per state dir) needs no lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text


def lock_key(name: str) -> int:
    """A 63-bit PostgreSQL advisory lock key for `name` (a replica id, the leader lock, table creation)."""
    return int.from_bytes(hashlib.sha256(f"watcher:{name}".encode()).digest()[:8], "big") >> 1


# Not a name WATCHER_REPLICA_ID can take (no ':' there): a replica called "schema" would otherwise hold
# this key for its whole life as its id lock, and no other replica could start.
DDL_LOCK = "watcher:schema"
DDL_KEY = lock_key(DDL_LOCK)


def create_tables(engine: Engine, create: Callable[[Connection], object]) -> None:
    """Run `create` (idempotent DDL) in one transaction, one replica at a time on PostgreSQL."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_KEY})
        create(conn)
