"""Start-up checks of cluster mode's filesystem (research/scale-out.md §2): claims need an atomic
rename, and the commit and the hand-back need ``link()``.

Blob-store FUSE mounts (s3fs, blobfuse, goofys, gcsfuse) rename by copy-then-delete: two replicas
could both "win" a claim. They are refused by type. ``link()`` is tried for real, in the outbox and in
``<inbox>/.watcher/``, with names a sweep removes should the process die in between.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from watcher.cluster.claims import RESERVED
from watcher.config import ConfigError, Settings
from watcher.pipeline.observer import filesystem_type
from watcher.pipeline.transfer import TEMP_PREFIX, TEMP_SUFFIX

NON_ATOMIC_RENAME = (
    "fuse.s3fs",
    "fuse.blobfuse",
    "fuse.blobfuse2",
    "fuse.goofys",
    "fuse.gcsfuse",
    "fuse.mountpoint-s3",
)


def _links(folder: Path) -> str | None:
    """None when ``link()`` works in `folder`, else why not."""
    first = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"
    second = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        try:
            os.link(first, second)
        finally:
            for name in (second, first):
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_filesystem(settings: Settings, fs_type: Callable[[Path], str] = filesystem_type) -> None:
    """ConfigError naming the setting when its filesystem cannot carry cluster mode (blocking)."""
    for name, path in (
        ("WATCHER_INBOX", settings.inbox),
        ("WATCHER_OUTBOX", settings.outbox),
        ("WATCHER_FAILED_DIR", settings.failed_path),
    ):
        kind = fs_type(path)
        if kind in NON_ATOMIC_RENAME:
            raise ConfigError(
                f"{name}={path} is invalid: cluster mode needs a filesystem whose rename is atomic, and "
                f"{kind} renames by copy and delete; use NFS, EFS, CephFS or Azure Files NFS, or run one replica"
            )
    reserved = settings.inbox / RESERVED
    reserved.mkdir(exist_ok=True)
    for name, folder in (("WATCHER_OUTBOX", settings.outbox), ("WATCHER_INBOX", reserved)):
        why = _links(folder)
        if why is not None:
            raise ConfigError(
                f"{name}={folder} is invalid: cluster mode needs link() there (a delivery must never "
                f"overwrite another replica's), and it failed: {why}"
            )
