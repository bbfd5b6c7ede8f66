"""deploy/Dockerfile passes hadolint and keeps the image contract (test_image.py builds and runs it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
BASE_IMAGE = "python:3.11-slim-bookworm"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(args.split())))
    return result


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    result: dict[str, str] = {}
    for keyword, args in instructions():
        if keyword == "FROM":
            break
        assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
        name, _, default = args.partition("=")
        result[name] = default
    return result


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    assert result, "the Dockerfile has no FROM"
    return result


def test_hadolint_passes(hadolint_bin: Path) -> None:
    proc = subprocess.run(
        [str(hadolint_bin), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"hadolint found problems:\n{proc.stdout}{proc.stderr}"


def test_two_stages_on_the_base_argument_defaulting_to_the_slim_python_image() -> None:
    assert global_args() == {"BASE": BASE_IMAGE}, "the base is a build argument; make image may pass another"
    builder, final = stages()
    assert builder[0] == ("FROM", "${BASE} AS builder")
    assert final[0] == ("FROM", "${BASE}")
    builder_runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert "python3 -m venv /opt/watcher" in builder_runs, (
        "a venv works with Debian's python (PEP 668) and the official one"
    )
    assert "/opt/watcher/bin/python -m pip install --no-compile ." in builder_runs
    assert "pip uninstall --yes pip setuptools" in builder_runs, "no pip in the final image"
    assert ("COPY", "--from=builder /opt/watcher /opt/watcher") in final
    final_runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for tool in ("pip", "apt-get", "gcc", "build-essential", "git "):
        assert tool not in final_runs, f"no installs or build tools in the final stage: {tool}"


def test_final_stage_runs_watcher_as_numeric_non_root_user() -> None:
    final = stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    assert re.fullmatch(r"10001(:10001)?", users[-1]), users[-1]
    entrypoints = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoints
    assert json.loads(entrypoints[-1]) == ["watcher", "run"], "exec form, so SIGTERM reaches the service"
    assert ("EXPOSE", "8080") in final


def test_final_stage_environment() -> None:
    env: dict[str, str] = {}
    for keyword, args in stages()[-1]:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in args.split()))
    assert (
        env.items()
        >= {
            "WATCHER_HTTP_HOST": "0.0.0.0",
            "WATCHER_HTTP_PORT": "8080",
            "WATCHER_INBOX": "/data/inbox",
            "WATCHER_OUTBOX": "/data/outbox",
            "WATCHER_STATE_DIR": "/data/state",
        }.items()
    )


def test_dockerignore_lets_the_build_inputs_through() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list keeps .venv, data and .git out of the build context"
    copied: list[str] = []
    for keyword, args in stages()[0]:
        if keyword == "COPY" and "--from" not in args:
            copied.extend(args.split()[:-1])
    assert copied
    for source in copied:
        assert f"!{source}" in patterns or f"!{source}/" in patterns, f"COPY {source} but .dockerignore drops it"
