"""Moving one file from the inbox to its final place, atomically and durably (blocking; run in a thread).

Same filesystem: no byte is copied. The source's data is flushed, the source name is hard-linked
under its final name (``link`` never follows a symlink; the new name is checked to be the very inode
we opened with ``O_NOFOLLOW``, so a symlink or another file swapped in meanwhile is taken back), the
folder is flushed, and only then is the source name removed.

Another filesystem: the kernel copies (``copy_file_range``, falling back to ``sendfile``) into a
hidden temporary name in the target folder, which is flushed and then linked into place without
clobbering; the folder is flushed, and only then is the source removed.

Identical bytes already at the target mean the delivery happened before (crash recovery without a
journal); different bytes follow the conflict policy.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

TEMP_PREFIX = ".watcher-"
TEMP_SUFFIX = ".tmp"
_CHUNK = 64 * 1024 * 1024  # per copy syscall; between chunks a shutdown can abort the copy
_COMPARE_CHUNK = 1024 * 1024
# Errors of the destination side that are not the file's fault: intake pauses instead of retrying.
OUTBOX_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})


class Outcome(enum.Enum):
    """What happened to one file."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    VANISHED = "vanished"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class TransferResult:
    """The outcome of one transfer and what it moved."""

    outcome: Outcome
    dest: Path | None = None
    size: int = 0
    reason: str = ""


class OutboxUnavailable(Exception):
    """The destination cannot take files now (full, read-only, missing...): not the file's fault."""

    def __init__(self, reason: str, err: int | None = None) -> None:
        """Keep a readable reason and the errno behind it."""
        super().__init__(reason)
        self.reason = reason
        self.errno = err


class ConflictRefused(Exception):
    """WATCHER_ON_CONFLICT=fail and different bytes already hold the target path."""


class SourceChanged(Exception):
    """The source changed while it was copied (written, truncated); retried later, never delivered short."""


class TransferAborted(Exception):
    """Shutdown interrupted a copy; the source stays in the inbox and no temporary file is left."""


def is_temp_name(name: str) -> bool:
    """True for the hidden temporary names this module creates."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def conflict_name(name: str, n: int) -> str:
    """The n-th alternative for a taken name: ``report.csv`` → ``report (1).csv``; dot-files keep their dot."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{suffix}"


def _outbox_error(exc: OSError, what: str) -> OutboxUnavailable:
    reason = f"{what}: {exc.strerror or exc} (errno {exc.errno})"
    return OutboxUnavailable(reason, exc.errno)


def ensure_dirs(root: Path, rel_dir: str, fsync: bool) -> Path:
    """Create ``root/rel_dir`` as needed, flushing each new entry, and return it.

    The root itself is never created: a missing outbox may be an unmounted volume, and writing
    into its mount point would hide files from the operator.
    """
    try:
        root_st = os.lstat(root)
    except OSError as exc:
        raise _outbox_error(exc, f"{root} is unusable") from exc
    if not stat.S_ISDIR(root_st.st_mode):
        raise OutboxUnavailable(f"{root} is not a directory", errno.ENOTDIR)
    target = root
    for part in rel_dir.split("/") if rel_dir else ():
        parent, target = target, target / part
        try:
            os.mkdir(target, 0o755)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno in OUTBOX_ERRNOS - {errno.ENOTDIR}:
                raise _outbox_error(exc, f"cannot create {target}") from exc
            raise
        if fsync:
            fsync_dir(parent)
    return target


def _same_bytes(fd: int, src_size: int, other: Path) -> bool:
    """True when the file at `other` is a regular file with exactly the bytes of `fd`."""
    try:
        ofd = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        ost = os.fstat(ofd)
        if not stat.S_ISREG(ost.st_mode) or ost.st_size != src_size:
            return False
        offset = 0
        while True:
            a = os.pread(fd, _COMPARE_CHUNK, offset)
            b = os.pread(ofd, _COMPARE_CHUNK, offset)
            if a != b:
                return False
            if not a:
                return True
            offset += len(a)
    finally:
        os.close(ofd)


@dataclass(frozen=True)
class _Target:
    path: Path
    replace: bool


def _resolve_target(fd: int, st: os.stat_result, dest: Path, on_conflict: str) -> _Target | None:
    """Where the file goes, or None when identical bytes are already there (a duplicate)."""
    try:
        existing = os.lstat(dest)
    except FileNotFoundError:
        return _Target(dest, replace=False)
    if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino) or _same_bytes(fd, st.st_size, dest):
        return None
    if on_conflict == "overwrite":
        return _Target(dest, replace=True)
    if on_conflict == "fail":
        raise ConflictRefused(f"{dest.name} already exists in the outbox with different content")
    n = 1
    while True:
        candidate = dest.with_name(conflict_name(dest.name, n))
        try:
            cst = os.lstat(candidate)
        except FileNotFoundError:
            return _Target(candidate, replace=False)
        # A crash after an earlier renamed delivery must not deliver the same bytes twice.
        if (cst.st_dev, cst.st_ino) == (st.st_dev, st.st_ino) or _same_bytes(fd, st.st_size, candidate):
            return None
        n += 1


def _copy_fd(src: int, dst: int, size: int, abort: threading.Event) -> int:
    """Copy with the kernel's zero-copy paths; return the bytes copied (fewer if the source shrank)."""
    copied = 0
    use_cfr = hasattr(os, "copy_file_range")
    while True:
        if abort.is_set():
            raise TransferAborted("shutdown interrupted the copy")
        want = max(_CHUNK, size - copied) if copied >= size else min(_CHUNK, size - copied)
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(src, dst, want, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
        if not use_cfr:
            n = os.sendfile(dst, src, copied, want)
        if n == 0:
            return copied
        copied += n


class _Swapped(Exception):
    """The source name no longer points at the inode that was opened."""


def _link_checked(link_from: Path, to: Path, ino: tuple[int, int]) -> None:
    """Hard-link `link_from` as `to` (never following symlinks) and check it is the expected inode."""
    os.link(link_from, to, follow_symlinks=False)
    linked = os.lstat(to)
    if (linked.st_dev, linked.st_ino) != ino:
        _unlink_quietly(to)
        raise _Swapped(str(link_from))


def _place(link_from: Path, ino: tuple[int, int], target: _Target, fsync: bool) -> None:
    """Make `link_from` visible under the target name: no-clobber link, or atomic replace."""
    folder = target.path.parent
    if target.replace:
        tmp = folder / _temp_name()
        _link_checked(link_from, tmp, ino)
        os.replace(tmp, target.path)
    else:
        _link_checked(link_from, target.path, ino)
    if fsync:
        fsync_dir(folder)


def _copy_to_temp(fd: int, st: os.stat_result, folder: Path, fsync: bool, abort: threading.Event) -> Path:
    tmp = folder / _temp_name()
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in OUTBOX_ERRNOS:
            raise _outbox_error(exc, f"cannot write in {folder}") from exc
        raise
    try:
        try:
            copied = _copy_fd(fd, out, st.st_size, abort)
            after = os.fstat(fd)
            if copied != after.st_size or after.st_mtime_ns != st.st_mtime_ns or copied != st.st_size:
                raise SourceChanged(f"source changed during the copy ({st.st_size} → {after.st_size} bytes)")
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            if fsync:
                os.fsync(out)
        finally:
            os.close(out)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno in OUTBOX_ERRNOS:
            raise _outbox_error(exc, f"cannot write in {folder}") from exc
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_source(src: Path, st: os.stat_result) -> None:
    """Remove the source name, unless another file has taken that name meanwhile."""
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        _unlink_quietly(src)


# (device, target folder) pairs where link() answered EXDEV: same filesystem, different mounts.
_no_link: set[tuple[int, str]] = set()


@dataclass
class _Open:
    """A source opened and checked, on its way to the outbox."""

    src: Path
    fd: int
    st: os.stat_result
    dest: Path
    same_fs: bool
    temp: Path | None = None
    link_from: Path | None = None
    ino: tuple[int, int] = (0, 0)
    result: TransferResult | None = None


class _ThroughSymlink(Exception):
    """A folder on the way to the file is a symlink (or not a folder at all)."""


def open_beneath(src: Path, rel: str) -> int:
    """Open `src` (= base/rel) read-only, following no symlink anywhere below the base folder.

    ``O_NOFOLLOW`` alone guards only the last name; a folder of the path swapped for a symlink to
    the outside would still be followed. So each folder is opened with ``O_NOFOLLOW`` relative to
    the previous one, and the file relative to the last. ``O_NONBLOCK`` keeps a fifo from blocking.
    """
    parts = rel.split("/")
    text = str(src)
    if any(part in ("", ".", "..") for part in parts) or not text.endswith("/" + rel):
        raise _ThroughSymlink(rel)
    base = text[: -len(rel) - 1] or "/"
    dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _ThroughSymlink(rel) from exc
                raise
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)


Folders = dict[str, tuple[Path, int]]  # relative folder → (its path in the root, its st_dev)


def _open_source(src: Path, rel: str, root: Path, fsync: bool, folders: Folders) -> _Open | TransferResult:
    """Open the source without following symlinks or blocking on fifos, and make its folder.

    `folders` remembers the target folders made and stat'ed earlier in the same batch, so files that
    share a folder pay for its checks once.
    """
    try:
        fd = open_beneath(src, rel)
    except FileNotFoundError:
        return TransferResult(Outcome.VANISHED, reason="gone before pickup")
    except _ThroughSymlink:
        return TransferResult(Outcome.SKIPPED, reason="a folder on its path is a symlink")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return TransferResult(Outcome.SKIPPED, reason="symlink")
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return TransferResult(Outcome.SKIPPED, reason="not a regular file")
        rel_dir, _, name = rel.rpartition("/")
        known = folders.get(rel_dir)
        if known is None:
            made = ensure_dirs(root, rel_dir, fsync)
            known = folders[rel_dir] = (made, os.stat(made).st_dev)
        folder, folder_dev = known
        same_fs = folder_dev == st.st_dev and (st.st_dev, str(folder)) not in _no_link
    except BaseException:
        os.close(fd)
        raise
    return _Open(src, fd, st, folder / name, same_fs)


def _stage(item: _Open, fsync_each: bool, abort: threading.Event) -> None:
    """Make the bytes ready to be linked: the source itself, or a copy under a temporary name."""
    if item.same_fs:
        if fsync_each:
            os.fsync(item.fd)
        item.link_from, item.ino = item.src, (item.st.st_dev, item.st.st_ino)
    else:
        item.temp = _copy_to_temp(item.fd, item.st, item.dest.parent, fsync_each, abort)
        tst = os.lstat(item.temp)
        item.link_from, item.ino = item.temp, (tst.st_dev, tst.st_ino)


def _commit(item: _Open, on_conflict: str, fsync_each: bool, abort: threading.Event) -> TransferResult:
    """Put the staged bytes under their final name (or find them there already)."""
    try:
        return _commit_once(item, on_conflict, fsync_each)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not item.same_fs:
            raise
    # One filesystem, two mounts (a bind mount, two subPath mounts of one volume): link() refuses
    # to cross mount points, so this file goes the copy way, flushed on its own.
    _no_link.add((item.st.st_dev, str(item.dest.parent)))
    item.same_fs = False
    _stage(item, True, abort)
    return _commit_once(item, on_conflict, True)


def _commit_once(item: _Open, on_conflict: str, fsync_each: bool) -> TransferResult:
    assert item.link_from is not None
    for _ in range(100):  # another writer may take the name between resolve and link
        target = _resolve_target(item.fd, item.st, item.dest, on_conflict)
        if target is None:
            return TransferResult(Outcome.DUPLICATE, dest=item.dest, size=item.st.st_size)
        try:
            _place(item.link_from, item.ino, target, fsync_each)
        except FileExistsError:
            continue
        except _Swapped:
            return TransferResult(Outcome.SKIPPED, reason="replaced by another file or a symlink")
        except OSError as exc:
            if exc.errno in OUTBOX_ERRNOS:
                raise _outbox_error(exc, f"cannot place {target.path.name}") from exc
            raise
        return TransferResult(Outcome.DELIVERED, dest=target.path, size=item.st.st_size)
    raise OSError(errno.EEXIST, f"could not claim a free name for {item.dest.name}")


def _finish(item: _Open) -> None:
    """Remove the source name (after the delivery is durable) and the temporary name."""
    if item.result is not None and item.result.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE):
        _remove_source(item.src, item.st)
    if item.temp is not None:
        _unlink_quietly(item.temp)


_libc: ctypes.CDLL | None = None


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding `path` to disk in one call (group commit)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")
    finally:
        os.close(fd)


Outcomes = list["TransferResult | Exception"]


def deliver_batch(
    items: list[tuple[Path, str]],
    root: Path,
    *,
    on_conflict: str = "rename",
    fsync: bool = True,
    abort: threading.Event | None = None,
) -> Outcomes:
    """Deliver several files with one group commit; blocking. One result or exception per item.

    One file is made durable with its own fsyncs (lowest latency). Several share ``syncfs`` calls on
    the outbox filesystem: copies are flushed before any is linked into place, the links before any
    source is removed, so durability before removal holds for every file of the batch.
    """
    abort = abort or threading.Event()
    fsync_each = fsync and len(items) == 1
    group = fsync and not fsync_each
    outcomes: Outcomes = []
    opened: list[_Open] = []
    slots: list[int] = []
    folders: Folders = {}
    for src, rel in items:
        try:
            got = _open_source(src, rel, root, fsync, folders)
            if isinstance(got, _Open):
                opened.append(got)
                slots.append(len(outcomes))
                outcomes.append(TransferResult(Outcome.SKIPPED))  # placeholder until committed
            else:
                outcomes.append(got)
        except Exception as exc:  # noqa: BLE001 - reported per item
            outcomes.append(exc)
    live: list[tuple[int, _Open]] = []
    try:
        for slot, item in zip(slots, opened, strict=True):
            try:
                _stage(item, fsync_each, abort)
                live.append((slot, item))
            except Exception as exc:  # noqa: BLE001 - reported per item
                outcomes[slot] = exc
        if group and any(item.temp is not None for _, item in live):
            _group_sync(root, live, outcomes)
        committed: list[tuple[int, _Open]] = []
        for slot, item in live:
            if isinstance(outcomes[slot], Exception):
                continue  # the group flush of its copy failed
            try:
                item.result = _commit(item, on_conflict, fsync_each, abort)
                outcomes[slot] = item.result
                committed.append((slot, item))
            except Exception as exc:  # noqa: BLE001 - reported per item
                outcomes[slot] = exc
        if group and committed:
            _group_sync(root, committed, outcomes)
    finally:
        for item in opened:
            try:
                _finish(item)
            finally:
                os.close(item.fd)
    return outcomes


def _group_sync(root: Path, members: list[tuple[int, _Open]], outcomes: Outcomes) -> None:
    """Call syncfs once; if it fails, every member fails with that error (and keeps its source)."""
    try:
        syncfs(root)
    except OSError as exc:
        error = _outbox_error(exc, "flushing the outbox failed") if exc.errno in OUTBOX_ERRNOS else exc
        for slot, item in members:
            outcomes[slot] = error
            item.result = None


def deliver(
    src: Path,
    rel: str,
    root: Path,
    *,
    on_conflict: str = "rename",
    fsync: bool = True,
    abort: threading.Event | None = None,
) -> TransferResult:
    """Deliver the file `src` (relative path `rel`) to ``root/rel``; blocking.

    Raises OutboxUnavailable (pause intake), ConflictRefused (quarantine), SourceChanged or
    OSError (retry), TransferAborted (shutdown).
    """
    (outcome,) = deliver_batch([(src, rel)], root, on_conflict=on_conflict, fsync=fsync, abort=abort)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
