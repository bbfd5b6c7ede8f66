"""Two "nodes" on one machine: two bindfs views of one folder, each with its own attribute, entry and
negative-lookup caches (as two NFS clients of one export have; this kernel has no NFS). Each replica
watches the shared inbox, outbox and failed dir through its own view.

Needs bindfs and FUSE (`make deploy-tools` installs bindfs; under CI=true its absence fails).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.cluster.conftest import Replicas
from tests.cluster.support import faults, files_under
from tests.support.fuse import bindfs_view
from tests.support.wait import wait_until
from watcher.cluster.claims import claim, claims_root

pytestmark = pytest.mark.e2e

# Each view keeps what it looked up for this long: a name made through the other view stays
# "not there" (negative entry) and a size stays what it was (attributes), as on an NFS client.
CACHES = "attr_timeout=2,entry_timeout=2,negative_timeout=2"


def _rename_in(staging: Path, inbox: Path, rel: str, data: bytes) -> None:
    """What a producer on another node must do: write under another name, then rename into the inbox."""
    staged = staging / rel.replace("/", "_")
    staged.write_bytes(data)
    (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
    os.rename(staged, inbox / rel)


def test_a_listed_name_that_a_negative_lookup_cache_hides_is_claimed_later(shared: Path, tmp_path: Path) -> None:
    with (
        bindfs_view(shared, tmp_path / "node-a", CACHES) as a,
        bindfs_view(shared, tmp_path / "node-b", CACHES) as b,
    ):
        inbox_b = b.path / "inbox"
        assert not os.path.lexists(inbox_b / "late.csv")  # node b looked: not there (and remembers that)
        (a.path / "staging").mkdir()
        _rename_in(a.path / "staging", a.path / "inbox", "late.csv", b"written on node a")
        assert "late.csv" in os.listdir(inbox_b), "node b lists it..."
        with pytest.raises(FileNotFoundError):
            os.lstat(inbox_b / "late.csv")  # ...and yet cannot look it up: a name listed but ENOENT
        root = claims_root(inbox_b, "b")
        assert not claim(inbox_b, root, "late.csv"), "not now, and no error"
        assert (shared / "inbox" / "late.csv").exists(), "left in the inbox for a later look"
        wait_until(lambda: claim(inbox_b, root, "late.csv"), 10, "the claim once node b's cache let go")
        assert (shared / "inbox" / ".watcher" / "b" / "claims" / "late.csv").read_bytes() == b"written on node a"


def test_two_replicas_on_two_nodes_views_deliver_each_file_once(
    replica: Replicas, shared: Path, database: str, tmp_path: Path
) -> None:
    expected: dict[str, str] = {}
    with (
        bindfs_view(shared, tmp_path / "node-a", CACHES) as a,
        bindfs_view(shared, tmp_path / "node-b", CACHES) as b,
    ):
        replicas = [
            replica(name, inbox=str(view / "inbox"), outbox=str(view / "outbox"), failed_dir=str(view / "failed"))
            for name, view in (("a", a.path), ("b", b.path))
        ]
        for w in replicas:
            w.start(wait=None)
        for w in replicas:
            w.wait_until_up("ready")
        (shared / "staging").mkdir()

        def burst(phase: str, nodes: tuple[Path, ...]) -> None:
            """100 files by producers on `nodes` (views or the server's own folder), each renamed in."""
            for i in range(100):
                node = nodes[i % len(nodes)]
                rel = f"{phase}/n{i % len(nodes)}/d{i % 5}/f-{i:03d}.bin" if i % 4 else f"{phase}-f-{i:03d}.bin"
                data = os.urandom(i * 211 % 20_000) + rel.encode()
                _rename_in(node / "staging", node / "inbox", rel, data)
                expected[rel] = hashlib.sha256(data).hexdigest()
            wait_until(done, 40, f"the files of phase {phase} delivered")

        def done() -> bool:
            return len(files_under(shared / "outbox")) >= len(expected) and not files_under(shared / "inbox")

        # Node b's view hangs (its FUSE daemon stopped): node a takes every file. Then the other way
        # round, with what each view remembers from before. Then both at once, racing for each claim.
        b.stop()
        burst("p1", (a.path, shared))
        b.resume()
        a.stop()
        burst("p2", (b.path, shared))
        a.resume()
        burst("p3", (a.path, b.path, shared))
        assert all(w.terminate() == 0 for w in replicas)
    broken = faults(shared, expected, database)
    assert not broken, f"{len(broken)} faults, e.g. {broken[:10]}"
    import psycopg

    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT path, replica FROM watcher_deliveries").fetchall()
    by = {str(path): str(who) for path, who in rows}
    assert {by[rel] for rel in expected if rel.startswith("p1")} == {"a"}
    assert {by[rel] for rel in expected if rel.startswith("p2")} == {"b"}
