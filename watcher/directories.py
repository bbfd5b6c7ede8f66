"""The service's folders: checked (and created where that is safe) before anything starts, and
swept of our own temporary files at start-up.

Light on purpose: ``watcher check-config`` imports this module, and must not pull in uvicorn,
APScheduler, SQLAlchemy or watchdog.
"""

from __future__ import annotations

import os
from pathlib import Path

from watcher.config import ConfigError, Settings
from watcher.logging import get_logger
from watcher.pipeline.rescan import sweep_temp_files

log = get_logger(__name__)


def prepare_directories(settings: Settings, create: bool = True) -> None:
    """Create the inbox, outbox, state and failed dirs when missing; refuse a path that is a file,
    and an outbox whose parent folder is missing.

    With `create=False` (``check-config``) nothing is created; only what exists is checked.
    """
    named = [
        ("WATCHER_INBOX", settings.inbox),
        ("WATCHER_OUTBOX", settings.outbox),
        ("WATCHER_STATE_DIR", settings.state_dir),
        ("WATCHER_FAILED_DIR", settings.failed_path),
    ]
    for name, path in named:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{name}={path} is not a directory: point it at a folder")
    outbox = settings.outbox
    if not outbox.exists() and not outbox.parent.is_dir():
        # A typo in a mount path must not deliver into the container's own filesystem.
        raise ConfigError(
            f"WATCHER_OUTBOX={outbox}: its parent folder {outbox.parent} does not exist; "
            "check the path (is the volume mounted?) or create the parent folder"
        )
    if create:
        for name, path in named:
            if path.is_dir():
                continue
            try:
                path.mkdir(parents=name != "WATCHER_OUTBOX", exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"{name}={path} cannot be created: {exc.strerror}; create it or fix permissions"
                ) from exc
            if name == "WATCHER_OUTBOX":
                log.info("outbox.created", outbox=str(path), reason="it did not exist; its parent folder does")
    if settings.inbox.exists() and not os.access(settings.inbox, os.R_OK | os.X_OK):
        raise ConfigError(f"WATCHER_INBOX={settings.inbox} is not readable by this user: fix its permissions")


def sweep_stale_temp_files(roots: list[Path], older_than: float = 0.0) -> int:
    """Remove our temporary files at start-up (blocking): none of this process can be in progress yet;
    in cluster mode (`older_than` > 0) only those old enough not to be another replica's copy.
    """
    return sum(sweep_temp_files(root, older_than)[0] for root in roots)
