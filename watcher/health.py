"""The service's health: the named checks of ``/health/ready``, also exported as metrics.

``watcher_ready`` and ``watcher_ready_check{check}`` are set from the same checks every time they
run, and the ``/metrics`` route runs them before it renders, so the metrics never say something
else than readiness. (Whether a *file* is complete is :mod:`watcher.pipeline.completeness`.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from watcher.config import Settings
from watcher.metrics import Metrics
from watcher.pipeline.outbox_gate import OutboxGate, outbox_problem

Check = tuple[bool, str]


class Health:
    """Computes the readiness checks from the parts that know them."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        gate: OutboxGate,
        observer: Callable[[], Check],
        schedule_store: Callable[[], Awaitable[Check]],
        record_problem: Callable[[], str | None] | None = None,
        cluster: Callable[[], Check] | None = None,
    ) -> None:
        """`observer` and `schedule_store` answer their own checks; the rest is looked at here."""
        self._settings = settings
        self._metrics = metrics
        self._gate = gate
        self._observer = observer
        self._schedule_store = schedule_store
        self._record_problem = record_problem
        self._cluster = cluster  # cluster mode: this replica holds its id lock in PostgreSQL
        self.serving = False  # set once everything runs, cleared when the stop begins
        self.stopping = False

    def _filesystem(self) -> dict[str, Check]:
        s = self._settings
        inbox_ok = s.inbox.is_dir() and os.access(s.inbox, os.R_OK | os.X_OK)
        outbox = outbox_problem(s.outbox)
        state_ok = s.state_dir.is_dir() and os.access(s.state_dir, os.W_OK | os.X_OK)
        return {
            "inbox": (inbox_ok, f"{s.inbox} readable" if inbox_ok else f"{s.inbox} is missing or not readable"),
            "outbox": (outbox is None, outbox or f"{s.outbox} writable"),
            "state_dir": (state_ok, f"{s.state_dir} writable" if state_ok else f"{s.state_dir} is not writable"),
        }

    async def readiness(self) -> dict[str, Check]:
        """The named checks of /health/ready (file-system checks in a thread), exported as metrics."""
        checks: dict[str, Check] = {"observer": self._observer()}
        checks.update(await asyncio.to_thread(self._filesystem))
        checks["schedule_store"] = await self._schedule_store()
        if self._record_problem is not None:
            problem = await asyncio.to_thread(self._record_problem)
            checks["delivery_record"] = (problem is None, problem or "writable")
        if self._cluster is not None:
            checks["cluster"] = self._cluster()
        outbox_ok, outbox_detail = checks["outbox"]
        if not outbox_ok and self._gate.is_open and self.serving:
            self._gate.close(outbox_detail)  # readiness saw it first: delivery waits at once
        if not self._gate.is_open:
            checks["delivery"] = (False, f"paused: {self._gate.reason}")
        elif self.stopping:
            checks["delivery"] = (False, "shutting down")
        else:
            checks["delivery"] = (True, "delivering files")
        self._export(checks)
        return checks

    def _export(self, checks: dict[str, Check]) -> None:
        for name, (passed, _) in checks.items():
            self._metrics.ready_check.labels(check=name).set(1.0 if passed else 0.0)
        self._metrics.ready.set(1.0 if all(passed for passed, _ in checks.values()) else 0.0)
