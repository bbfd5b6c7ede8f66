"""The delivery record's API answers as pydantic models (for the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RecordOut(BaseModel):
    """One record: a file that left the inbox."""

    id: int
    path: str = Field(description="Relative to the inbox.")
    outcome: Literal["delivered", "duplicate", "quarantined"]
    target: str = Field(description="Relative to the outbox (to the failed dir when quarantined).")
    size: int
    sha256: str | None = Field(description="With WATCHER_CHECKSUM=sha256, else null.")
    first_seen: str = Field(description="RFC 3339, UTC.")
    completed_at: str = Field(description="When the file was found complete (quarantined: its last attempt began).")
    finished_at: str
    attempts: int
    error: str | None
    replica: str
    source: Literal["event", "rescan", "startup"]


class FileOut(BaseModel):
    """Where one file stands, and why."""

    path: str
    state: Literal[
        "waiting", "excluded", "ignored", "queued", "transferring", "retrying", "paused", "delivered", "duplicate",
        "quarantined",
    ]  # fmt: skip
    detail: str = Field(description="Why, in words a person reads.")
    records: list[RecordOut] = Field(description="Newest first.")


class DeliveriesOut(BaseModel):
    """A page of records, oldest first."""

    items: list[RecordOut]
    next: str | None = Field(description="Pass back as cursor= with the same filters; null on the last page.")


class OldestOut(BaseModel):
    """The file that has waited longest."""

    path: str
    age_seconds: float
    state: str
    detail: str


class WaitingOut(BaseModel):
    """Files seen in the inbox and not yet delivered."""

    total: int
    by_state: dict[str, int]
    oldest: OldestOut | None


class StatusOut(BaseModel):
    """What `watcher status` prints."""

    delivery: str = Field(description="'running', or 'paused: <why>'.")
    waiting: WaitingOut
    latest_failures: list[RecordOut] = Field(description="The newest quarantined files.")
