"""The core routes through a real uvicorn on loopback: health, metrics (text and OpenMetrics), errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until

CONTRACT_METRICS = [
    'watcher_files_discovered_total{source="event"}',
    'watcher_files_discovered_total{source="rescan"}',
    "watcher_files_delivered_total",
    "watcher_files_duplicate_total",
    "watcher_files_failed_total",
    "watcher_bytes_delivered_total",
    "watcher_delivery_latency_seconds_bucket",
    "watcher_transfer_duration_seconds_bucket",
    "watcher_queue_depth",
    "watcher_inflight_transfers",
    "watcher_events_dropped_total",
    "watcher_observer_up",
    "watcher_oldest_pending_seconds",
    "watcher_build_info{version=",
    "process_resident_memory_bytes",
]


def test_health_metrics_and_errors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def main() -> None:
        async with running(settings) as service:
            (settings.inbox / "a.txt").write_bytes(b"abc")
            await await_until(lambda: metric_value(service, "watcher_files_delivered_total") == 1, 10, "delivery")
            base = f"http://127.0.0.1:{settings.http_port}"
            async with httpx.AsyncClient(base_url=base, follow_redirects=False) as client:
                live = await client.get("/health/live")
                assert live.status_code == 200 and live.json()["status"] == "ok"
                ready = await client.get("/health/ready")
                body = ready.json()
                assert ready.status_code == 200 and body["status"] == "ok", body
                assert {"observer", "inbox", "outbox", "state_dir", "delivery"} <= body["checks"].keys()
                assert all(set(c) == {"ok", "detail"} for c in body["checks"].values())

                text = await client.get("/metrics")
                assert text.status_code == 200  # a plain route: no 307 redirect as a mount would give
                assert text.headers["content-type"].startswith("text/plain")
                for name in CONTRACT_METRICS:
                    assert name in text.text, name
                assert "watcher_files_delivered_total 1.0" in text.text
                assert "watcher_delivery_latency_seconds_count 1.0" in text.text

                om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
                assert om.headers["content-type"].startswith("application/openmetrics-text")
                assert om.text.rstrip().endswith("# EOF")
                assert "watcher_files_delivered_total 1.0" in om.text

                missing = await client.get("/no/such/route")
                assert missing.status_code == 404
                assert missing.json()["error"]["code"] == "not_found"
                wrong = await client.post("/health/live")
                assert wrong.status_code == 405 and "error" in wrong.json()

    asyncio.run(main())
