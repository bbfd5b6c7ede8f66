"""From a validated trigger spec to the APScheduler trigger that will run it.

APScheduler's own constructors do the parsing (``CronTrigger.from_crontab``, ``CronTrigger(minute=...)``),
so what the API accepts is exactly what runs; their errors are re-raised naming the field. A trigger
that could never fire (a date in the past, an end date before the next run, 30 February) is refused
as well, instead of being stored as a job that silently never runs.

Building a cron trigger and asking for its next fire time can take a few hundred milliseconds for an
impossible date, so callers run :func:`compile_trigger` in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from watcher.jobs.errors import InvalidJob
from watcher.jobs.specs import CRON_FIELDS, AnyTrigger, CronSpec, DateSpec, IntervalSpec

MIN_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class CompiledTrigger:
    """An APScheduler trigger, the spec stored beside it (answered by the API) and its first run."""

    trigger: BaseTrigger
    spec: dict[str, Any]
    first_run: datetime


def aware(value: datetime, tz: tzinfo) -> datetime:
    """A datetime with an offset: a naive one is read in WATCHER_TIMEZONE."""
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def tidy_numbers(data: dict[str, Any]) -> dict[str, Any]:
    """``30.0`` → ``30``, so a job is answered with the numbers it was given."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in data.items()}


def _stored(spec: AnyTrigger, tz: tzinfo) -> dict[str, Any]:
    dates = {
        name: aware(value, tz)
        for name in ("start_date", "end_date", "run_date")
        if isinstance(value := getattr(spec, name, None), datetime)
    }
    stored = spec.model_dump(mode="json", exclude_none=True)
    # isoformat, not pydantic's JSON: UTC as "+00:00", the way every other datetime is answered
    stored.update({name: value.isoformat() for name, value in dates.items()})
    return tidy_numbers(stored)


def _weekday_numbers(value: str) -> bool:
    # crontab counts 0 = Sunday, APScheduler 3 counts 0 = Monday (its from_crontab keeps that
    # mismatch for compatibility): a number, or a step over `*`, would silently pick other days.
    for part in value.split(","):
        base = part.split("/", 1)[0]
        if any(ch.isdigit() for ch in base) or (base == "*" and "/" in part):
            return True
    return False


_WEEKDAY_HELP = (
    "name the weekdays (mon, tue, wed, thu, fri, sat, sun; ranges such as mon-fri): numbers are "
    "ambiguous (crontab counts 0 = Sunday, the scheduler 0 = Monday)"
)


def _cron(spec: CronSpec, tz: tzinfo, start: datetime | None, end: datetime | None) -> BaseTrigger:
    fields = {name: value for name in CRON_FIELDS if (value := getattr(spec, name)) is not None}
    if spec.expression is not None:
        if fields:
            raise InvalidJob.one(
                "trigger.expression", f"give either expression or the fields ({', '.join(fields)}), not both"
            )
        try:
            CronTrigger.from_crontab(spec.expression, timezone=tz)
        except ValueError as exc:
            raise InvalidJob.one("trigger.expression", str(exc)) from None
        minute, hour, day, month, day_of_week = spec.expression.split()
        if _weekday_numbers(day_of_week):
            raise InvalidJob.one("trigger.expression", f"day of week {day_of_week!r}: {_WEEKDAY_HELP}")
        # from_crontab takes no start/end dates: the same five fields, with them.
        fields = {"minute": minute, "hour": hour, "day": day, "month": month, "day_of_week": day_of_week}
    else:
        if not fields:
            raise InvalidJob.one("trigger", f"give an expression or at least one of {', '.join(CRON_FIELDS)}")
        problems = []
        for name, value in fields.items():
            if name == "day_of_week" and _weekday_numbers(value):
                problems.append((f"trigger.{name}", _WEEKDAY_HELP))
                continue
            try:
                CronTrigger(timezone=tz, **{name: value})
            except ValueError as exc:
                problems.append((f"trigger.{name}", str(exc)))
        if problems:
            raise InvalidJob(problems)
    return CronTrigger(timezone=tz, start_date=start, end_date=end, **fields)


def _interval(spec: IntervalSpec, tz: tzinfo, start: datetime | None, end: datetime | None) -> BaseTrigger:
    period = {
        name: value
        for name in ("weeks", "days", "hours", "minutes", "seconds")
        if (value := getattr(spec, name)) is not None
    }
    try:
        length = timedelta(**period).total_seconds()
    except OverflowError:
        raise InvalidJob.one("trigger", "the interval is too long") from None
    if length < MIN_INTERVAL_SECONDS:
        # APScheduler would silently turn 0 into 1 s; a shorter period would spin the scheduler.
        raise InvalidJob.one("trigger", "the interval (weeks, days, hours, minutes, seconds) must be at least 1 second")
    return IntervalTrigger(timezone=tz, start_date=start, end_date=end, **period)


def compile_trigger(spec: AnyTrigger, tz: tzinfo, now: datetime) -> CompiledTrigger:
    """Build the trigger of `spec`, or raise InvalidJob naming the field; blocking (see module doc)."""
    start = aware(spec.start_date, tz) if not isinstance(spec, DateSpec) and spec.start_date else None
    end = aware(spec.end_date, tz) if not isinstance(spec, DateSpec) and spec.end_date else None
    if start is not None and end is not None and end < start:
        raise InvalidJob.one("trigger.end_date", "must not be before start_date")
    trigger: BaseTrigger
    try:
        if isinstance(spec, CronSpec):
            trigger = _cron(spec, tz, start, end)
        elif isinstance(spec, IntervalSpec):
            trigger = _interval(spec, tz, start, end)
        else:
            run_date = aware(spec.run_date, tz)
            if run_date <= now:
                raise InvalidJob.one("trigger.run_date", f"{run_date.isoformat()} is in the past")
            trigger = DateTrigger(run_date=run_date, timezone=tz)
        first = trigger.get_next_fire_time(None, now)
    except (OverflowError, ValueError) as exc:
        raise InvalidJob.one("trigger", f"cannot be scheduled: {exc}") from None
    if first is None:
        if end is not None:
            raise InvalidJob.one("trigger.end_date", "the trigger would never fire before its end_date")
        raise InvalidJob.one("trigger", "the trigger would never fire (no date matches it)")
    return CompiledTrigger(trigger, _stored(spec, tz), first)


def rescan_trigger(interval: float, tz: tzinfo) -> tuple[BaseTrigger, dict[str, Any]]:
    """The trigger of the built-in `rescan` job: every WATCHER_RESCAN_INTERVAL seconds."""
    return IntervalTrigger(seconds=interval, timezone=tz), tidy_numbers({"type": "interval", "seconds": interval})


def retry_failed_trigger(tz: tzinfo) -> tuple[BaseTrigger, dict[str, Any]]:
    """The trigger of the built-in `retry_failed` job (hourly), which only fires once it is resumed."""
    return IntervalTrigger(hours=1, timezone=tz), {"type": "interval", "hours": 1}
