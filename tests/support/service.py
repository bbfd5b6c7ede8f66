"""A real `Service` (real observer, transfers and uvicorn) in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from watcher.config import Settings
from watcher.metrics import create_metrics
from watcher.service import Service


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """Run a real Service in this event loop; on exit stop it and expect exit code 0."""
    service = Service(settings, create_metrics())
    task = asyncio.create_task(service.run(handle_signals=False))
    started = asyncio.create_task(service.started.wait())
    await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise the start-up error
    assert service.started.is_set(), "service did not start"
    try:
        yield service
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 60) == 0


def metric_value(service: Service, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one sample of the service's registry (0 when it has none yet)."""
    value = service.metrics.registry.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value
