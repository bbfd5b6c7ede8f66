"""Claims (cluster mode): a replica takes a file by renaming it into its own folder under
``<inbox>/.watcher/<replica>/claims/`` before the transfer (the Maildir protocol).

The rename is atomic on the shared filesystem: of several replicas that try, one moves the file and
the others get ENOENT and move on. The claim keeps the file's path relative to the inbox below the
claims folder (``claims/a/b.csv`` for ``a/b.csv``), so a claim never needs a name longer than the
file's own and the transfer opens it exactly as it opens an inbox file (no symlink followed below the
claims folder). The delivery record keeps the inbox-relative path.

A claim goes back into the inbox (:func:`hand_back`) by ``link`` then ``unlink``, never by a rename
that could replace a file a producer has written under that name meanwhile.

On a network filesystem (:mod:`watcher.pipeline.netfs`): ENOENT or a lasting ESTALE on a listed name
means "not now" (the next scan looks again), and NFS silly-rename names (``.nfs…``) in a claims folder
are neither listed nor handed back.

Every function blocks on the filesystem; callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from watcher.logging import get_logger
from watcher.pipeline.netfs import StaleHandle, is_silly_rename, retry_stale

log = get_logger(__name__)

RESERVED = ".watcher"  # <inbox>/.watcher/ is the service's own: never delivered, never reported
CLAIMS = "claims"


def is_reserved(rel: str) -> bool:
    """True for ``.watcher`` and every path below it (inbox-relative)."""
    return rel == RESERVED or rel.startswith(RESERVED + "/")


def claims_root(inbox: Path, replica: str) -> Path:
    """The folder of `replica`'s claims: ``<inbox>/.watcher/<replica>/claims``."""
    return inbox / RESERVED / replica / CLAIMS


def _open_folder_beneath(base: Path, parts: list[str], make: bool = False) -> int:
    """An fd of ``base/parts…``, following no symlink below `base` (OSError ELOOP/ENOTDIR/ENOENT);
    with `make`, missing folders are made on the way.
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, f"bad path segment {part!r}")
            if make:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim(inbox: Path, root: Path, rel: str) -> bool:
    """Move ``inbox/rel`` to ``root/rel``; True when the file is ours to deliver from there.

    Already in our claims (a retry, or a claim left by our previous run): ours. A name that is not a
    regular file (a symlink, a fifo) is not claimed; False means someone else took it, it went, or
    (network filesystems) it cannot be reached now: ENOENT on a name a listing showed, or ESTALE
    on every try. The file stays in the inbox then, and the next scan looks at it again.
    """
    dst = root / rel
    if os.path.lexists(dst):
        return True
    parts = rel.split("/")
    try:
        folder = _open_folder_beneath(inbox, parts[:-1])
    except OSError:
        return False  # gone, or a symlink on the way (never followed): nothing of ours to claim
    try:
        for _ in range(3):
            try:
                st = retry_stale(os.lstat, parts[-1], dir_fd=folder)
            except FileNotFoundError:
                return False  # another replica won (or a negative lookup cache hides it for now)
            if not stat.S_ISREG(st.st_mode):
                return False
            try:
                retry_stale(os.rename, parts[-1], dst, src_dir_fd=folder)
                return True
            except FileNotFoundError:
                if os.path.lexists(dst):
                    return True  # ours after all: an NFS reply lost after the rename was done
                # Another replica won meanwhile (the next lstat says so), or our claims folder is missing.
                dst.parent.mkdir(parents=True, exist_ok=True)
        return False
    except StaleHandle:
        log.info("cluster.claim_later", path=rel, reason="stale file handle (ESTALE) on every try")
        return False
    finally:
        os.close(folder)


def hand_back(root: Path, inbox: Path, rel: str) -> bool:
    """Put the claim ``root/rel`` back at ``inbox/rel`` (link, then unlink); True when it is done.

    False when the inbox holds another file under that name (a producer wrote it meanwhile), or a
    folder on the way is a symlink (never followed): the claim stays, to be delivered from where it is.
    """
    src = root / rel
    parts = rel.split("/")
    try:
        folder = _open_folder_beneath(inbox, parts[:-1], make=True)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return False
        raise
    try:
        try:
            retry_stale(os.link, src, parts[-1], dst_dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return not os.path.lexists(src)  # already moved on by someone else
        except FileExistsError:
            try:
                there = os.lstat(parts[-1], dir_fd=folder)
                mine = os.lstat(src)
            except FileNotFoundError:
                return not os.path.lexists(src)
            if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                return False
    finally:
        os.close(folder)
    try:
        os.unlink(src)
    except FileNotFoundError:
        pass
    return True


def _claim_entries(root: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(inbox-relative path, directory entry) of every claim under `root` (symlinks neither followed
    nor listed, nor NFS silly-rename names: handed back, such a name would outlive the file's last
    close in the inbox).
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = os.scandir(root / rel_dir if rel_dir else root)
        except OSError:
            continue
        with entries:
            for entry in entries:
                if is_silly_rename(entry.name):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(rel)
                    elif entry.is_file(follow_symlinks=False):
                        yield rel, entry
                except OSError:
                    continue


def claimed(root: Path) -> Iterator[str]:
    """The inbox-relative paths of every claim under `root` (as :func:`_claim_entries` finds them)."""
    for rel, _ in _claim_entries(root):
        yield rel


def oldest_claim_age(root: Path, now: float) -> float:
    """Seconds since the oldest claim under `root` was made (0.0 when there is none), at wall time `now`.

    A claim's age is its inode change time: the rename that made the claim sets it, whereas the
    modification time is the producer's (``cp -p`` and ``rsync -a`` keep an old one). A claim gone
    while it was looked at does not count; a clock behind the file server's gives 0, never less.
    """
    oldest: float | None = None
    for _, entry in _claim_entries(root):
        try:
            changed = entry.stat(follow_symlinks=False).st_ctime
        except OSError:
            continue
        oldest = changed if oldest is None else min(oldest, changed)
    return 0.0 if oldest is None else max(0.0, now - oldest)


def claim_ages(inbox: Path, now: float) -> dict[str, float]:
    """For every replica with a folder under ``<inbox>/.watcher/``: the age of its oldest claim (0.0 for none)."""
    return {replica: oldest_claim_age(claims_root(inbox, replica), now) for replica in replicas_with_claims(inbox)}


def hand_back_all(root: Path, inbox: Path) -> tuple[int, int]:
    """Hand every claim under `root` back to the inbox; (handed back, left as claims)."""
    done = left = 0
    for rel in list(claimed(root)):
        try:
            if hand_back(root, inbox, rel):
                done += 1
            else:
                left += 1
        except OSError as exc:
            left += 1
            log.warning("cluster.hand_back_failed", path=rel, error=str(exc))
    prune_empty(root, 0.0)
    return done, left


def prune_empty(root: Path, older_than: float) -> None:
    """Remove empty folders below `root` (not `root`) unchanged for `older_than` seconds."""
    before = time.time() - older_than
    for dirpath, _dirs, files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        if dirpath == str(root) or files:
            continue
        try:
            if os.lstat(dirpath).st_mtime <= before:
                os.rmdir(dirpath)
        except OSError:
            continue


def claimed_by(inbox: Path, rel: str) -> str | None:
    """The replica whose claims folder holds `rel` (a regular file, no symlink followed), or None."""
    parts = rel.split("/")
    for replica in replicas_with_claims(inbox):
        try:
            folder = _open_folder_beneath(claims_root(inbox, replica), parts[:-1])
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.lstat(parts[-1], dir_fd=folder).st_mode):
                return replica
        except OSError:
            continue
        finally:
            os.close(folder)
    return None


def replicas_with_claims(inbox: Path) -> list[str]:
    """The replica ids that have a folder under ``<inbox>/.watcher/``."""
    try:
        with os.scandir(inbox / RESERVED) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
