"""Hostile requests against a real `python -m watcher run` on loopback (no mocks).

Lying Content-Length, bodies trickled byte by byte, path traversal in ids, a burst of 1000 concurrent
API calls while 5000 files are delivered, the concurrency cap, secrets in logs and answers, and a
long schemathesis run (soak). Every error the application gives is the JSON error shape, never a
500; the pipeline keeps delivering and the probes keep answering throughout.

Quick forms run in `make test`; the long ones are marked soak (`make soak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.jobs.test_openapi import CHECKS, FUZZED, TARGET, TARGET_ARGS
from tests.support import REPO
from tests.support.process import AUTH, TOKEN, WatcherProcess, api_watcher, run_cli
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

JSON_BODY_LIMIT = 64 * 1024


# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def watchers(tmp_path: Path) -> Iterator[Callable[..., WatcherProcess]]:
    """Start watchers with the given settings; all stopped at the end."""
    started: list[WatcherProcess] = []

    def make(**env: str) -> WatcherProcess:
        w = api_watcher(tmp_path / f"w{len(started)}", **env)
        started.append(w)
        return w.start("ready")

    yield make
    for w in started:
        w.close()


def is_error_shape(body: Any) -> bool:
    """``{"error": {"code": str, "message": str}}`` and nothing else."""
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"], dict)
        and set(body["error"]) == {"code", "message"}
        and all(isinstance(v, str) and v for v in body["error"].values())
    )


def assert_json_error(status: int, headers: Any, body: bytes, *allowed: int) -> dict[str, Any]:
    assert status in allowed, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    parsed: dict[str, Any] = json.loads(body)
    assert is_error_shape(parsed), parsed
    return parsed


def connect(w: WatcherProcess, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", w.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(sock: socket.socket, timeout: float = 5.0) -> Answer:
    """One HTTP answer read from a raw socket."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closes (EOF or reset) within `timeout` s; unread answer bytes are skipped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            continue
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True
    return False


def assert_healthy(w: WatcherProcess) -> None:
    """The service answers, and its log holds no unhandled error."""
    assert w.proc is not None and w.proc.poll() is None, w.log_tail()
    assert w.http.get("/health/live").status_code == 200
    assert w.http.get("/health/ready").status_code == 200
    assert w.http.get("/jobs").status_code == 200
    log = w.log_path.read_text(errors="replace")
    for marker in ("http.unhandled_error", "Exception in ASGI application", "Traceback"):
        assert marker not in log, f"{marker} in the service log:\n{w.log_tail()}"


def disk_snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Relative path → (size, mtime_ns) of everything under `roots`, except the job database and the log."""
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                full = Path(dirpath) / name
                if name.startswith("jobs.sqlite") or name == "watcher.log":
                    continue
                st = full.lstat()
                out[str(full)] = (st.st_size, st.st_mtime_ns)
    return out


def delivered(outbox: Path) -> int:
    try:
        return sum(1 for name in os.listdir(outbox) if not name.startswith("."))
    except FileNotFoundError:
        return 0


def stage(w: WatcherProcess, prefix: str, count: int, size: int = 200) -> list[Path]:
    """`count` small files in a folder beside the inbox (same filesystem), to be renamed in."""
    folder = w.root / f"staging-{prefix}"
    folder.mkdir()
    payload = os.urandom(size)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}-{i:05d}.bin"
        path.write_bytes(payload + i.to_bytes(4, "big"))
        paths.append(path)
    return paths


def move_in(w: WatcherProcess, paths: list[Path]) -> None:
    for path in paths:
        os.rename(path, w.inbox / path.name)


# ---- oversized and lying bodies ------------------------------------------------------------------


def test_a_content_length_that_claims_too_much_is_413_json_and_the_connection_closes(watchers: Any) -> None:
    w = watchers()
    job_head = ("Authorization: Bearer " + TOKEN, "Content-Type: application/json")

    # Claims 10 MB, sends 128 KiB and waits: 413 at once, then the server closes rather than
    # reading (and discarding) the ~10 MB it was promised.
    sock = connect(w)
    sock.sendall(head("POST", "/jobs", *job_head, "Content-Length: 10000000") + b"{" * (128 * 1024))
    answer = read_answer(sock)
    body = assert_json_error(answer.status, answer.headers, answer.body, 413)
    assert body["error"]["code"] == "payload_too_large"
    assert answer.headers.get("connection") == "close"
    assert closed_by_server(sock, 5), "the connection stayed open after a 413 on an unread body"
    sock.close()

    # No Content-Length, chunked, 200 KiB: the limit is enforced on the stream as it is read.
    sock = connect(w)
    chunk = b"[" * 8192
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(25))
    with contextlib.suppress(OSError):  # the server may close before it has taken everything
        sock.sendall(head("POST", "/jobs", *job_head, "Transfer-Encoding: chunked") + framed)
    answer = read_answer(sock)
    assert_json_error(answer.status, answer.headers, answer.body, 413)
    sock.close()

    # Claims 10 bytes, sends 1 MiB: the 10 bytes are the body (malformed JSON, a JSON 400); the rest is
    # not HTTP, which uvicorn refuses on its own and closes.
    sock = connect(w)
    with contextlib.suppress(OSError):
        sock.sendall(head("POST", "/jobs", *job_head, "Content-Length: 10") + b'{"id": "x' + b"A" * (1024 * 1024))
    answer = read_answer(sock)
    assert_json_error(answer.status, answer.headers, answer.body, 400)
    assert closed_by_server(sock, 5)
    sock.close()

    # Content-Length that is no number, negative, or twice with two values: refused by the HTTP
    # parser before the app sees a request (uvicorn's plain 400), never a crash.
    for bad in (["Content-Length: -1"], ["Content-Length: 1e9"], ["Content-Length: 5", "Content-Length: 6"]):
        sock = connect(w)
        sock.sendall(head("POST", "/jobs", *job_head, *bad) + b"{}{}{}")
        answer = read_answer(sock)
        assert answer.status == 400, (bad, answer)
        assert closed_by_server(sock, 5)
        sock.close()

    # A 70 KB request line and a 70 KB header: h11 bounds only what is still incomplete (16 KiB), so
    # these may arrive whole and reach the app (a JSON 404), or be refused by the parser (a 400).
    for raw in (head("GET", "/jobs/" + "a" * 70_000), head("GET", "/jobs/x", "X-Big: " + "b" * 70_000)):
        sock = connect(w)
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        answer = read_answer(sock)
        if answer.status != 400:
            assert_json_error(answer.status, answer.headers, answer.body, 404)
        sock.close()

    assert_healthy(w)
    assert [job["id"] for job in w.http.get("/jobs").json()["jobs"]] == ["rescan", "retry_failed"]


# ---- slow clients --------------------------------------------------------------------------------


@dataclass
class Trickle:
    """Clients that send a job body one byte at a time, reconnecting each time they are cut off."""

    w: WatcherProcess
    clients: int
    interval: float = 0.05
    cuts: list[tuple[float, int | None, bytes]] = field(default_factory=list)  # (seconds, status, body)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Trickle:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, name=f"trickle-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _client(self) -> None:
        while not self.stop.is_set():
            try:
                self._once()
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the test
                with self.lock:
                    self.errors.append(repr(exc))
                return

    def _once(self) -> None:
        sock = connect(self.w)
        try:
            sock.sendall(
                head(
                    "POST",
                    "/jobs",
                    "Authorization: Bearer " + TOKEN,
                    "Content-Type: application/json",
                    "Content-Length: 60000",  # under the 64 KiB limit: read, not refused
                )
                + b"{"
            )
            began = time.monotonic()
            received = b""
            while not self.stop.is_set():
                readable, _, _ = select.select([sock], [], [], self.interval)
                if readable:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if data:
                        received += data
                        continue
                    break  # closed by the server
                try:
                    sock.send(b" ")
                except OSError:
                    break  # cut off
            else:
                return  # the test is over before the server cut us off
            status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None
            body = received.partition(b"\r\n\r\n")[2]
            with self.lock:
                self.cuts.append((time.monotonic() - began, status, body))
        finally:
            sock.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def slow_clients_scenario(w: WatcherProcess, seconds: float, clients: int, timeout: float) -> None:
    """Trickle bodies for `seconds` while files are renamed into the inbox every 20 ms and
    /health/live is polled; checks the cuts, the deliveries and the probe latencies.
    """
    staged = stage(w, "slow", int(seconds / 0.02) + 10)
    trickle = Trickle(w, clients).start()
    moved_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    probe_latencies: list[float] = []
    try:
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < seconds:
            path = staged[i]
            os.rename(path, w.inbox / path.name)
            moved_at[path.name] = time.monotonic()
            i += 1
            t0 = time.monotonic()
            assert w.http.get("/health/live", timeout=5).status_code == 200
            probe_latencies.append(time.monotonic() - t0)
            now = time.monotonic()
            for name in os.listdir(w.outbox):
                seen_at.setdefault(name, now)
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))  # the pace of the writer, not a wait
        wait_until(lambda: delivered(w.outbox) >= len(moved_at), 30, "every file moved in to be delivered")
        now = time.monotonic()
        for name in os.listdir(w.outbox):
            seen_at.setdefault(name, now)
    finally:
        trickle.finish()

    assert not trickle.errors, trickle.errors
    # Every client was cut off near the deadline: a JSON 408 (or a close), never a 500.
    assert trickle.cuts, "no trickling client was ever cut off"
    expected_cuts = clients * int(seconds // (timeout + 0.5))
    assert len(trickle.cuts) >= expected_cuts, (len(trickle.cuts), expected_cuts)
    for elapsed, status, body in trickle.cuts:
        assert timeout - 0.1 <= elapsed <= timeout + 2.0, (elapsed, status, body, sorted(c[:2] for c in trickle.cuts))
        if status is not None:
            assert status in (408, 503), (status, body)
            assert is_error_shape(json.loads(body)), body
    # Deliveries went on: every file arrived, none late; the probe stayed quick.
    latencies = sorted(seen_at[name] - moved_at[name] for name in moved_at)
    p50, worst = latencies[len(latencies) // 2], latencies[-1]
    print(
        f"\nslow clients: {clients} trickling for {seconds:.0f} s, {len(trickle.cuts)} cut off at ~{timeout:g} s; "
        f"{len(moved_at)} files, delivery latency p50 {p50 * 1000:.0f} ms max {worst * 1000:.0f} ms; "
        f"/health/live max {max(probe_latencies) * 1000:.0f} ms"
    )
    assert worst < 3.0, f"a file waited {worst:.2f} s while clients trickled"
    assert max(probe_latencies) < 1.0, max(probe_latencies)
    assert_healthy(w)


def trickle_head(sock: socket.socket, started: float, limit: float) -> float:
    """Send a request head one byte every 50 ms, never finishing it; seconds until the server hangs up."""
    for byte in b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 10_000:
        if time.monotonic() - started > limit:
            break
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            with contextlib.suppress(OSError):
                if sock.recv(65536):
                    continue  # an answer to an earlier request on this connection
            return time.monotonic() - started
        try:
            sock.send(bytes([byte]))
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"a request head trickled for {limit} s was not cut off")


def test_slow_bodies_are_cut_off_without_blocking_deliveries_or_probes(watchers: Any) -> None:
    w = watchers(http_request_timeout="1")
    slow_clients_scenario(w, seconds=3, clients=8, timeout=1.0)

    # Slow request heads (slowloris) are cut at the same deadline: on a new connection, counted from
    # the connect, and on a kept-alive one, counted from the previous answer.
    sock = connect(w)
    assert 0.9 <= trickle_head(sock, time.monotonic(), 5) <= 3
    sock.close()
    sock = connect(w)
    sock.sendall(head("GET", "/health/live"))
    assert read_answer(sock).status == 200
    answered = time.monotonic()
    assert 0.9 <= trickle_head(sock, answered, 5) <= 3
    sock.close()
    assert_healthy(w)


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_slow_bodies_for_a_minute_soak(watchers: Any) -> None:
    w = watchers(http_request_timeout="5")
    slow_clients_scenario(w, seconds=60, clients=40, timeout=5.0)


# ---- path parameters -----------------------------------------------------------------------------

TRAVERSALS = [
    "/jobs/..%2F..%2Fetc%2Fpasswd",
    "/jobs/..%2F..%2F..%2Fvictim",
    "/jobs/%2e%2e",
    "/jobs/%2e%2e%2f%2e%2e%2fvictim",
    "/jobs/..%5c..%5cvictim",
    "/jobs/%00",
    "/jobs/rescan%00",
    "/jobs/%2Fetc%2Fpasswd",
    "/jobs/%252e%252e%252fvictim",
    "/jobs/" + "a" * 8000,
    "/jobs/" + "%C3%A9" * 1000,
    "/jobs/%FF%FE",
]


def test_path_traversal_in_ids_is_404_json_and_touches_nothing(watchers: Any, tmp_path: Path) -> None:
    w = watchers()
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    before = disk_snapshot(tmp_path)
    paths = [p + suffix for p in TRAVERSALS for suffix in ("", "/pause", "/run", "/runs")]
    with httpx.Client(base_url=w.url, timeout=10) as client:
        for path in paths:
            for method in ("GET", "DELETE", "PATCH", "POST"):
                json_body: dict[str, object] | None = {"args": {}} if method == "PATCH" else None
                # httpx would normalise the path: send it exactly as written
                request = client.build_request(method, path, headers=AUTH, json=json_body)
                request.url = request.url.copy_with(raw_path=path.encode("ascii"))
                r = client.send(request)
                assert r.status_code in (404, 405, 422), (method, path, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/json")
                assert is_error_shape(r.json()), r.text
    assert victim.read_text() == "do not touch"
    assert disk_snapshot(tmp_path) == before
    assert [job["id"] for job in w.http.get("/jobs").json()["jobs"]] == ["rescan", "retry_failed"]
    assert_healthy(w)


# ---- a burst of API calls while files are delivered ----------------------------------------------

BURST_FILES = 5000
BURST_CALLS = 1000


@dataclass
class Burst:
    """Waves of BURST_CALLS concurrent API calls until stopped; every answer is recorded."""

    url: str
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    waves: int = 0

    def calls(self) -> list[tuple[str, str, dict[str, str], bytes | None]]:
        json_h = {**AUTH, "Content-Type": "application/json"}
        menu: list[tuple[str, str, dict[str, str], bytes | None]] = [
            ("GET", "/jobs", {}, None),
            ("GET", "/jobs/rescan", {}, None),
            ("GET", "/jobs/rescan/runs", {}, None),
            ("GET", "/jobs/no-such-job", {}, None),
            ("GET", "/openapi.json", {}, None),
            ("POST", "/jobs", json_h, b'{"kind": "os:system", "trigger": {"type": "date"}}'),
            ("POST", "/jobs", {"Content-Type": "application/json"}, b"{}"),
            ("PATCH", "/jobs/rescan", json_h, b"{not json"),
            ("DELETE", "/jobs/no-such-job", AUTH, None),
            ("PUT", "/jobs", {}, None),
        ]
        return [menu[i % len(menu)] for i in range(BURST_CALLS)]

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=BURST_CALLS, max_keepalive_connections=BURST_CALLS)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=60) as client:
            while not stop.is_set():
                await asyncio.gather(*(self.call(client, *c) for c in self.calls()))
                self.waves += 1

    async def call(
        self, client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> None:
        try:
            r = await client.request(method, path, headers=headers, content=body)
        except httpx.TransportError as exc:
            self.transport_errors.append(f"{method} {path}: {exc!r}")
            return
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        if r.status_code >= 400:
            ok = (r.status_code < 500 or r.status_code == 503) and is_error_shape(r.json())
            if r.status_code == 503 and "retry-after" not in r.headers:
                ok = False
            if not ok:
                self.problems.append(f"{method} {path} → {r.status_code} {r.text[:200]}")


def test_a_burst_of_api_calls_does_not_starve_the_pipeline(watchers: Any) -> None:
    w = watchers(settle_seconds="0.2")
    quiet_files = stage(w, "quiet", BURST_FILES)
    busy_files = stage(w, "busy", BURST_FILES)

    async def deliver(paths: list[Path], target: int) -> float:
        began = time.monotonic()
        await asyncio.to_thread(move_in, w, paths)
        deadline = began + 90
        while delivered(w.outbox) < target:
            assert time.monotonic() < deadline, f"{delivered(w.outbox)} of {target} delivered after 90 s"
            await asyncio.sleep(0.02)
        return time.monotonic() - began

    async def scenario() -> tuple[float, float, Burst]:
        quiet = await deliver(quiet_files, BURST_FILES)
        burst, stop = Burst(w.url), asyncio.Event()
        load = asyncio.create_task(burst.run(stop))
        while not burst.statuses:  # the first answers are back: the burst is on
            assert not load.done(), load
            await asyncio.sleep(0.01)
        try:
            busy = await deliver(busy_files, 2 * BURST_FILES)
        finally:
            stop.set()
            await load
        return quiet, busy, burst

    quiet, busy, burst = asyncio.run(scenario())
    factor = busy / quiet
    answered = sum(burst.statuses.values())
    print(
        f"\nAPI burst: {BURST_FILES} files in {quiet:.2f} s quiet, {busy:.2f} s under {burst.waves} waves of "
        f"{BURST_CALLS} concurrent calls ({answered} answers {dict(sorted(burst.statuses.items()))}): "
        f"slowdown factor {factor:.2f}"
    )
    assert not burst.problems, burst.problems[:10]
    assert not burst.transport_errors, burst.transport_errors[:10]
    assert 500 not in burst.statuses
    assert all(200 <= s < 500 or s == 503 for s in burst.statuses), burst.statuses
    assert any(200 <= s < 300 for s in burst.statuses), "the API served nothing at all under the burst"
    assert factor < 5, f"deliveries were {factor:.1f}x slower under the API burst"
    assert delivered(w.outbox) == 2 * BURST_FILES
    assert_healthy(w)


# ---- the concurrency cap -------------------------------------------------------------------------


def test_over_the_cap_answers_503_json_with_retry_after_and_probes_still_answer(watchers: Any) -> None:
    w = watchers(http_max_connections="2", http_request_timeout="20")
    holders: list[socket.socket] = []
    try:
        # Slow requests hold the two slots: bodies that never finish. The request that started the
        # service may still be leaving its slot for a moment, so a holder answered at once (503)
        # is replaced; one that gets no answer within 0.3 s is holding its slot.
        deadline = time.monotonic() + 15
        while len(holders) < 2:
            assert time.monotonic() < deadline, "could not take both slots"
            sock = connect(w)
            auth = "Authorization: Bearer " + TOKEN
            sock.sendall(head("POST", "/jobs", auth, "Content-Type: application/json", "Content-Length: 1000") + b"{")
            answered, _, _ = select.select([sock], [], [], 0.3)
            if answered:
                sock.close()
                continue
            holders.append(sock)
        wait_until(lambda: w.http.get("/jobs").status_code == 503, 10, "both slots taken")

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=w.url, timeout=10) as client:
                return await asyncio.gather(*(client.get("/jobs") for _ in range(50)))

        answers = asyncio.run(flood())
        for r in answers:
            body = assert_json_error(r.status_code, r.headers, r.content, 503)
            assert body["error"]["code"] == "overloaded"
            assert r.headers["retry-after"] == "1"
        # the probes have their own budget
        for path in ("/health/live", "/health/ready", "/metrics"):
            assert w.http.get(path).status_code == 200, path
    finally:
        for sock in holders:
            sock.close()
    # The slots come back once the slow clients are gone.
    wait_until(lambda: w.http.get("/jobs").status_code == 200, 10, "a free slot")
    assert_healthy(w)


# ---- secrets -------------------------------------------------------------------------------------


def test_the_token_never_appears_in_logs_answers_or_check_config(watchers: Any, tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(16)
    w = watchers(api_token=token, log_level="debug", http_request_timeout="1", http_max_connections="4")
    right = {"Authorization": f"Bearer {token}"}
    wrong = [
        {"Authorization": f"bearer {token}"},
        {"Authorization": f"Token {token}"},
        {"Authorization": f"Bearer  {token}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ]
    answers: list[httpx.Response] = []
    job = {"id": "leak-check", "kind": "sweep", "trigger": {"type": "interval", "hours": 1}}
    answers.append(w.http.post("/jobs", json=job, headers=right))
    assert answers[-1].status_code == 201
    answers.append(w.http.post("/jobs", json={**job, "kind": "nope"}, headers=right))
    answers.append(w.http.post("/jobs", content=b"{bad", headers={**right, "Content-Type": "application/json"}))
    answers.append(w.http.post("/jobs/leak-check/run", headers=right))
    for headers in wrong:
        answers.append(w.http.post("/jobs", json=job, headers=headers))
        assert answers[-1].status_code == 401
        answers.append(w.http.delete("/jobs/leak-check", headers=headers))
    answers.append(w.http.delete("/jobs/leak-check", headers=right))
    assert answers[-1].status_code == 204
    # a timed-out request and a refused one carry the token too
    sock = connect(w)
    sock.sendall(
        head("POST", "/jobs", f"Authorization: Bearer {token}", "Content-Type: application/json", "Content-Length: 9")
    )
    cut = read_answer(sock)
    sock.close()
    assert cut.status == 408
    for r in answers:
        assert token not in r.text, (r.status_code, r.text)
        assert all(token not in v for v in r.headers.values()), r.headers
    assert token.encode() not in cut.body
    for path in ("/metrics", "/openapi.json", "/health/ready", "/jobs"):
        assert token not in w.http.get(path).text, path
    assert w.terminate() == 0
    log = w.log_path.read_text(errors="replace")
    assert '"level":"debug"' in log or '"level": "debug"' in log, "debug logging was not on"
    assert token not in log

    env = {**w.env}
    result = run_cli(["check-config"], env, REPO)
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr
    assert "********" in result.stdout
    bad = run_cli(["check-config"], {**env, "WATCHER_WORKERS": "0"}, REPO)
    assert bad.returncode == 2
    assert token not in bad.stdout + bad.stderr


# ---- schemathesis, long (soak) ---------------------------------------------------------------------


def fuzz(
    w: WatcherProcess,
    operation: Any,
    mode: GenerationMode,
    existing: bool,
    headers: dict[str, str],
    examples: int,
) -> None:
    """tests/jobs/test_openapi.py's driver (as_strategy + hypothesis), with the example count and headers as knobs."""
    fixed = {"id": TARGET["id"]} if existing else None

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case[Any]) -> None:
        if existing and w.http.get(f"/jobs/{TARGET['id']}").status_code == 404:
            w.http.create({**TARGET, "args": TARGET_ARGS})
        case.call_and_validate(base_url=w.url, headers=headers, checks=CHECKS)

    check()


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("authenticated", [True, False], ids=["auth", "anonymous"])
def test_the_live_api_keeps_its_document_under_many_examples_soak(watchers: Any, authenticated: bool) -> None:
    """Like tests/jobs/test_openapi.py's fuzzing, with many more examples, with and without the token,
    against a service whose limits are on (a short request timeout: no request may hit it).
    """
    w = watchers(http_request_timeout="10")
    headers = AUTH if authenticated else {}
    schema = schemathesis.openapi.from_url(f"{w.url}/openapi.json", headers=headers)
    for path, method, mode, existing in FUZZED:
        fuzz(w, schema[path][method.upper()], mode, existing, headers, examples=300)
    assert_healthy(w)
