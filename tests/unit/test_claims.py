"""Claims of cluster mode on the real filesystem: the rename race, the hand-back, the reserved folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.cluster.claims import (
    claim,
    claim_ages,
    claimed,
    claimed_by,
    claims_root,
    hand_back,
    hand_back_all,
    is_reserved,
)
from watcher.cluster.membership import LEADER_LOCK
from watcher.cluster.preflight import check_filesystem
from watcher.config import ConfigError, load_settings
from watcher.pipeline.filters import PathFilter
from watcher.schema import DDL_LOCK


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


def test_claim_ages_count_from_the_claim_not_from_the_producers_mtime(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "a").mkdir(parents=True)
    (inbox / "a" / "x.csv").write_bytes(b"x")
    os.utime(inbox / "a" / "x.csv", (1e9, 1e9))  # an old mtime, as `cp -p` or `rsync -a` keep it
    assert claim(inbox, claims_root(inbox, "r1"), "a/x.csv")
    claims_root(inbox, "r2").mkdir(parents=True)  # a replica that holds nothing
    claimed_at = os.lstat(claims_root(inbox, "r1") / "a" / "x.csv").st_ctime
    assert claim_ages(inbox, claimed_at + 90) == {"r1": pytest.approx(90), "r2": 0.0}
    assert claim_ages(inbox, claimed_at - 5) == {"r1": 0.0, "r2": 0.0}, "a clock behind the file server's"
    assert claim_ages(tmp_path / "no-inbox", claimed_at) == {}


def test_the_reserved_folder_is_never_a_file_to_deliver() -> None:
    assert is_reserved(".watcher") and is_reserved(".watcher/r1/claims/a.csv")
    assert not is_reserved(".watcherx/a.csv") and not is_reserved("a/.watcher/b")
    everything = PathFilter(include=("*",), exclude=())
    assert not everything.accepts(".watcher/r1/claims/a.csv")
    assert not everything.accepts_dir(".watcher")
    assert everything.accepts(".watcherx/a.csv")


def test_cluster_mode_refuses_a_filesystem_whose_rename_is_a_copy(tmp_path: Path) -> None:
    env = {
        "WATCHER_INBOX": str(tmp_path / "in"),
        "WATCHER_OUTBOX": str(tmp_path / "out"),
        "WATCHER_STATE_DIR": str(tmp_path / "state"),
        "WATCHER_CLUSTER": "true",
        "WATCHER_JOBSTORE_URL": "postgresql://watcher@db/watcher",
    }
    settings = load_settings(environ=env)
    for folder in (settings.inbox, settings.outbox, settings.failed_path):
        folder.mkdir(parents=True)
    check_filesystem(settings)  # a local filesystem: rename is atomic, link() works
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "the link() probe leaves nothing behind"
    blob = {settings.outbox: "fuse.s3fs"}
    with pytest.raises(ConfigError, match=r"WATCHER_OUTBOX=.*fuse\.s3fs renames by copy"):
        check_filesystem(settings, fs_type=lambda p: blob.get(p, "ext4"))


@pytest.mark.parametrize("name", [DDL_LOCK, LEADER_LOCK])
def test_the_cluster_s_own_lock_names_can_never_be_a_replica_id(tmp_path: Path, name: str) -> None:
    # A replica's id lock is lock_key(id): an id equal to one of these names would share its key.
    env = {"WATCHER_INBOX": str(tmp_path / "in"), "WATCHER_OUTBOX": str(tmp_path / "out"), "WATCHER_REPLICA_ID": name}
    with pytest.raises(ConfigError, match="WATCHER_REPLICA_ID"):
        load_settings(environ=env)
