"""The worker pool: N asyncio tasks take files off the queue and run each transfer in a thread.

A small file's whole transfer is one thread hop. Outcomes become metrics and one log line per file.
I/O errors are retried with exponential backoff and equal jitter; after WATCHER_MAX_ATTEMPTS the file
is quarantined. Outbox problems close the gate instead and charge no attempt.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from watcher.cluster.claims import claim, claims_root, hand_back
from watcher.config import Settings
from watcher.logging import get_logger, printable
from watcher.metrics import Metrics
from watcher.pipeline.intake import Intake, Tracked
from watcher.pipeline.outbox_gate import OutboxGate
from watcher.pipeline.quarantine import FailureReport, move_to_failed, quarantined, write_sidecar
from watcher.pipeline.transfer import (
    ConflictRefused,
    OutboxUnavailable,
    Outcomes,
    SourceChanged,
    TransferAborted,
    TransferOutcome,
    TransferResult,
    deliver_batch,
)
from watcher.record.rows import BatchRecorder, delivery_entry, quarantine_entry
from watcher.record.store import DeliveryRecord, Entry

log = get_logger(__name__)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
BATCH_MAX = 64  # files per thread hop and group commit (no gain measured beyond; larger adds latency)


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter (half the ceiling, plus up to half again at random) for
    the given failed attempt number (1-based): retries of many files spread out, and none comes back
    sooner than half its step.
    """
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


class WorkerPool:
    """Runs WATCHER_WORKERS delivery tasks until stopped."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        intake: Intake,
        queue: asyncio.Queue[Tracked],
        gate: OutboxGate,
        record: DeliveryRecord | None = None,
    ) -> None:
        """Bind to the shared queue, intake bookkeeping and outbox gate; `record` gets a row per file
        that leaves the inbox, written before its source is removed.
        """
        self.settings = settings
        self.record = record
        self.metrics = metrics
        self.intake = intake
        self.queue = queue
        self.gate = gate
        self.abort = threading.Event()
        self.summary: Counter[str] = Counter()
        self.inflight = 0  # files in transfers running now
        self._tally = [0, 0]  # files and bytes delivered, not yet added to the counters
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="transfer")
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._accepting = True
        # Cluster mode: files are claimed (renamed into this replica's claims folder) before the transfer.
        self.claims: Path | None = claims_root(settings.inbox, settings.replica_id) if settings.cluster else None
        self._inbox_text = str(intake.inbox).rstrip("/")
        self._claims_text = str(self.claims).rstrip("/") if self.claims is not None else ""

    def start(self) -> None:
        """Start the worker tasks."""
        self._tasks = [asyncio.create_task(self._worker(), name=f"worker-{i}") for i in range(self.settings.workers)]

    async def _worker(self) -> None:
        while self._accepting:
            batch = [await self.queue.get()]
            # Whatever else is already waiting rides along: one thread hop and one group commit.
            while len(batch) < BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            if not self._accepting:
                return  # still tracked and still in the inbox: the next start delivers them
            for item in batch:
                item.state = "running"
            job = asyncio.create_task(self._handle(batch))
            self._busy.add(job)
            try:
                await asyncio.shield(job)
            finally:
                self._busy.discard(job)

    def handled(self) -> int:
        """Files whose handling ended (delivered, duplicate, quarantined, skipped, vanished)."""
        summary = self.summary
        return sum(summary.values()) - summary["retried"] - summary["interrupted"]

    def interrupt(self) -> None:
        """Abort in-flight copies now (a second signal): they stop at their next chunk."""
        self.abort.set()

    async def stop(self, drain: float, abort_wait: float = 10.0) -> int:
        """Stop taking files, let in-flight transfers finish within `drain` s, then abort them and
        wait up to `abort_wait` s more for the aborted ones (a copy wedged in a syscall is left).

        Returns how many transfer batches had to be interrupted (their sources stay in the inbox).
        """
        self._accepting = False
        for task in self._tasks:
            task.cancel()
        busy = set(self._busy)
        interrupted = 0
        if busy:
            _, pending = await asyncio.wait(busy, timeout=max(0.0, drain))
            if pending:
                interrupted = len(pending)
                self.abort.set()  # copies stop at their next chunk and remove their temp files
                await asyncio.wait(pending, timeout=max(0.01, abort_wait))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return interrupted

    async def _handle(self, batch: list[Tracked]) -> None:
        loop = asyncio.get_running_loop()
        pending = batch
        while pending:
            await self.gate.wait_open()
            started = time.monotonic()
            self.metrics.inflight_transfers.inc(len(pending))
            self.inflight += len(pending)
            try:
                mine, failed, outcomes = await loop.run_in_executor(self._executor, self._claim_and_deliver, pending)
            finally:
                self.metrics.inflight_transfers.dec(len(pending))
                self.inflight -= len(pending)
            duration = time.monotonic() - started
            if len(mine) < len(pending):
                await self._not_claimed(pending, failed, started)
            blocked: list[Tracked] = []
            finish = self.intake.finish
            for item, outcome in zip(mine, outcomes, strict=True):
                if type(outcome) is TransferResult:  # the common case, without a coroutine per file
                    self._record(item, outcome, duration)
                    finish(item)
                elif isinstance(outcome, OutboxUnavailable):
                    self.gate.close(outcome.reason)
                    blocked.append(item)  # not the file's fault: wait at the gate, charge nothing
                else:
                    await self._account(item, outcome, duration, started)
            self._count()
            pending = blocked

    def _claim_and_deliver(self, pending: list[Tracked]) -> tuple[list[Tracked], dict[int, OSError], Outcomes]:
        """Blocking, in a transfer thread: claim the files of `pending` not yet claimed (cluster mode),
        then deliver the ones that are ours, in one thread hop per batch.

        Returns the files delivered, the claims that failed (keyed by ``id`` of the file) and the
        delivered files' outcomes. A file's ``claimed`` is set here: while its batch runs, no other
        code touches it.
        """
        failed: dict[int, OSError] = {}
        mine = pending
        if self.claims is not None:
            inbox, claims = self.intake.inbox, self.claims
            for item in pending:
                if not item.claimed:
                    try:
                        item.claimed = claim(inbox, claims, item.rel)
                    except OSError as exc:  # the claims folder cannot be written: an attempt of this file
                        failed[id(item)] = exc
            mine = [item for item in pending if item.claimed]
            if not mine:
                return mine, failed, []
        s = self.settings
        outcomes = deliver_batch(
            [(self._source_text(item), item.rel) for item in mine],
            s.outbox,
            on_conflict=s.on_conflict,
            fsync=s.fsync,
            abort=self.abort,
            checksum=s.checksum == "sha256",
            recorder=self._recorder(mine),
        )
        return mine, failed, outcomes

    async def _not_claimed(self, batch: list[Tracked], failed: dict[int, OSError], started: float) -> None:
        """Cluster mode: the files of `batch` that could not be claimed. Taken by another replica: done
        here (not an error: that replica delivers them); the claims folder failing: a failed attempt.
        """
        for item in batch:
            if item.claimed:
                continue
            if id(item) in failed:
                await self._failed_attempt(item, failed[id(item)], started)
                if item.state != "retrying":
                    self.intake.finish(item)
            else:
                log.debug("file.ignored", path=item.rel, outcome="vanished", reason="claimed by another replica")
                self.summary["vanished"] += 1
                self.intake.finish(item)

    def _source_text(self, item: Tracked) -> str:
        """:meth:`_source` as text (no Path object per file on the hot path)."""
        if item.claimed and self.claims is not None:
            return f"{self._claims_text}/{item.rel}"
        return f"{self._inbox_text}/{item.rel}"

    def _source(self, item: Tracked) -> Path:
        """Where the file is now: its claim (cluster mode, once claimed) or the inbox."""
        return Path(self._source_text(item))

    async def _unclaim(self, item: Tracked) -> bool:
        """Cluster mode: put a claimed file back into the inbox (it changed under the transfer)."""
        claims = self.claims
        if claims is None or not item.claimed:
            return True
        inbox = self.intake.inbox
        try:
            back = await asyncio.get_running_loop().run_in_executor(self._executor, hand_back, claims, inbox, item.rel)
        except OSError:
            back = False
        if back:
            item.claimed = False
        return back

    def _recorder(self, batch: list[Tracked]) -> BatchRecorder | None:
        """The batch's record rows, written in one transaction before any source goes."""
        record = self.record
        if record is None:
            return None
        outbox, replica = self.settings.outbox, self.settings.replica_id

        def rows(placed: list[tuple[int, TransferResult]]) -> list[Entry]:
            now = time.time()
            made = [(delivery_entry(batch[i], result, outbox, replica, now), result) for i, result in placed]
            # A delivery found already in place after a crash may already have its row (the crash
            # came between the record and the removal of the source): one delivery, one row.
            return [
                row
                for row, result in made
                if row is not None and not (result.recovered and record.has_delivery(row.path, row.target))
            ]

        return BatchRecorder(record, rows)

    async def _account(
        self, item: Tracked, outcome: TransferResult | Exception, duration: float, started: float
    ) -> None:
        """Account for one file's outcome and hand it back to intake."""
        if isinstance(outcome, TransferResult):
            self._record(item, outcome, duration)
        elif isinstance(outcome, ConflictRefused):
            await self._quarantine(item, outcome, started)
        elif isinstance(outcome, SourceChanged):
            log.info("file.changed", path=item.rel, reason=str(outcome), outcome="resettle")
            if await self._unclaim(item):
                self.intake.resettle(item)
            else:  # its name in the inbox is taken meanwhile: deliver it from the claim, a bit later
                self.intake.retry_later(item, self.settings.settle_seconds or 1.0)
            return
        elif isinstance(outcome, TransferAborted):
            log.warning("file.interrupted", path=item.rel, outcome="left_in_inbox")
            self.summary["interrupted"] += 1
        elif isinstance(outcome, OSError):
            await self._failed_attempt(item, outcome, started)
        else:
            log.error("file.unexpected_error", path=item.rel, error=repr(outcome), exc_info=outcome, outcome="retry")
            await self._failed_attempt(item, OSError(0, repr(outcome)), started)
        if item.state != "retrying":
            self.intake.finish(item)

    def _count(self) -> None:
        """Add the delivered files and bytes tallied since the last call to their counters."""
        files, size = self._tally
        if files:
            self.metrics.files_delivered.inc(files)
            self.metrics.bytes_delivered.inc(size)
            self._tally[:] = [0, 0]

    def _record(self, item: Tracked, result: TransferResult, duration: float) -> None:
        outcome = result.outcome
        self.summary[outcome.value] += 1
        # The file's own time, not its batch's: 64 files of one group commit are not 64 times its time.
        seconds = result.seconds or duration
        fields = {"path": item.rel, "bytes": result.size, "duration_ms": round(seconds * 1000, 3)}
        if outcome is TransferOutcome.DELIVERED:
            self._tally[0] += 1  # the counters are added once per batch (_count)
            self._tally[1] += result.size
            self.metrics.transfer_duration.observe(seconds)
            self.metrics.delivery_latency.observe(max(0.0, time.time() - item.ready_wall))
            dest = result.dest
            if dest is not None and dest.name != item.rel.rpartition("/")[2]:
                fields["renamed_to"] = printable(dest.name)  # only when it was renamed
            log.info("file.delivered", **fields, outcome="delivered")
        elif outcome is TransferOutcome.DUPLICATE:
            self.metrics.files_duplicate.inc()
            log.info("file.duplicate", **fields, outcome="duplicate")
        elif outcome is TransferOutcome.SKIPPED:
            # Found by an event (a rescan's walk skips these itself): a symlink, or a fifo, socket or device.
            special = result.reason == "not a regular file"
            self.intake.skipped.ignored(item.rel, "special" if special else "symlink", result.reason)
        else:
            log.debug("file.ignored", path=item.rel, outcome=outcome.value, reason=result.reason)

    async def _failed_attempt(self, item: Tracked, exc: OSError, started: float) -> None:
        item.attempts += 1
        if item.attempts >= self.settings.max_attempts:
            await self._quarantine(item, exc, started)
            return
        delay = backoff_delay(item.attempts)
        item.last_error, item.retry_at = str(exc), time.time() + delay
        self.metrics.files_retried.inc()
        self.summary["retried"] += 1
        log.warning(
            "file.retry",
            path=item.rel,
            attempt=item.attempts,
            max_attempts=self.settings.max_attempts,
            error=str(exc),
            errno=exc.errno,
            retry_in_s=round(delay, 3),
            outcome="retry",
        )
        self.intake.retry_later(item, delay)

    async def _quarantine(self, item: Tracked, exc: Exception, started: float) -> None:
        report = FailureReport(
            path=item.rel,
            attempts=max(item.attempts, 1),
            error=str(exc),
            error_type=type(exc).__name__,
            errno=getattr(exc, "errno", None),
            first_seen=item.first_seen_wall,
            last_attempt=time.time(),
        )
        src = self._source(item)
        failed_root = self.settings.failed_path
        fsync = self.settings.fsync

        attempt_began = time.time() - (time.monotonic() - started)
        record = self.record

        def rows(placed: list[tuple[int, TransferResult]]) -> list[Entry]:
            replica = self.settings.replica_id
            return [quarantine_entry(item, r, failed_root, replica, report.error, attempt_began) for _, r in placed]

        recorder = BatchRecorder(record, rows) if record is not None else None

        def move() -> TransferResult:
            result = move_to_failed(src, item.rel, failed_root, fsync, recorder=recorder)
            if quarantined(result) and result.dest is not None:
                write_sidecar(failed_root, result.dest, report, fsync)
            return result

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, move)
        except (OSError, OutboxUnavailable, SourceChanged) as move_exc:
            log.error("file.quarantine_failed", path=item.rel, error=str(move_exc), outcome="left_in_inbox")
            return
        self.metrics.files_failed.inc()
        self.summary["failed"] += 1
        log.error(
            "file.quarantined",
            path=item.rel,
            attempts=report.attempts,
            error=report.error,
            errno=report.errno,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            failed_dir=str(failed_root),
            outcome="failed",
        )
