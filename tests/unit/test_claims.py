"""Claims of cluster mode on the real filesystem: the rename race, the hand-back, the reserved folder."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.cluster.claims import (
    claim,
    claimed,
    claimed_by,
    claims_root,
    hand_back,
    hand_back_all,
    is_reserved,
)
from watcher.pipeline.filters import PathFilter


def test_the_first_claim_wins_and_the_second_moves_on(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "a").mkdir(parents=True)
    (inbox / "a" / "x.csv").write_bytes(b"data")
    mine, theirs = claims_root(inbox, "r1"), claims_root(inbox, "r2")
    assert claim(inbox, mine, "a/x.csv")
    assert not claim(inbox, theirs, "a/x.csv")
    assert (mine / "a" / "x.csv").read_bytes() == b"data"
    assert claim(inbox, mine, "a/x.csv"), "a claim of ours stays ours (a retry)"
    assert list(claimed(mine)) == ["a/x.csv"]
    assert claimed_by(inbox, "a/x.csv") == "r1" and claimed_by(inbox, "a/y.csv") is None


def test_symlinks_are_never_claimed_nor_followed(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (inbox / "link").symlink_to(outside / "secret")
    (inbox / "dir").symlink_to(outside, target_is_directory=True)
    root = claims_root(inbox, "r1")
    assert not claim(inbox, root, "link")
    assert not claim(inbox, root, "dir/secret")
    assert (outside / "secret").exists() and (inbox / "link").is_symlink()


def test_hand_back_never_replaces_a_newer_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    root = claims_root(inbox, "r1")
    (root / "d").mkdir(parents=True)
    (root / "d" / "old.csv").write_bytes(b"old")
    (root / "same.csv").write_bytes(b"same")
    (inbox / "same.csv").write_bytes(b"newer")
    assert hand_back(root, inbox, "d/old.csv")
    assert (inbox / "d" / "old.csv").read_bytes() == b"old" and not (root / "d" / "old.csv").exists()
    assert not hand_back(root, inbox, "same.csv")
    assert (inbox / "same.csv").read_bytes() == b"newer" and (root / "same.csv").read_bytes() == b"same"
    # A crash between the link and the unlink: both names are one file; the claim goes.
    os.unlink(inbox / "same.csv")
    os.link(root / "same.csv", inbox / "same.csv")
    assert hand_back_all(root, inbox) == (1, 0)
    assert not list(claimed(root)) and not (root / "d").exists()


def test_the_reserved_folder_is_never_a_file_to_deliver() -> None:
    assert is_reserved(".watcher") and is_reserved(".watcher/r1/claims/a.csv")
    assert not is_reserved(".watcherx/a.csv") and not is_reserved("a/.watcher/b")
    everything = PathFilter(include=("*",), exclude=())
    assert not everything.accepts(".watcher/r1/claims/a.csv")
    assert not everything.accepts_dir(".watcher")
    assert everything.accepts(".watcherx/a.csv")
