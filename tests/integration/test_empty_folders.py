"""Empty folders left in the inbox by uploads of trees: a full scan removes those unchanged for an
hour; never the root, a young folder, one that holds anything, nor one a client is writing into.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from tests.support.fs import tree
from tests.support.service import running
from tests.support.settings import make_settings
from tests.support.wait import await_until

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_rescan_removes_old_empty_folders_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    inbox = settings.inbox
    for rel in ("tree/a/b/c", "young", "holds/one", ".watcher/claims", ".hidden", "excluded"):
        (inbox / rel).mkdir(parents=True)
    (inbox / "holds/one/.keep").write_text("an excluded file keeps its folder")
    for rel in ("tree/a/b/c", "tree/a/b", "tree/a", "tree", "holds/one", "holds", ".watcher/claims", ".watcher"):
        _age(inbox / rel, 2 * HOUR)
    for rel in (".hidden", "excluded"):
        _age(inbox / rel, 2 * HOUR)
    _age(inbox, 2 * HOUR)

    async def main() -> None:
        async with running(settings) as service:
            await await_until(lambda: not (inbox / "tree").exists(), 10, "the old empty tree removed")
            await service.rescan()
            await service.rescan()

    asyncio.run(main())
    left = sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*"))
    # The whole old tree went in one scan; the young folder, the one holding a file, the reserved
    # and the excluded folders stay, and so does the inbox itself.
    assert left == [".hidden", ".watcher", ".watcher/claims", "holds", "holds/one", "holds/one/.keep", "young"]


def test_a_client_that_makes_a_folder_and_writes_into_it_never_loses_the_race(tmp_path: Path) -> None:
    """The client makes folders (fresh, and aged past the hour as `rsync -t` or `cp -p` would) and
    writes a file into each, while the service rescans as fast as it can: every write succeeds into a
    fresh folder, a write into an aged folder either lands or finds the folder gone before it began,
    and every file that landed is delivered with its bytes.
    """
    settings = make_settings(tmp_path, settle_seconds="0.1")
    inbox = settings.inbox
    written: dict[str, bytes] = {}
    refused: list[str] = []
    done = threading.Event()

    def client() -> None:
        try:
            for i in range(200):
                aged = i % 2 == 1
                (inbox / f"idle{i}").mkdir()  # an old empty folder no one writes into: it must go
                _age(inbox / f"idle{i}", 2 * HOUR)
                folder = inbox / f"upload{i}" / "sub"
                folder.mkdir(parents=True)
                if aged:
                    _age(folder, 2 * HOUR)
                    _age(folder.parent, 2 * HOUR)
                data = f"file {i}\n".encode()
                try:
                    (folder / "f.txt").write_bytes(data)
                except FileNotFoundError:
                    assert aged, f"fresh folder upload{i}/sub removed under the client"
                    refused.append(f"upload{i}")
                    continue
                written[f"upload{i}/sub/f.txt"] = data
        finally:
            done.set()

    async def main() -> None:
        async with running(settings) as service:
            thread = threading.Thread(target=client)
            thread.start()
            rescans = 0
            while not done.is_set():
                await service.rescan()
                rescans += 1
            thread.join()
            await service.rescan()
            await await_until(lambda: tree(settings.outbox) == written, 20, "every written file delivered")
            assert rescans >= 3
            assert not list(inbox.glob("idle*")), "old empty folders were not removed"

    asyncio.run(main())
    assert len(written) + len(refused) == 200 and len(written) >= 100
