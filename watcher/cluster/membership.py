"""Membership (cluster mode): who is alive and who leads, decided by PostgreSQL session advisory locks.

Each replica opens one dedicated psycopg connection (never a pooled one) and holds, for its whole
life, a session advisory lock keyed by its WATCHER_REPLICA_ID. The session's lifetime is the
replica's liveness: when the process dies, the server ends the session and the lock is free, which
proves to the others that the replica's claims can be taken over. A second process with the same id
cannot get the lock and exits 2.

On that same connection the replica tries, every :data:`HEARTBEAT` seconds, a second lock, the
leader lock; its holder runs the schedule. A lost connection loses both locks at once: the replica
stops leading at once and readiness fails (check ``cluster``) until it holds its id again.

The live replicas are those of the table ``watcher_replicas`` (id, backend pid, lock key) whose
backend holds the id's lock right now, as ``pg_locks`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from watcher.cluster.claims import claim_ages, claims_root, hand_back_all, prune_empty, replicas_with_claims
from watcher.config import ConfigError, Settings
from watcher.logging import get_logger
from watcher.metrics import Metrics
from watcher.schema import DDL_KEY
from watcher.schema import lock_key as lock_key  # re-exported: the advisory keys of replicas and the leader

log = get_logger(__name__)

HEARTBEAT = 2.0  # seconds between two looks at the locks (leader take-over, lost connection)
ADOPT_EVERY = 10.0  # seconds between two sweeps for claims of replicas that are gone
CLAIM_DIR_AGE = 60.0  # an empty folder in our claims older than this is removed by the sweep
QUERY_TIMEOUT = 5.0
ACQUIRE_FOR = 3.0  # at start, how long a held id is tried again (an adopter holds it for a moment)
LEADER_LOCK = "watcher:leader"
# The server side of the membership session (user-settable GUCs; ignored on a Unix socket).
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=15000"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watcher_replicas (
    id VARCHAR(63) PRIMARY KEY,
    pid INTEGER NOT NULL,
    lock_key BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL
)
"""


LEADER_KEY = lock_key(LEADER_LOCK)


def conninfo(url: str) -> str:
    """The libpq URL of an SQLAlchemy PostgreSQL URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _split(key: int) -> tuple[int, int]:
    """A bigint advisory key as pg_locks shows it: (classid, objid)."""
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


class Membership:
    """A replica's id lock, the leader lock, the live replicas and the hand-over of claims."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        on_leader: Callable[[bool], None],
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        """`on_leader` is called on the loop when this replica starts or stops leading; `on_beat`
        on every heartbeat while it leads (the scheduler looks at the shared store then).
        """
        self.settings = settings
        self.replica = settings.replica_id
        self.key = lock_key(self.replica)
        self.metrics = metrics
        self._on_leader = on_leader
        self._on_beat = on_beat
        self._conninfo = conninfo(settings.jobstore)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self.leader = False
        self.ok = False
        self.detail = "not started"
        self._last_adopt = 0.0
        self._stepped_down = False  # stopping: never lead again in this process
        self._claim_folders: set[str] = set()  # the replica labels of watcher_cluster_oldest_claim_age_seconds
        self.live_ids: tuple[str, ...] = ()  # the live replicas, by id, while unchanged (see owns)
        self._last_seen: tuple[str, ...] = ()

    # ---- the dedicated connection --------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=int(QUERY_TIMEOUT),
            application_name=f"watcher {self.replica}"[:63],
            # A partitioned replica must lose its locks in seconds, not after the kernel's 2 hours:
            # keepalives on our side (we notice a dead server) and on the server's (it ends the
            # session of a dead node, which frees the locks: its claims and the lead go to others).
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=15000,
            options=SERVER_KEEPALIVES,
        )

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn
        if conn is None or conn.closed:
            raise psycopg.OperationalError("the cluster connection is closed")
        async with self._lock:

            async def run() -> list[tuple[Any, ...]]:
                cur = await conn.execute(sql, params)
                return await cur.fetchall() if cur.description else []

            return await asyncio.wait_for(run(), QUERY_TIMEOUT)

    async def start(self) -> None:
        """Connect, take this replica's id lock (ConfigError when a live replica holds it) and register."""
        try:
            self._conn = await self._connect()
        except psycopg.Error as exc:
            raise ConfigError(f"WATCHER_JOBSTORE_URL: cluster mode cannot reach PostgreSQL: {exc}") from None
        deadline = time.monotonic() + ACQUIRE_FOR
        while not await self._try_lock(self.key):
            if time.monotonic() >= deadline:
                await self.close()
                raise ConfigError(
                    f"WATCHER_REPLICA_ID={self.replica!r} is invalid: a live replica holds this id "
                    "(each replica needs its own id)"
                )
            await asyncio.sleep(0.25)  # a bounded start-up retry: nothing runs yet that could stop it
        await self._query("SELECT pg_advisory_lock(%s)", (DDL_KEY,))  # replicas starting together: see schema.py
        try:
            await self._query(_SCHEMA)
        finally:
            await self._query("SELECT pg_advisory_unlock(%s)", (DDL_KEY,))
        await self._register()
        self.ok, self.detail = True, f"holds replica id {self.replica}"
        log.info("cluster.joined", replica=self.replica)

    async def _try_lock(self, key: int) -> bool:
        rows = await self._query("SELECT pg_try_advisory_lock(%s)", (key,))
        return bool(rows[0][0])

    async def _register(self) -> None:
        await self._query(
            "INSERT INTO watcher_replicas (id, pid, lock_key, started_at) VALUES (%s, pg_backend_pid(), %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET pid = EXCLUDED.pid, lock_key = EXCLUDED.lock_key, "
            "started_at = EXCLUDED.started_at",
            (self.replica, self.key, time.time()),
        )

    async def step_down(self) -> None:
        """Stopping (after the scheduler stopped): let another replica lead now, not after the drain."""
        self._stepped_down = True
        if not self.leader:
            return
        self._set_leader(False)
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
            await self._query("SELECT pg_advisory_unlock(%s)", (LEADER_KEY,))

    async def close(self) -> None:
        """Give up leading and close the connection (the server frees both locks)."""
        self._set_leader(False)
        self.ok, self.detail = False, "stopped"
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), QUERY_TIMEOUT)

    # ---- the heartbeat -----------------------------------------------------------------------

    def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            self.metrics.cluster_leader.set(1.0 if leader else 0.0)
            log.info("cluster.leader" if leader else "cluster.follower", replica=self.replica)
            self._on_leader(leader)

    async def beat(self) -> None:
        """One heartbeat: check our locks (reconnect when lost), try to lead, adopt orphaned claims."""
        try:
            if self._conn is None or self._conn.closed:
                await self._reconnect()
            held = await self._held()
            if self.key not in held:
                raise psycopg.OperationalError("the replica id lock is no longer held")
            leader = LEADER_KEY in held or (not self._stepped_down and await self._try_lock(LEADER_KEY))
            self.ok, self.detail = True, f"holds replica id {self.replica}" + (", leader" if leader else "")
            self._set_leader(leader)
            _, live = await self.replicas()
            self.metrics.cluster_replicas.set(len(live))
            seen = tuple(r["id"] for r in live)
            # Files are divided only while the live replicas are the same at two heartbeats in a row:
            # around a join or a death the views of the replicas differ, and every one takes every file.
            self.live_ids = seen if seen == self._last_seen else ()
            self._last_seen = seen
            self.metrics.cluster_dividing.set(1.0 if len(self.live_ids) > 1 else 0.0)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._lost(exc)
            return
        if self.leader and self._on_beat is not None:
            self._on_beat()
        if time.monotonic() - self._last_adopt >= ADOPT_EVERY:
            self._last_adopt = time.monotonic()
            try:
                await self.adopt()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("cluster.adopt_failed", error=str(exc))

    def _lost(self, exc: BaseException) -> None:
        self._set_leader(False)  # first: a replica that may have lost its lock never runs the schedule
        self.metrics.cluster_replicas.set(0.0)  # it cannot see the others now
        self.live_ids = self._last_seen = ()  # ...so it takes every file it hears of (see owns)
        self.metrics.cluster_dividing.set(0.0)
        why = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
        if self.ok:
            log.error("cluster.lock_lost", replica=self.replica, error=why, action="reconnecting every 2 s")
        self.ok, self.detail = False, f"lost the replica id lock: {why}"
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.get_running_loop().create_task(_close_quietly(conn))

    async def _reconnect(self) -> None:
        self._conn = await self._connect()
        if not await self._try_lock(self.key):
            raise psycopg.OperationalError(f"replica id {self.replica} is held by another process")
        await self._register()
        log.info("cluster.rejoined", replica=self.replica)

    async def _held(self) -> set[int]:
        rows = await self._query(
            "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND pid = pg_backend_pid()"
        )
        return {(int(c) << 32) | int(o) for c, o in rows}

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every HEARTBEAT seconds until `stop` is set; measure the claims' ages as often."""
        while not stop.is_set():
            await self.beat()
            await self.measure_claims()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT)

    # ---- who is there --------------------------------------------------------------------------

    async def replicas(self) -> tuple[str | None, list[dict[str, Any]]]:
        """(leader id or None, [{"id", "leader"}] of the live replicas, by id)."""
        registered = await self._query("SELECT id, pid, lock_key FROM watcher_replicas")
        locks = await self._query(
            "SELECT pid, classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1"
        )
        held = {(int(pid), (int(c) << 32) | int(o)) for pid, c, o in locks}
        leader: str | None = None
        live: list[dict[str, Any]] = []
        for replica, pid, key in sorted(registered):
            if (int(pid), int(key)) not in held:
                continue
            leads = (int(pid), LEADER_KEY) in held
            if leads:
                leader = replica
            live.append({"id": replica, "leader": leads})
        return leader, live

    def owns(self, rel: str) -> bool:
        """Whether an event's file is this replica's to take at once.

        Every replica on one node hears every inotify event; if all of them queued every file they
        would all race for every claim (one rename wins, the others answer ENOENT), spending the CPU
        of a file once per replica. So an event's file goes to one live replica, picked by a hash of
        its name; the others leave it. Walks (start-up, rescans) still take every file they list: a
        file whose owner died before claiming it is delivered by the next rescan of another replica.
        True while the live replicas are not known (start, lost connection).
        """
        live = self.live_ids
        if len(live) < 2 or self.replica not in live:
            return True
        return live[zlib.crc32(rel.encode("utf-8", "surrogateescape")) % len(live)] == self.replica

    async def view(self) -> dict[str, Any]:
        """The body of ``GET /cluster``."""
        leader, live = await self.replicas()
        return {"replica": self.replica, "leader": leader, "replicas": live}

    def check(self) -> tuple[bool, str]:
        """The readiness check ``cluster``."""
        return self.ok, self.detail

    # ---- claims ------------------------------------------------------------------------------

    async def measure_claims(self) -> None:
        """Set ``watcher_cluster_oldest_claim_age_seconds{replica}`` for every claims folder in the
        shared inbox: this replica's own (a transfer running or waiting for its retry) and any other's,
        alive, or gone with claims that could not be handed back. One stat per claim, in a thread.
        """
        ages = await asyncio.to_thread(claim_ages, self.settings.inbox, time.time())
        ages.setdefault(self.replica, 0.0)
        gauge = self.metrics.cluster_oldest_claim_age
        for gone in self._claim_folders - ages.keys():
            with contextlib.suppress(KeyError):
                gauge.remove(gone)
        for replica, age in ages.items():
            gauge.labels(replica=replica).set(age)
        self._claim_folders = set(ages)

    async def finish_own_claims(self) -> None:
        """At start (our id lock held): hand our previous run's claims back to the inbox."""
        inbox = self.settings.inbox
        done, left = await asyncio.to_thread(hand_back_all, claims_root(inbox, self.replica), inbox)
        if done or left:
            log.info("cluster.own_claims_handed_back", files=done, left_as_claims=left or None)

    async def adopt(self) -> None:
        """Hand back to the inbox the claims of every replica whose id lock is free (it is gone)."""
        inbox = self.settings.inbox
        await asyncio.to_thread(prune_empty, claims_root(inbox, self.replica), CLAIM_DIR_AGE)
        for other in await asyncio.to_thread(replicas_with_claims, inbox):
            if other == self.replica:
                continue
            key = lock_key(other)
            if not await self._try_lock(key):
                continue  # alive (or another replica is adopting its claims right now)
            try:
                root = claims_root(inbox, other)
                done, left = await asyncio.to_thread(hand_back_all, root, inbox)
                if done or left:
                    log.warning("cluster.claims_adopted", replica=other, files=done, left_as_claims=left or None)
                if not left:
                    await asyncio.to_thread(_remove_empty_tree, root.parent)
            finally:
                await self._query("SELECT pg_advisory_unlock(%s)", (key,))


def _remove_empty_tree(folder: Path) -> None:
    """Remove `folder` when only empty folders are left in it (a gone replica's claim folders)."""
    prune_empty(folder, 0.0)
    with contextlib.suppress(OSError):
        folder.rmdir()


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), QUERY_TIMEOUT)
