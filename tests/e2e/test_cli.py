"""The command line contract: exit codes, one-line errors naming the setting, check-config, --version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.process import WatcherProcess, run_cli
from tests.support.settings import make_env
from watcher import __version__


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"WATCHER_INBOX": str(tmp_path / "in"), "WATCHER_OUTBOX": str(tmp_path / "out"), **extra}


def test_version(tmp_path: Path) -> None:
    result = run_cli(["--version"], {}, tmp_path)
    assert result.returncode == 0 and __version__ in result.stdout


def test_check_config_prints_masked_settings(tmp_path: Path) -> None:
    result = run_cli(["check-config"], env(tmp_path, WATCHER_API_TOKEN="hunter2-token"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "in").exists(), "check-config must not create anything"
    assert "hunter2-token" not in result.stdout + result.stderr
    assert 'api_token = "********"' in result.stdout
    assert f'inbox = "{tmp_path / "in"}"' in result.stdout
    # The output is itself a valid --config file.
    cfg = tmp_path / "echo.toml"
    cfg.write_text(result.stdout.replace('api_token = "********"\n', ""))
    again = run_cli(["check-config", "--config", str(cfg)], {}, tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"WATCHER_WORKERS": "abc"}, "WATCHER_WORKERS"),
        ({"WATCHER_OBSERVER": "magic"}, "WATCHER_OBSERVER"),
        ({"WATCHER_SHUTDOWN_TIMEOUT": "-5"}, "WATCHER_SHUTDOWN_TIMEOUT"),
        ({"WATCHER_INBOX": ""}, "WATCHER_INBOX"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_2_with_one_line(tmp_path: Path, command: str, extra: dict[str, str], needle: str) -> None:
    result = run_cli([command], env(tmp_path, **extra), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_inbox_and_bad_toml(tmp_path: Path) -> None:
    result = run_cli(["run"], {"WATCHER_OUTBOX": str(tmp_path / "o")}, tmp_path)
    assert result.returncode == 2 and "WATCHER_INBOX is required" in result.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text("nonsense = 1\n")
    result = run_cli(["run", "--config", str(cfg)], {}, tmp_path)
    assert result.returncode == 2 and "unknown key 'nonsense'" in result.stderr and str(cfg) in result.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_inbox_that_is_a_file_and_nested_outbox(tmp_path: Path, command: str) -> None:
    (tmp_path / "in").write_text("a file")
    result = run_cli([command], env(tmp_path), tmp_path)
    assert result.returncode == 2 and "WATCHER_INBOX" in result.stderr and "not a directory" in result.stderr
    nested = run_cli(
        [command], {"WATCHER_INBOX": str(tmp_path / "x"), "WATCHER_OUTBOX": str(tmp_path / "x/o")}, tmp_path
    )
    assert nested.returncode == 2 and "nested" in nested.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(["run"], env(tmp_path, WATCHER_HTTP_PORT=str(port), WATCHER_LOG_FORMAT="json"), tmp_path)
    assert result.returncode == 2
    assert "WATCHER_HTTP_PORT" in result.stderr and "pick a free port" in result.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"WATCHER_INCLUDE": ""}, "WATCHER_INCLUDE"),
        ({"WATCHER_INCLUDE": " , "}, "WATCHER_INCLUDE"),
        ({"WATCHER_FAILED_DIR": "{tmp}/out/failed"}, "WATCHER_FAILED_DIR"),
        ({"WATCHER_STATE_DIR": "{tmp}/out/state"}, "WATCHER_STATE_DIR"),
        ({"WATCHER_OUTBOX": "{tmp}/not-mounted/out"}, "WATCHER_OUTBOX"),
    ],
)
def test_configuration_traps_exit_2_naming_the_setting(
    tmp_path: Path, command: str, extra: dict[str, str], needle: str
) -> None:
    settings = env(tmp_path, **{k: v.format(tmp=tmp_path) for k, v in extra.items()})
    result = run_cli([command], settings, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    # Nothing is made where a typo points: not the outbox, nor its missing parent.
    assert not (tmp_path / "not-mounted").exists()


def test_missing_outbox_whose_parent_exists_is_created_and_said(tmp_path: Path) -> None:
    settings = make_env(tmp_path)
    proc = WatcherProcess(tmp_path, settings, log_path=tmp_path / "log").start()
    try:
        assert (tmp_path / "outbox").is_dir()
        created = [e for e in proc.json_events() if e["event"] == "outbox.created"]
        assert created and created[0]["outbox"] == str(tmp_path / "outbox")
    finally:
        assert proc.terminate(30) == 0


def test_unknown_variables_get_one_warning_with_the_closest_name(tmp_path: Path) -> None:
    result = run_cli(["check-config"], env(tmp_path, WATCHER_WORKES="8", WATCHER_NONSENSE="1"), tmp_path)
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if "unknown" in line]
    assert len(lines) == 1
    assert "WATCHER_WORKES (did you mean WATCHER_WORKERS?)" in lines[0] and "WATCHER_NONSENSE" in lines[0]
