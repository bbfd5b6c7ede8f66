"""Settings: validation, precedence (default < TOML < env) and error messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config import ConfigError, load_settings


def base(tmp_path: Path) -> dict[str, str]:
    return {"WATCHER_INBOX": str(tmp_path / "in"), "WATCHER_OUTBOX": str(tmp_path / "out")}


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    s = load_settings(environ=base(tmp_path))
    assert (s.workers, s.queue_size, s.rescan_interval, s.settle_seconds) == (4, 10000, 30.0, 2.0)
    assert (s.observer, s.recursive, s.on_conflict, s.max_attempts, s.fsync) == ("auto", True, "rename", 5, True)
    assert s.include == ("*",)
    assert s.exclude == (".*", "*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~")
    assert (s.http_host, s.http_port, s.api_token, s.timezone) == ("127.0.0.1", 8080, None, "UTC")
    assert s.failed_path == s.state_dir / "failed"
    assert s.jobstore == f"sqlite:///{s.state_dir / 'jobs.sqlite'}"


def test_precedence_default_toml_env(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'inbox = "{tmp_path / "tin"}"\noutbox = "{tmp_path / "tout"}"\nworkers = 7\nqueue_size = 9\n')
    s = load_settings(cfg, environ={"WATCHER_WORKERS": "3"})
    assert s.workers == 3  # env beats TOML
    assert s.queue_size == 9  # TOML beats default
    assert s.settle_seconds == 2.0  # default
    assert s.inbox == tmp_path / "tin"


def test_comma_separated_globs(tmp_path: Path) -> None:
    s = load_settings(environ={**base(tmp_path), "WATCHER_INCLUDE": "*.csv, reports/*", "WATCHER_EXCLUDE": ""})
    assert s.include == ("*.csv", "reports/*")
    assert s.exclude == ()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WATCHER_WORKERS": "abc"}, "WATCHER_WORKERS='abc' is invalid"),
        (
            {"WATCHER_OBSERVER": "fast"},
            "WATCHER_OBSERVER='fast' is invalid: Input should be 'auto', 'inotify' or 'polling'",
        ),
        (
            {"WATCHER_SHUTDOWN_TIMEOUT": "-1"},
            "WATCHER_SHUTDOWN_TIMEOUT='-1' is invalid: Input should be greater than or equal to 0",
        ),
        ({"WATCHER_ON_CONFLICT": "merge"}, "WATCHER_ON_CONFLICT"),
        ({"WATCHER_HTTP_PORT": "70000"}, "WATCHER_HTTP_PORT"),
        ({"WATCHER_TIMEZONE": "Mars/Base"}, "WATCHER_TIMEZONE='Mars/Base' is invalid: unknown timezone"),
        ({"WATCHER_FSYNC": "perhaps"}, "WATCHER_FSYNC"),
    ],
)
def test_bad_env_values_name_the_variable(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={**base(tmp_path), **env})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_inbox_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WATCHER_INBOX is required"):
        load_settings(environ={"WATCHER_OUTBOX": str(tmp_path)})


@pytest.mark.parametrize(
    ("inbox", "outbox", "extra", "needle"),
    [
        ("in", "in", {}, "WATCHER_OUTBOX"),
        ("in", "in/out", {}, "nested"),
        ("in/sub", "in", {}, "nested"),
        ("in", "out", {"WATCHER_STATE_DIR": "in/state"}, "WATCHER_STATE_DIR"),
        ("in", "out", {"WATCHER_FAILED_DIR": "in/failed"}, "WATCHER_FAILED_DIR"),
    ],
)
def test_loops_are_refused(tmp_path: Path, inbox: str, outbox: str, extra: dict[str, str], needle: str) -> None:
    env = {"WATCHER_INBOX": str(tmp_path / inbox), "WATCHER_OUTBOX": str(tmp_path / outbox)}
    env.update({k: str(tmp_path / v) for k, v in extra.items()})
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ=env)


def test_toml_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("inbox = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('inbxo = "/x"\n')
    with pytest.raises(ConfigError, match="unknown key 'inbxo'"):
        load_settings(unknown, environ={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "missing.toml", environ={})
    typed = tmp_path / "typed.toml"
    typed.write_text(f'inbox = "{tmp_path}/i"\noutbox = "{tmp_path}/o"\nworkers = "many"\n')
    with pytest.raises(ConfigError, match=r"key 'workers' in .*typed.toml"):
        load_settings(typed, environ={})


def test_token_is_masked(tmp_path: Path) -> None:
    s = load_settings(environ={**base(tmp_path), "WATCHER_API_TOKEN": "s3cret-value"})
    assert s.api_token is not None and s.api_token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(s.public_view())
    assert "s3cret-value" not in repr(s)


def test_cluster_mode_needs_postgresql_and_then_shares_it_for_the_record(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"WATCHER_CLUSTER.*PostgreSQL"):
        load_settings(environ={**base(tmp_path), "WATCHER_CLUSTER": "true"})
    url = "postgresql://watcher@db/watcher"
    s = load_settings(environ={**base(tmp_path), "WATCHER_CLUSTER": "true", "WATCHER_JOBSTORE_URL": url})
    assert s.cluster and s.record_url == url
    single = load_settings(environ={**base(tmp_path), "WATCHER_JOBSTORE_URL": url})
    assert single.record_url == f"sqlite:///{single.state_dir / 'record.sqlite'}"
