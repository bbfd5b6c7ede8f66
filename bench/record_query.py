"""The delivery record's queries on 1,000,000 rows (issue 13 item 4): the median of 15 calls each, in ms.

Run: ``.venv/bin/python -m bench.record_query`` (builds /tmp/watcher-record-bench/record.sqlite once,
about 40 s; later runs reuse it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from watcher.record.store import DeliveryRecord, deliveries

ROWS = 1_000_000
DATABASE = Path("/tmp/watcher-record-bench/record.sqlite")


def build(record: DeliveryRecord, base: float) -> None:
    """Insert ROWS records: one folder of 1,000 per path, a quarantined one in 500, a duplicate in 97."""
    batch = []
    for i in range(ROWS):
        outcome = "quarantined" if i % 500 == 0 else ("duplicate" if i % 97 == 0 else "delivered")
        path = f"dir{i % 1000:04}/file{i:07}.csv"
        batch.append(
            {
                "path": path, "outcome": outcome, "target": path, "size": 4096, "sha256": None,
                "first_seen": base + i, "completed_at": base + i, "finished_at": base + i * 1.7,
                "attempts": 1, "error": None, "replica": "bench", "source": "event",
            }
        )  # fmt: skip
    with record.engine.begin() as conn:
        conn.execute(deliveries.insert(), batch)


def median_ms(call: Callable[[], object], runs: int = 15) -> float:
    """The median wall time of `call`, in milliseconds."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    """Build the table if needed, then time each query the API makes."""
    DATABASE.parent.mkdir(parents=True, exist_ok=True)
    fresh = not DATABASE.exists()
    record = DeliveryRecord(f"sqlite:///{DATABASE}")
    record.open()
    base = 1_700_000_000.0
    if fresh:
        began = time.monotonic()
        build(record, base)
        print(f"built {ROWS:,} rows in {time.monotonic() - began:.1f} s")
    deep = record.page(since=base + 900_000 * 1.7, limit=1)[1]
    queries: dict[str, Callable[[], object]] = {
        "first page (limit 100)": lambda: record.page(),
        "a page deep in, by cursor": lambda: record.page(cursor=deep),
        "since a recent time": lambda: record.page(since=base + 999_000 * 1.7),
        "outcome=quarantined": lambda: record.page(outcome="quarantined"),
        "outcome=quarantined since the middle": lambda: record.page(outcome="quarantined", since=base + 850_000),
        "prefix=dir0500/": lambda: record.page(prefix="dir0500/"),
        "one path's history (GET /files)": lambda: record.history("dir0500/file0500500.csv"),
        "latest failures (GET /status)": lambda: record.latest_failures(),
    }
    for name, call in queries.items():
        print(f"{name:40} {median_ms(call):8.2f} ms")
    record.close()


if __name__ == "__main__":
    main()
