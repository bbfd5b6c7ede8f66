"""WATCHER_* variables and `Settings` for a test: every folder under the test's folder, a free port."""

from __future__ import annotations

from pathlib import Path

from tests.support.net import free_port
from watcher.config import Settings, load_settings


def make_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """WATCHER_* variables with inbox, outbox and state under tmp_path; `settle_seconds="1"` sets
    WATCHER_SETTLE_SECONDS.
    """
    env = {
        "WATCHER_INBOX": str(tmp_path / "inbox"),
        "WATCHER_OUTBOX": str(tmp_path / "outbox"),
        "WATCHER_STATE_DIR": str(tmp_path / "state"),
        "WATCHER_HTTP_PORT": str(free_port()),
        "WATCHER_SETTLE_SECONDS": "0.3",
        "WATCHER_RESCAN_INTERVAL": "30",
        "WATCHER_LOG_FORMAT": "json",
    }
    env.update({f"WATCHER_{k.upper()}": v for k, v in overrides.items()})
    return env


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    """`Settings` as `make_env` describes them."""
    return load_settings(environ=make_env(tmp_path, **overrides))
