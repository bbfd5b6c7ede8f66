"""The record's group commit: concurrent batches share one transaction, and share its failure."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.wait import wait_until
from watcher.record.store import GroupCommit


def test_batches_that_arrive_while_one_commits_share_the_next_commit() -> None:
    commits: list[list[tuple[Any, ...]]] = []
    first_in = threading.Event()
    release = threading.Event()

    def write(rows: list[tuple[Any, ...]]) -> None:
        commits.append(rows)
        if len(commits) == 1:
            first_in.set()
            assert release.wait(10)

    group = GroupCommit(write)
    leader = threading.Thread(target=group.submit, args=([("a",)],))
    leader.start()
    assert first_in.wait(10)
    followers = [threading.Thread(target=group.submit, args=([(f"f{i}",)],)) for i in range(5)]
    for thread in followers:
        thread.start()
    wait_until(lambda: len(group._waiting) == 5, 10, "all five to wait behind the first commit")
    release.set()
    for thread in [leader, *followers]:
        thread.join(10)
    assert commits[0] == [("a",)]
    assert len(commits) == 2 and sorted(commits[1]) == [(f"f{i}",) for i in range(5)]


def test_a_failed_commit_fails_every_batch_in_it_and_the_next_one_works() -> None:
    calls = 0

    def write(rows: list[tuple[Any, ...]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")

    group = GroupCommit(write)
    with pytest.raises(OSError, match="No space"):
        group.submit([("a",)])
    group.submit([("b",)])
    assert calls == 2
