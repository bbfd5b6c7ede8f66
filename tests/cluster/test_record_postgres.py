"""The delivery record on PostgreSQL: a batch's rows go in by one binary COPY (autocommit, so one
statement, one transaction) and read back exactly as written; a batch that fails leaves no row; a
connection the server dropped is replaced before the next batch instead of failing it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from watcher.record.store import DeliveryRecord, Entry, RecordUnavailable

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def record(database: str) -> Iterator[DeliveryRecord]:
    store = DeliveryRecord(database)
    store.open()
    try:
        yield store
    finally:
        store.close()


def entry(path: str, **fields: object) -> Entry:
    now = time.time()
    values: dict[str, object] = {
        "path": path,
        "outcome": "delivered",
        "target": path,
        "size": 4096,
        "sha256": None,
        "first_seen": now - 2.5,
        "completed_at": now - 1.25,
        "finished_at": now,
        "attempts": 1,
        "error": None,
        "replica": "r1",
        "source": "event",
    }
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def written(record: DeliveryRecord, path: str) -> list[Entry]:
    return [row._replace(id=0) for row in record.history(path)]


def test_rows_read_back_exactly_as_written(record: DeliveryRecord) -> None:
    rows = [
        entry("a/ünïcode ✓.bin", size=5 * 2**30, sha256="ab" * 32, attempts=3),
        entry("b.bin", outcome="quarantined", target="b.bin", error="too big: 5 GiB\nsecond line", source="rescan"),
        entry("c.bin", outcome="duplicate", replica="replica-with-a-long-name", first_seen=1.0e9 + 0.123456),
    ]
    record.write(rows)
    for row in rows:
        assert written(record, row.path) == [row]


def test_a_batch_that_fails_leaves_no_row_and_the_next_one_goes_in(record: DeliveryRecord) -> None:
    bad = entry("bad.bin", outcome="x" * 40)  # longer than the column's 16 characters: the server refuses
    with pytest.raises(RecordUnavailable, match="cannot be written"):
        record.write([entry("good-in-bad-batch.bin"), bad])
    assert written(record, "good-in-bad-batch.bin") == []  # one COPY, one transaction: none of the batch
    after = entry("after.bin")
    record.write([after])
    assert written(record, "after.bin") == [after]


def test_a_connection_the_server_dropped_is_replaced_before_the_next_batch(
    record: DeliveryRecord, database: str
) -> None:
    import psycopg

    record.write([entry("before.bin")])
    with psycopg.connect(database, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert dropped is not None and dropped[0] >= 1  # the record's writer connection among them
    later = entry("after-restart.bin")
    record.write([later])  # no RecordUnavailable: the pool pings and reconnects
    assert written(record, "after-restart.bin") == [later]
