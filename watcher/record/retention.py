"""Opening the delivery record at start-up, and removing entries older than the retention."""

from __future__ import annotations

import asyncio
import contextlib
import time

from watcher.logging import get_logger
from watcher.record.store import DeliveryRecord, RecordUnavailable

log = get_logger(__name__)
RETENTION_EVERY = 3600.0  # seconds between two purges of expired records


async def open_record(record: DeliveryRecord, where: str) -> None:
    """Create the record's table when missing; RecordUnavailable saying what to fix when it cannot."""
    try:
        await asyncio.to_thread(record.open)
    except Exception as exc:
        raise RecordUnavailable(
            f"the delivery record {where} cannot be opened: {exc}; "
            "check that WATCHER_STATE_DIR is writable and has free space"
        ) from exc


async def keep_tidy(record: DeliveryRecord, days: float, stop: asyncio.Event) -> None:
    """Remove records older than `days` (WATCHER_RECORD_RETENTION_DAYS; 0 keeps them): at once, then hourly."""
    while days > 0 and not stop.is_set():
        try:
            removed = await asyncio.to_thread(record.purge, time.time() - days * 86400)
            if removed:
                log.info("record.purged", removed=removed, retention_days=days)
        except Exception as exc:  # noqa: BLE001 - the next round tries again; readiness reports it
            log.warning("record.purge_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_EVERY)
