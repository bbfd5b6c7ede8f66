"""deploy/systemd: the unit passes `systemd-analyze verify` and says what the issue asks.

The unit (watcher.service), its settings (watcher.env, installed as /etc/watcher/watcher.env) and its
user (watcher.sysusers) are parsed and checked against each other: the writable folders are exactly the
inbox, the outbox and the state of the env file, the stop timeout exceeds the service's own shutdown
bound, and the hardening options are set. systemd-analyze and systemd-sysusers come from Debian's
systemd package (deploy/tools/ensure-debian-tools.sh); they work on files, without systemd as PID 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from watcher.lifecycle import STOP_MARGIN

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "watcher.service"
ENV_FILE = SYSTEMD / "watcher.env"
SYSUSERS = SYSTEMD / "watcher.sysusers"

EXEC_START = "/opt/watcher/bin/watcher run"  # the venv install of docs/systemd.md
SHUTDOWN_TIMEOUT_DEFAULT = 30.0  # the contract's default of WATCHER_SHUTDOWN_TIMEOUT
MAX_EXPOSURE = 2.0  # `systemd-analyze security`: 0 is locked down, 10 is unprotected; below 2 is "OK"

# Options whose effective value must be exactly this (the last assignment wins, as in systemd).
HARDENING = {
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",  # empty: no capability at all
    "AmbientCapabilities": "",
    "UMask": "0027",
}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A unit file as {section: {key: [every assignment, in order]}}; continuation lines joined."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{line!r} comes before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is no key=value line"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def parse_env(text: str) -> dict[str, str]:
    """An EnvironmentFile: KEY=value lines; quotes around a value are removed, as systemd does."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{raw!r} is no KEY=value line"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def timespan(value: str) -> float:
    """A systemd time span ("45s", "1min 30s", "45", "500ms") in seconds; a bare number is seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), f"{value!r} is no time span"
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def service(unit: Unit) -> dict[str, list[str]]:
    assert set(unit) == {"Unit", "Service", "Install"}, sorted(unit)
    return unit["Service"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return parse_env(ENV_FILE.read_text(encoding="utf-8"))


def effective(section: dict[str, list[str]], key: str) -> str:
    """The value systemd uses: the last assignment."""
    assert key in section, f"{key}= is not set"
    return section[key][-1]


def systemd_tool(name: str) -> str:
    """A tool of Debian's systemd package; missing is a failure under CI=true, a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"{name} not found, so deploy/systemd was NOT checked: install Debian's `systemd` package "
            "(`bash deploy/tools/ensure-debian-tools.sh`, which `make test` runs)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return systemd_tool("systemd-analyze")


def runnable_copy(text: str, directory: Path) -> Path:
    """The unit under its own name in `directory`, started from this venv's `watcher`: verify demands
    that ExecStart's program exists, and /opt/watcher does not exist here."""
    watcher = Path(sys.executable).parent / "watcher"  # beside the venv's python symlink, not its target
    assert watcher.is_file(), f"{watcher} is missing: pip install -e . installs it"
    assert f"\nExecStart={EXEC_START}\n" in text
    path = directory / UNIT.name
    path.write_text(text.replace(f"\nExecStart={EXEC_START}\n", f"\nExecStart={watcher} run\n"), encoding="utf-8")
    return path


def analyze(systemd_analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze ARGS`: no pager, no colours."""
    return subprocess.run(
        [systemd_analyze, "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )


def verify_problems(systemd_analyze: str, unit_file: Path) -> str:
    """What `systemd-analyze verify` objects to in unit_file; empty when it accepts it.

    verify exits 0 on an unknown key or an unparsable value (it only says "ignoring"), so every line it
    prints about this unit counts too. --recursive-errors=no: the host's other units are not ours to judge.
    """
    proc = analyze(systemd_analyze, "verify", "--man=no", "--recursive-errors=no", str(unit_file))
    output = proc.stdout + proc.stderr
    ours = [line for line in output.splitlines() if str(unit_file) in line or unit_file.name in line]
    if proc.returncode != 0 or ours:
        return f"exit {proc.returncode}:\n{output}"
    return ""


# ---------------------------------------------------------------------------------------------- verify


def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze: str, tmp_path: Path) -> None:
    unit_file = runnable_copy(UNIT.read_text(encoding="utf-8"), tmp_path)
    problems = verify_problems(systemd_analyze, unit_file)
    assert not problems, f"systemd-analyze verify {UNIT.relative_to(REPO)}: {problems}"


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("\nProtectSystem=strict\n", "\nProtectSytem=strict\n"),  # a misspelt directive
        ("\nTimeoutStopSec=", "\nTimeoutStopSec=x"),  # a value systemd cannot parse
        ("\n[Service]\n", "\n[Servce]\n"),  # a misspelt section
    ],
)
def test_verify_catches_a_broken_unit(systemd_analyze: str, tmp_path: Path, original: str, broken: str) -> None:
    # Guards the check above: systemd "ignores" a misspelt directive, which must not pass as verified.
    text = UNIT.read_text(encoding="utf-8")
    assert original in text
    unit_file = runnable_copy(text.replace(original, broken, 1), tmp_path)
    assert verify_problems(systemd_analyze, unit_file), f"verify accepted the unit with {broken.strip()!r}"


def test_security_exposure_is_low(systemd_analyze: str, tmp_path: Path) -> None:
    unit_file = runnable_copy(UNIT.read_text(encoding="utf-8"), tmp_path)
    proc = analyze(systemd_analyze, "security", "--offline=yes", str(unit_file))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert proc.returncode == 0 and match, f"systemd-analyze security failed:\n{proc.stdout}{proc.stderr}"
    exposure = float(match.group(1))
    weak = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}; unprotected:\n{weak}"


# ---------------------------------------------------------------------------------------------- the unit


def test_it_runs_the_venv_install_with_the_env_file(service: dict[str, list[str]]) -> None:
    assert service["ExecStart"] == [EXEC_START]
    assert effective(service, "Type") in {"exec", "simple"}
    # No "-" prefix: a missing settings file must stop the start, not run with the defaults.
    assert service["EnvironmentFile"] == ["/etc/watcher/watcher.env"]
    assert "Environment" not in service, "settings belong in the env file, where the test sees them"


def test_it_writes_exactly_the_inbox_outbox_and_state(service: dict[str, list[str]], env: dict[str, str]) -> None:
    paths = [p for value in service["ReadWritePaths"] for p in value.split()]
    expected = {env["WATCHER_INBOX"], env["WATCHER_OUTBOX"], env["WATCHER_STATE_DIR"]}
    assert all(Path(p).is_absolute() for p in expected), expected
    assert sorted(paths) == sorted(expected), "ReadWritePaths must name the env file's three folders, once each"
    # The quarantine must be writable too: by default <state dir>/failed, or a folder inside the state.
    failed = Path(env.get("WATCHER_FAILED_DIR", f"{env['WATCHER_STATE_DIR']}/failed"))
    assert failed.is_relative_to(env["WATCHER_STATE_DIR"]), f"WATCHER_FAILED_DIR {failed} is not writable"
    # Nothing else opens a writable path: the journal has the logs, PrivateTmp the scratch space.
    for key in ("StateDirectory", "LogsDirectory", "CacheDirectory", "RuntimeDirectory", "BindPaths"):
        assert key not in service, f"{key}= adds a writable path"


def test_it_stops_with_sigterm_above_the_shutdown_bound(service: dict[str, list[str]], env: dict[str, str]) -> None:
    assert service.get("KillSignal", ["SIGTERM"])[-1] in {"SIGTERM", "TERM", "15"}
    assert "ExecStop" not in service, "SIGTERM is the stop: the service drains on it"
    assert service.get("KillMode", ["control-group"])[-1] in {"control-group", "mixed"}
    assert service.get("SendSIGKILL", ["yes"])[-1] == "yes"
    shutdown = float(env.get("WATCHER_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_DEFAULT))
    stop = timespan(effective(service, "TimeoutStopSec"))
    assert stop > shutdown + STOP_MARGIN, (
        f"TimeoutStopSec={stop:g}s must exceed WATCHER_SHUTDOWN_TIMEOUT + STOP_MARGIN = {shutdown + STOP_MARGIN:g}s, "
        "or systemd kills the service before its own deadline"
    )


def test_it_restarts_on_failure_but_not_on_bad_config(service: dict[str, list[str]], unit: Unit) -> None:
    assert effective(service, "Restart") in {"on-failure", "always"}
    assert timespan(effective(service, "RestartSec")) > 0
    assert "2" in effective(service, "RestartPreventExitStatus").split(), "exit 2 (bad config) must not loop"
    assert int(effective(unit["Unit"], "StartLimitBurst")) > 0


def test_it_logs_to_the_journal_in_json(service: dict[str, list[str]], env: dict[str, str]) -> None:
    assert effective(service, "StandardOutput") == "journal"
    assert service.get("StandardError", ["inherit"])[-1] in {"journal", "inherit"}
    assert env["WATCHER_LOG_FORMAT"] == "json"


def test_it_runs_as_the_dedicated_user(service: dict[str, list[str]]) -> None:
    assert effective(service, "User") == "watcher"
    assert effective(service, "Group") == "watcher"
    assert service.get("DynamicUser", ["no"])[-1] == "no"
    lines = [line.split() for line in SYSUSERS.read_text(encoding="utf-8").splitlines() if line.startswith("u ")]
    assert [fields[:2] for fields in lines] == [["u", "watcher"]], "watcher.sysusers must create the user"


def test_sysusers_snippet_is_valid(tmp_path: Path) -> None:
    sysusers = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [sysusers, "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Creating user 'watcher'" in output, f"systemd-sysusers:\n{output}"
    assert SYSUSERS.name not in output, f"systemd-sysusers objects:\n{output}"


def test_it_is_hardened(service: dict[str, list[str]]) -> None:
    wrong = {key: service.get(key, ["<unset>"])[-1] for key, want in HARDENING.items()}
    wrong = {key: got for key, got in wrong.items() if got != HARDENING[key]}
    assert not wrong, f"hardening options not as required: {wrong}"
    families = set(effective(service, "RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}, families  # HTTP, a PostgreSQL job store
    filters = service["SystemCallFilter"]
    assert filters[0] == "@system-service" and "~@privileged" in " ".join(filters[1:]).split(), filters


def test_env_file_is_a_valid_configuration(env: dict[str, str], tmp_path: Path) -> None:
    # The env file's settings, with the three folders moved under tmp_path, pass `watcher check-config`
    # without a warning about an unknown WATCHER_ variable.
    folders = {key: str(tmp_path / key.lower()) for key in ("WATCHER_INBOX", "WATCHER_OUTBOX", "WATCHER_STATE_DIR")}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **env, **folders},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"watcher check-config refuses watcher.env:\n{proc.stderr}"
    assert "unknown_variables" not in proc.stderr, proc.stderr
