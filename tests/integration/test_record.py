"""The delivery record and the why API: every outcome kept and queryable, ``GET /files/{path}``,
``GET /deliveries``, ``GET /status``, and a record that cannot be written pausing delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.service import metric_value, running
from tests.support.settings import make_settings
from tests.support.wait import await_until
from watcher.config import Settings
from watcher.metrics import create_metrics
from watcher.pipeline.intake import Intake
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.record.explain import Explainer
from watcher.record.store import DeliveryRecord

TOKEN = "s3cret-token"


def api(settings: Settings, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", headers=headers, timeout=10)


async def delivered(settings: Settings, count: int) -> None:
    await await_until(lambda: len(list(settings.outbox.rglob("*.txt"))) >= count, 20, f"{count} deliveries")


def test_every_outcome_is_recorded_and_explained(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, checksum="sha256", max_attempts="1", on_conflict="fail")
    settings.outbox.mkdir(parents=True)
    (settings.outbox / "dup.txt").write_bytes(b"same bytes")
    (settings.outbox / "clash.txt").write_bytes(b"old bytes")

    async def main() -> None:
        async with running(settings) as service, api(settings) as client:
            (settings.inbox / "sub").mkdir()
            (settings.inbox / "sub" / "new.txt").write_bytes(b"fresh")
            (settings.inbox / "dup.txt").write_bytes(b"same bytes")
            (settings.inbox / "clash.txt").write_bytes(b"new bytes")
            await await_until(lambda: not any(settings.inbox.rglob("*.txt")), 20, "the inbox emptied")
            await await_until(lambda: metric_value(service, "watcher_files_failed_total") == 1, 10, "quarantine")

            new = (await client.get("/files/sub/new.txt")).json()
            assert new["state"] == "delivered" and "sub/new.txt" in new["detail"]
            (row,) = new["records"]
            assert row["outcome"] == "delivered" and row["target"] == "sub/new.txt" and row["size"] == 5
            assert row["sha256"] == hashlib.sha256(b"fresh").hexdigest()
            assert row["attempts"] == 1 and row["error"] is None and row["source"] == "event"
            assert row["first_seen"] <= row["finished_at"] and row["completed_at"] <= row["finished_at"]
            assert row["replica"] == settings.replica_id

            dup = (await client.get("/files/dup.txt")).json()
            assert dup["state"] == "duplicate" and dup["records"][0]["target"] == "dup.txt"

            clash = (await client.get("/files/clash.txt")).json()
            assert clash["state"] == "quarantined"
            assert clash["records"][0]["target"] == "clash.txt" and "already exists" in clash["records"][0]["error"]
            assert (settings.failed_path / "clash.txt").read_bytes() == b"new bytes"

            page = (await client.get("/deliveries")).json()
            assert [r["outcome"] for r in page["items"]].count("delivered") == 1 and page["next"] is None
            failed = (await client.get("/deliveries", params={"outcome": "quarantined"})).json()["items"]
            assert [r["path"] for r in failed] == ["clash.txt"]
            assert [
                r["path"] for r in (await client.get("/deliveries", params={"prefix": "sub/"})).json()["items"]
            ] == ["sub/new.txt"]
            status = (await client.get("/status")).json()
            assert status["delivery"] == "running" and status["waiting"]["total"] == 0
            assert [r["path"] for r in status["latest_failures"]] == ["clash.txt"]

    asyncio.run(main())


def test_deliveries_pages_oldest_first_with_a_cursor(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    count = 250

    async def main() -> None:
        async with running(settings), api(settings) as client:
            for i in range(count):
                (settings.inbox / f"f{i:03}.txt").write_bytes(b"x")
            await delivered(settings, count)
            await await_until(lambda: _rows(settings) == count, 10, "every record")
            seen: list[dict[str, Any]] = []
            cursor = None
            while True:
                params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/deliveries", params=params)).json()
                seen += page["items"]
                cursor = page["next"]
                if cursor is None:
                    break
            assert len(seen) == count and len({r["path"] for r in seen}) == count
            assert [(r["finished_at"], r["id"]) for r in seen] == sorted((r["finished_at"], r["id"]) for r in seen)
            later = (await client.get("/deliveries", params={"since": seen[200]["finished_at"]})).json()["items"]
            assert all(r["finished_at"] >= seen[200]["finished_at"] for r in later)
            assert {r["id"] for r in seen[200:]} <= {r["id"] for r in later}  # since is inclusive
            for bad in ({"limit": "0"}, {"limit": "1001"}, {"since": "yesterday"}, {"outcome": "lost"},
                        {"cursor": "!!"}, {"color": "red"}):  # fmt: skip
                answer = await client.get("/deliveries", params=bad)
                assert answer.status_code == 422, bad
                assert next(iter(bad)) in answer.json()["error"]["message"]

    asyncio.run(main())


def _rows(settings: Settings) -> int:
    with sqlite3.connect(settings.state_dir / "record.sqlite") as conn:
        return int(conn.execute("select count(*) from watcher_deliveries").fetchone()[0])


def test_the_why_api_is_closed_without_the_token_and_refuses_hostile_paths(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_token=TOKEN)

    async def main() -> None:
        async with running(settings):
            async with api(settings) as anonymous:
                for route in ("/files/a.txt", "/deliveries", "/status"):
                    assert (await anonymous.get(route)).status_code == 401, route
            async with api(settings, TOKEN) as client:
                for raw, code in (
                    ("/files/%2Fetc%2Fpasswd", 400),
                    ("/files/a/%2E%2E/%2E%2E/etc/passwd", 400),
                    ("/files/x%00y", 400),
                    ("/files/" + "a/" * 3000 + "b", 400),
                    ("/files/nothing-here.txt", 404),
                ):
                    answer = await client.get(raw)
                    assert answer.status_code == code, (raw[:60], answer.text)
                    assert answer.json()["error"]["message"]
                # A name that is not UTF-8 is delivered, and can be asked about percent-encoded.
                os.makedirs(settings.inbox, exist_ok=True)
                with open(os.fsencode(settings.inbox) + b"/caf\xe9.bin", "wb") as handle:
                    handle.write(b"latin-1 name")
                await await_until(lambda: not os.listdir(settings.inbox), 10, "the odd name delivered")
                answer = await client.get("/files/caf%E9.bin")
                assert answer.status_code == 200 and answer.json()["state"] == "delivered", answer.text

    asyncio.run(main())


def test_files_in_the_inbox_say_where_they_stand(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settle_seconds="30")

    async def main() -> None:
        async with running(settings), api(settings) as client:
            (settings.inbox / "upload.part").write_bytes(b"half")
            (settings.inbox / "link").symlink_to("/etc/hostname")
            os.mkfifo(settings.inbox / "pipe")
            with open(settings.inbox / "growing.csv", "wb") as writer:
                writer.write(b"a,b\n")
                writer.flush()

                async def held() -> dict[str, Any]:
                    return dict((await client.get("/files/growing.csv")).json())

                await await_until(lambda: True, 1)
                answer = await held()
                assert answer["state"] == "waiting" and f"pid {os.getpid()}" in answer["detail"], answer
            excluded = (await client.get("/files/upload.part")).json()
            assert excluded["state"] == "excluded" and "*.part" in excluded["detail"]
            for name in ("link", "pipe"):
                ignored = (await client.get(f"/files/{name}")).json()
                assert ignored["state"] == "ignored", ignored

    asyncio.run(main())


def test_a_file_no_event_or_walk_has_seen_says_when_the_rescan_comes(tmp_path: Path) -> None:
    # The explainer on its own, over an intake that has seen nothing: the backlog case.
    settings = make_settings(tmp_path)
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "unseen.txt").write_bytes(b"x")
    settings.state_dir.mkdir(parents=True)
    record = DeliveryRecord(settings.record_url)
    record.open()

    async def next_rescan() -> float | None:
        return 2_000_000_000.0

    async def main() -> dict[str, Any]:
        metrics = create_metrics()
        intake = Intake(settings, metrics, asyncio.Queue())
        explainer = Explainer(
            settings.inbox, settings.settle_seconds, intake, OutboxGate(settings.outbox, metrics), intake.filter,
            record, next_rescan,
        )  # fmt: skip
        return await explainer.explain("unseen.txt")

    try:
        answer = asyncio.run(main())
    finally:
        record.close()
    assert answer["state"] == "waiting"
    assert "not seen yet" in answer["detail"] and "2033-05-18T03:33:20Z" in answer["detail"]


@pytest.mark.parametrize("same_fs", [True, False], ids=["same-filesystem", "copy"])
def test_a_record_that_cannot_be_written_pauses_delivery_and_keeps_the_source(tmp_path: Path, same_fs: bool) -> None:
    outbox = tmp_path / "outbox" if same_fs else Path("/dev/shm") / f"watcher-rec-{os.getpid()}-{tmp_path.name}"
    settings = make_settings(tmp_path, outbox=str(outbox))

    async def main() -> None:
        async with running(settings) as service, api(settings) as client:
            (settings.inbox / "first.txt").write_bytes(b"1")
            await delivered(settings, 1)
            # timeout: the service's own readiness probe may hold the write lock for a moment.
            locker = sqlite3.connect(settings.state_dir / "record.sqlite", isolation_level=None, timeout=10)
            try:
                locker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: every write waits, then fails
                (settings.inbox / "second.txt").write_bytes(b"2")
                await await_until(lambda: not service.gate.is_open, 20, "delivery to pause")
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert "delivery record" in ready.json()["checks"]["delivery"]["detail"]
                assert (settings.inbox / "second.txt").exists(), "a source went before its record"
            finally:
                if locker.in_transaction:
                    locker.execute("ROLLBACK")
                locker.close()
            await await_until(lambda: not (settings.inbox / "second.txt").exists(), 20, "delivery to resume")
            assert (settings.outbox / "second.txt").read_bytes() == b"2"
            records = (await client.get("/files/second.txt")).json()["records"]
            assert [(r["outcome"], r["attempts"]) for r in records] == [("delivered", 1)], "not the file's fault"
            assert metric_value(service, "watcher_files_retried_total") == 0
            assert metric_value(service, "watcher_files_delivered_total") == 2

    try:
        asyncio.run(main())
    finally:
        if not same_fs:
            import shutil

            shutil.rmtree(outbox, ignore_errors=True)
