"""Chaos on a cluster: three real replicas on one inbox and one throwaway PostgreSQL, random ones
SIGKILLed and restarted under the same id while a writer keeps filling the inbox.

At the end every file is in the outbox once, byte-identical (SHA-256 of every file compared), nothing
is left in the inbox, in a claims folder or under a temporary name, nothing is quarantined, and the
shared record has one delivered row per file, none of which claims bytes the outbox does not hold.

The quick form runs in `make test`, the long one in `make soak`. Nothing is printed: the figures
(files, kills, faults, seconds, seed) are the test's user properties (``--junitxml``). Replay a run with
``WATCHER_SOAK_SEED=<seed>``.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import Replicas
from tests.cluster.support import faults, files_under
from tests.support.fs import count_files
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

KiB = 1024


class Writer(threading.Thread):
    """Writes `n` files into the inbox: most renamed in from a staging folder, some written in place
    (open, write, close; the replicas' events and settle rules see them complete). `expected` maps
    each written path to the SHA-256 of its bytes.
    """

    def __init__(self, shared: Path, n: int, seed: int) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.inbox, self.staging = shared / "inbox", shared / "staging"
        self.n = n
        self.rng = random.Random(seed)
        self.expected: dict[str, str] = {}
        self.error: BaseException | None = None

    def _size(self) -> int:
        roll = self.rng.random()
        if roll < 0.03:
            return 0
        if roll < 0.65:
            return self.rng.randint(1, 4 * KiB)
        if roll < 0.97:
            return self.rng.randint(4 * KiB, 64 * KiB)
        return self.rng.randint(64 * KiB, 512 * KiB)

    def run(self) -> None:
        self.staging.mkdir(exist_ok=True)
        try:
            for i in range(self.n):
                rel = f"d{i % 11}/s{i % 3}/f{i:05d}.bin" if i % 4 else f"top-{i:05d}.bin"
                data = self.rng.randbytes(self._size())
                target = self.inbox / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if self.rng.random() < 0.7:
                    staged = self.staging / f"{i}.part"
                    staged.write_bytes(data)
                    os.rename(staged, target)
                else:
                    with target.open("wb") as handle:
                        handle.write(data)
                self.expected[rel] = hashlib.sha256(data).hexdigest()
        except BaseException as exc:  # noqa: BLE001 - reported by the test after join()
            self.error = exc


def _seed() -> int:
    raw = os.environ.get("WATCHER_SOAK_SEED")
    return int(raw) if raw else random.randrange(1 << 32)


def chaos(
    replica: Replicas,
    shared: Path,
    database: str,
    request: pytest.FixtureRequest,
    files: int,
    kills: int,
    timeout: float,
) -> None:
    """Run the scenario; assert every promise (see the module's docstring)."""
    seed = _seed()
    rng = random.Random(seed)
    began = time.monotonic()
    replicas = {name: replica(name, checksum="sha256") for name in ("c1", "c2", "c3")}
    for w in replicas.values():
        w.start(wait=None)
    for w in replicas.values():
        w.wait_until_up("ready", 30)
    writer = Writer(shared, files, seed)
    writer.start()
    outbox, inbox = shared / "outbox", shared / "inbox"
    killed = 0
    for _ in range(kills):
        # A random moment: right after the last restart (mid start-up), or after a random share of the files.
        if rng.random() > 0.15:
            target = min(files, count_files(outbox) + rng.randint(1, max(2, 2 * files // (kills + 1))))

            def progressed(t: int = target) -> bool:
                return count_files(outbox) >= t

            wait_until(progressed, timeout, f"seed={seed}: {target} delivered", 0.1)
        victim = replicas[rng.choice(sorted(replicas))]
        victim.kill()
        killed += 1
        victim.start(wait=None)
    writer.join(timeout)
    assert not writer.is_alive() and writer.error is None, f"seed={seed}: the writer failed: {writer.error!r}"
    for w in replicas.values():
        w.wait_until_up("ready", 30)

    def done() -> bool:
        return count_files(outbox) >= files and not files_under(inbox)

    wait_until(done, timeout, f"seed={seed}: every file delivered and nothing left in the inbox", 0.1)
    for name, w in replicas.items():
        assert w.terminate() == 0, f"seed={seed}: {name} did not stop cleanly"
    broken = faults(shared, writer.expected, database)
    seconds = round(time.monotonic() - began, 1)
    figures = {"files": files, "kills": killed, "faults": len(broken), "seconds": seconds, "seed": seed}
    request.node.user_properties.extend(figures.items())  # shown by --junitxml, never printed
    assert not broken, f"seed={seed}: {len(broken)} faults, e.g. {broken[:10]}"


def test_random_sigkills_of_three_replicas_deliver_each_file_once(
    replica: Replicas, shared: Path, database: str, request: pytest.FixtureRequest
) -> None:
    chaos(replica, shared, database, request, files=1500, kills=4, timeout=60)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_random_sigkills_of_three_replicas_deliver_each_file_once_soak(
    replica: Replicas, shared: Path, database: str, request: pytest.FixtureRequest
) -> None:
    chaos(replica, shared, database, request, files=10_000, kills=40, timeout=600)
