"""Rules for folders on a network filesystem (research/scale-out.md §2), kept in one place.

- **Silly renames.** An NFS client that removes a file some local process still holds open renames
  it to ``.nfs<hex>`` instead, and removes that name at the last close. Such a name is never a file
  to deliver, to hand back from the claims, to purge or to move: :func:`is_silly_rename`.
- **ESTALE.** A path operation can fail with ESTALE when another client removed or replaced a name
  whose file handle this client had cached; looking the path up again usually works. Operations on
  names a listing gave us go through :func:`retry_stale`: a few tries, then :class:`StaleHandle`,
  which callers treat as "not now, a later scan looks again", never as the file's failure.
- **ENOENT on a listed name** means "later" (a negative lookup cache can hide a name that a listing
  shows) or "gone": never an error. The callers already say so where they catch it.
- **Settle by open and fstat.** Attributes that ``lstat`` returns can come from the client's cache
  (NFS: 3 to 60 s); ``open`` revalidates them (close-to-open consistency), so the settle check of a
  folder on a network filesystem, and of every folder in cluster mode, is :func:`open_fstat`.

Every function blocks on the filesystem; callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from watcher.config import Settings

P = ParamSpec("P")
T = TypeVar("T")

SILLY_PREFIX = ".nfs"
ESTALE_TRIES = 4  # one try and three retries, each a fresh lookup of the path (Dovecot retries up to 10)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StaleHandle(OSError):
    """ESTALE on every try: the name cannot be used now (another client changed it); look again later."""

    def __init__(self, what: str) -> None:
        """Keep the errno ESTALE and say what failed and how often."""
        super().__init__(errno.ESTALE, f"{what}: stale file handle on {ESTALE_TRIES} tries")


def is_silly_rename(name: str) -> bool:
    """True for an NFS client's silly-rename name (``.nfs…``): a removed file still held open."""
    return name.startswith(SILLY_PREFIX)


def retry_stale(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`call` with its arguments, tried again on ESTALE up to :data:`ESTALE_TRIES` times in all.

    Any other error is raised at once. When every try answers ESTALE, :class:`StaleHandle` (an OSError
    with errno ESTALE) is raised. No pause between tries: each one looks the path up anew, which is
    what clears a stale handle; a pause would not.
    """
    last: OSError | None = None
    for _ in range(ESTALE_TRIES):
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            last = exc
    raise StaleHandle(getattr(call, "__name__", "call")) from last


def _open_fstat_once(path: str) -> os.stat_result:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return st  # never open a symlink, fifo or device just to look at it
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESTALE):
            raise
        return st  # cannot be opened (permissions): the transfer reports that; settle on lstat
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def open_fstat(path: str) -> os.stat_result:
    """The attributes of the file at `path` as an ``open`` revalidates them (not followed when a symlink).

    Raises FileNotFoundError when the name is gone (or hidden by a negative lookup cache: "later"),
    and :class:`StaleHandle` after the retries of :func:`retry_stale`.
    """
    return retry_stale(_open_fstat_once, path)


def settle_stat(settings: Settings) -> Callable[[str], os.stat_result]:
    """How the settle check looks at a file: :func:`open_fstat` in cluster mode and for an inbox on a
    network filesystem, else ``os.lstat`` (one call, and exact on a local filesystem).
    """
    # Imported here: the transfer imports this module, and `watcher check-config` must not load watchdog.
    from watcher.pipeline.observer import filesystem_type, is_network_fs

    if settings.cluster or is_network_fs(filesystem_type(settings.inbox)):
        return open_fstat
    return os.lstat
