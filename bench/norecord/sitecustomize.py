"""Bench only: the subject ``watcher (no record)`` runs the service with its delivery record switched off.

Python imports this module at start-up when its folder is on PYTHONPATH (only that subject's is). The
record's write and flush become no-ops, so the same build runs with and without the record in one run
and the report can say what the record costs (issue 13: burst and renamed within 10 %).
"""

from watcher.record.store import DeliveryRecord


def _no_write(self: DeliveryRecord, entries: object) -> None:
    del self, entries


def _no_flush(self: DeliveryRecord, synced_devs: object) -> None:
    del self, synced_devs


DeliveryRecord.write = _no_write  # type: ignore[method-assign]
DeliveryRecord.flush = _no_flush  # type: ignore[method-assign]
