"""Jobs as data: the pydantic models that validate API requests and describe its answers.

The same models produce the OpenAPI document (:mod:`watcher.http.openapi`), so what the document
promises is what the server checks. Shape and ranges are checked here; whether a trigger can really
run (a cron field APScheduler rejects, an end date in the past) is checked by building the
APScheduler trigger itself (:mod:`watcher.jobs.triggers`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    WithJsonSchema,
)

JOB_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# The same, without the ids made only of dots ("." and ".." are path segments, never ids). pydantic's
# regex engine has no look-ahead, so a validator enforces that part and the schema states it.
JOB_ID_SCHEMA_PATTERN = r"^(?!\.+$)[A-Za-z0-9_.-]{1,64}$"
KIND_NAMES = ("rescan", "purge", "retry_failed", "sweep")
TRIGGER_TYPES = ("cron", "interval", "date")
CRON_FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
# Upper bounds keep every value inside what datetime arithmetic can represent (no OverflowError
# from a request): ten years is far beyond any maintenance schedule.
MAX_SECONDS = 10 * 366 * 86400

KindName = Literal["rescan", "purge", "retry_failed", "sweep"]
RunOutcome = Literal["success", "error", "missed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_only_dots(value: str) -> str:
    if set(value) == {"."}:
        raise ValueError("an id made only of dots cannot appear in a URL path")
    return value


JobId = Annotated[
    str,
    Field(
        pattern=JOB_ID_PATTERN,
        description="1-64 characters: letters, digits, `_`, `.`, `-` (not only dots).",
        json_schema_extra={"pattern": JOB_ID_SCHEMA_PATTERN},
    ),
    AfterValidator(_not_only_dots),
]


# ---- arguments of each kind ----------------------------------------------------------------------


class RescanArgs(_Strict):
    """`rescan` takes no arguments: a full walk of the inbox, now."""


class PurgeArgs(_Strict):
    """`purge` removes regular files older than `older_than_seconds` (by mtime) from one folder."""

    target: Literal["outbox", "failed"] = Field(description="`outbox` or `failed` (the quarantine).")
    older_than_seconds: float = Field(
        ge=0, le=MAX_SECONDS, description="Minimum age by modification time; 0 removes every file."
    )


class RetryFailedArgs(_Strict):
    """`retry_failed` takes no arguments: every quarantined file goes back to the inbox."""


class SweepArgs(_Strict):
    """`sweep` removes our stale temporary files from the outbox and the failed dir."""

    older_than_seconds: float = Field(
        default=3600,
        ge=0,
        le=MAX_SECONDS,
        description="Minimum age (ctime) of a temporary file; younger ones may belong to a delivery in progress.",
    )


ARGS_MODELS: dict[str, type[_Strict]] = {
    "rescan": RescanArgs,
    "purge": PurgeArgs,
    "retry_failed": RetryFailedArgs,
    "sweep": SweepArgs,
}


# ---- triggers ------------------------------------------------------------------------------------


def _int_to_str(value: Any) -> Any:
    # A cron field is crontab text; a bare number is accepted and kept as its text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CronField = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(min_length=1, max_length=100),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 100}, {"type": "integer", "minimum": 0}]},
        mode="validation",
    ),
]


class CronSpec(_Strict):
    """Fires when the clock matches, in WATCHER_TIMEZONE: either `expression` or the fields."""

    type: Literal["cron"]
    expression: str | None = Field(
        default=None, min_length=1, max_length=200, description='Five crontab fields, e.g. "*/5 * * * *".'
    )
    second: CronField | None = None
    minute: CronField | None = None
    hour: CronField | None = None
    day: CronField | None = None
    month: CronField | None = None
    day_of_week: CronField | None = Field(
        default=None, description="Weekday names (mon-sun); numbers are refused as ambiguous."
    )
    start_date: datetime | None = Field(default=None, description="No run before this instant.")
    end_date: datetime | None = Field(default=None, description="No run after this instant.")


class IntervalSpec(_Strict):
    """Fires every period (at least one second), first one period after creation or at `start_date`."""

    type: Literal["interval"]
    weeks: int | None = Field(default=None, ge=0, le=520)
    days: int | None = Field(default=None, ge=0, le=3660)
    hours: int | None = Field(default=None, ge=0, le=87840)
    minutes: int | None = Field(default=None, ge=0, le=5270400)
    seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    start_date: datetime | None = None
    end_date: datetime | None = None


class DateSpec(_Strict):
    """Fires once, at `run_date` (a finished one-off job leaves the schedule; its runs stay)."""

    type: Literal["date"]
    run_date: datetime


TriggerSpec = Annotated[CronSpec | IntervalSpec | DateSpec, Field(discriminator="type")]
AnyTrigger = CronSpec | IntervalSpec | DateSpec


# ---- requests ------------------------------------------------------------------------------------


class _NewJob(_Strict):
    id: JobId | None = Field(default=None, description="Generated when absent.")
    trigger: TriggerSpec


class RescanJob(_NewJob):
    """A `rescan` job."""

    kind: Literal["rescan"]
    args: RescanArgs = Field(default_factory=RescanArgs)


class PurgeJob(_NewJob):
    """A `purge` job."""

    kind: Literal["purge"]
    args: PurgeArgs


class RetryFailedJob(_NewJob):
    """A `retry_failed` job."""

    kind: Literal["retry_failed"]
    args: RetryFailedArgs = Field(default_factory=RetryFailedArgs)


class SweepJob(_NewJob):
    """A `sweep` job."""

    kind: Literal["sweep"]
    args: SweepArgs = Field(default_factory=SweepArgs)


NewJob = RescanJob | PurgeJob | RetryFailedJob | SweepJob


class JobCreate(RootModel[Annotated[NewJob, Field(discriminator="kind")]]):
    """Body of ``POST /jobs``: a kind from the closed registry, its arguments and a trigger."""


class JobPatch(_Strict):
    """Body of ``PATCH /jobs/{id}``: each part given replaces the stored one; the kind never changes."""

    trigger: TriggerSpec | None = None
    args: dict[str, Any] | None = Field(
        default=None, description="The arguments of the job's kind (RescanArgs, PurgeArgs, ...)."
    )


# ---- answers -------------------------------------------------------------------------------------


class JobOut(BaseModel):
    """A job as the API answers it."""

    id: str
    kind: KindName
    trigger: TriggerSpec
    args: dict[str, Any]
    next_run_time: datetime | None = Field(description="ISO-8601 with offset; null while paused.")
    paused: bool


class JobList(BaseModel):
    """Body of ``GET /jobs``."""

    total: int
    jobs: list[JobOut]


class RunOut(BaseModel):
    """One run of a job: scheduled, run-now or missed."""

    started_at: datetime
    finished_at: datetime
    outcome: RunOutcome
    error: str | None
    detail: dict[str, Any] | None
    replica: str | None = Field(default=None, description="cluster mode: the replica that ran it")


class RunList(BaseModel):
    """Body of ``GET /jobs/{id}/runs``: newest first, at most 100."""

    runs: list[RunOut]


# ---- error messages that name the field ----------------------------------------------------------


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('purge', 'trigger', 'cron', 'minute')`` → ``trigger.minute``: union tags are not fields."""
    parts = list(loc)
    if parts and parts[0] in KIND_NAMES:
        parts = parts[1:]
    out: list[str] = []
    for i, part in enumerate(parts):
        if i > 0 and parts[i - 1] == "trigger" and part in TRIGGER_TYPES:
            continue
        out.append(str(part))
    return ".".join(out)


def field_errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Each problem of `exc` as ``(field, message)``, the field dotted as the client wrote it."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        ctx = err.get("ctx") or {}
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            name = str(ctx.get("discriminator", "")).strip("'")
            loc = (*loc, name)
            allowed = ", ".join(sorted(KIND_NAMES) if name == "kind" else TRIGGER_TYPES)
            if err["type"] == "union_tag_invalid":
                msg = f"unknown {name} {ctx.get('tag')!r}; it must be one of: {allowed}"
            else:
                msg = f"is required: one of {allowed}"
        elif err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known field"
        path = _field_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        problems.append((path or "body", msg))
    return problems
