"""The delivery record: every file that leaves the inbox leaves a row (see :mod:`watcher.record.store`)."""

from watcher.record.store import DeliveryRecord, Entry, RecordUnavailable

__all__ = ["DeliveryRecord", "Entry", "RecordUnavailable"]
