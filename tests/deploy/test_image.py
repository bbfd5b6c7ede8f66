"""deploy/Dockerfile built by `make image` and run the way the Kubernetes base runs it.

The run: podman with runc (crun refuses this machine's hybrid cgroup layout), cgroupfs, and the
host's own rlimits (raising them is not permitted here). It is as close to the manifests' pod as
podman allows: the manifests' UID/GID with fsGroup as a supplementary group, a read-only root with
only /tmp writable (a tmpfs where the pod has an emptyDir), all capabilities dropped, no privilege
escalation, podman's default seccomp profile (RuntimeDefault), inbox/outbox/state as mounted
volumes, the settings of deploy/kubernetes/base/settings.env, and the image's own entry point.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# A cold build (base made by debootstrap) takes about two minutes; the default 120 s is for one test.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parents[2]
SETTINGS_ENV = REPO / "deploy" / "kubernetes" / "base" / "settings.env"
TOOLS = ("buildah", "podman", "runc", "debootstrap")
# The layers above the base: the venv with the dependencies (about 49 MB, of which SQLAlchemy is 29 MB)
# plus the user and the mount points. The base costs about 127 MB (Debian bookworm minbase + python3)
# or about 125 MB (python:3.11-slim-bookworm); the goal is base + 55 MB at most.
APP_LAYERS_BUDGET = 55_000_000
VOLUMES = ("/data/inbox", "/data/outbox", "/data/state")


def pyproject_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@pytest.fixture(scope="session")
def image_tools() -> None:
    """buildah, podman, runc, debootstrap and root; missing is a failure under CI=true, else a skip."""
    missing = [tool for tool in TOOLS if which(tool) is None]
    problem = f"{', '.join(missing)} missing" if missing else ("not root" if os.geteuid() != 0 else "")
    if problem:
        reason = (
            f"{problem}, so the image was NOT built or run (Dockerfile build, non-root read-only run, "
            "delivery through volumes, SIGTERM, image facts): `make deploy-tools` installs the tools "
            "with apt-get, as root on Debian"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Podman with the runtime and cgroup manager that work here."""
    proc = subprocess.run(
        ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


def ulimits() -> list[str]:
    """Explicit rlimits no higher than the host's: podman's defaults raise them, which is refused here
    (so is an nproc above 32768, the pid_max, even under the hard limit). The service needs few of either."""
    result = []
    for name, limit, cap in (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 4096)):
        value = min([cap, *(v for v in resource.getrlimit(limit) if v != resource.RLIM_INFINITY)])
        result += ["--ulimit", f"{name}={value}:{value}"]
    return result


@dataclass(frozen=True)
class Built:
    id: str
    seconds: float
    log: str

    def inspect(self) -> dict[str, Any]:
        data = json.loads(podman("image", "inspect", self.id).stdout)[0]
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="session")
def built(image_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make image`, exactly as the README says, identified by the id it wrote."""
    iidfile = tmp_path_factory.mktemp("image") / "iid"
    start = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "image", f"IIDFILE={iidfile}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"make image failed after {seconds:.0f} s:\n{proc.stdout}{proc.stderr[-6000:]}"
    return Built(iidfile.read_text().strip().removeprefix("sha256:"), seconds, proc.stderr)


@dataclass(frozen=True)
class PodSpec:
    image: str
    uid: int
    gid: int
    fs_group: int
    port: int
    grace: int
    command: list[str] | None


@pytest.fixture(scope="session")
def pod(rendered: dict[str, list[dict[str, Any]]]) -> PodSpec:
    """What the rendered kustomize base asks of the image."""
    [deployment] = [o for o in rendered["base"] if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    security = {**spec["securityContext"], **container["securityContext"]}
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    return PodSpec(
        image=container["image"],
        uid=security["runAsUser"],
        gid=security["runAsGroup"],
        fs_group=spec["securityContext"]["fsGroup"],
        port=port,
        grace=spec["terminationGracePeriodSeconds"],
        command=container.get("command"),
    )


def settings() -> dict[str, str]:
    lines = SETTINGS_ENV.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def run_once(pod: PodSpec, *args: str) -> str:
    """A one-off command in the image as the manifests' user on a read-only root."""
    proc = podman(
        "run", "--rm", *ulimits(), "--user", f"{pod.uid}:{pod.gid}", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", *args,
    )  # fmt: skip
    return proc.stdout


# ---------------------------------------------------------------------------------------------- facts


def test_the_manifests_deploy_what_make_image_tagged(built: Built, pod: PodSpec) -> None:
    assert pod.image == f"ghcr.io/watcher/watcher:{pyproject_version()}", "kustomize images: name and tag"
    tagged = podman("image", "inspect", "--format", "{{.Id}}", pod.image).stdout.strip()
    assert tagged == built.id, f"{pod.image} is not the image `make image` just built"
    labels = built.inspect()["Config"].get("Labels") or {}
    assert labels.get("org.opencontainers.image.version") == pyproject_version()


def test_numeric_non_root_user_entry_point_and_port_match_the_manifests(built: Built, pod: PodSpec) -> None:
    config = built.inspect()["Config"]
    assert config["User"] == f"{pod.uid}:{pod.gid}", "numeric USER, the manifests' runAsUser:runAsGroup"
    assert pod.uid != 0
    assert pod.command is None, "the Deployment sets no command, so the image's entry point runs"
    assert config["Entrypoint"] == ["watcher", "run"]
    assert set(config["ExposedPorts"]) == {f"{pod.port}/tcp"}
    assert settings()["WATCHER_HTTP_PORT"] == str(pod.port)


def test_watcher_version_is_the_package_version(built: Built, pod: PodSpec) -> None:
    out = run_once(pod, "--entrypoint", "watcher", built.id, "--version")
    assert out.strip() == f"watcher {pyproject_version()}"


def test_the_user_can_write_only_the_volumes_and_tmp(built: Built, pod: PodSpec) -> None:
    """On a writable root (no volumes mounted), so that the image's own permissions are what is checked."""
    proc = podman(
        "run", "--rm", *ulimits(), "--user", f"{pod.uid}:{pod.gid}", "--entrypoint", "find", built.id,
        "/", "-xdev", "-writable", "-print", check=False,
    )  # fmt: skip
    writable = set(proc.stdout.split())
    assert writable, proc.stderr
    assert writable == {"/tmp", *VOLUMES}, f"writable by {pod.uid} outside the volumes and /tmp"


def test_size_within_the_goal(built: Built) -> None:
    image = built.inspect()
    base_name = (image["Config"].get("Labels") or {}).get("org.opencontainers.image.base.name")
    assert base_name, "make image labels the image with its base"
    base_size = int(podman("image", "inspect", "--format", "{{.Size}}", base_name).stdout)
    added = int(image["Size"]) - base_size
    assert added <= APP_LAYERS_BUDGET, (
        f"the image is {int(image['Size']) / 1e6:.0f} MB: {added / 1e6:.0f} MB on top of {base_name} "
        f"({base_size / 1e6:.0f} MB), over the goal of {APP_LAYERS_BUDGET / 1e6:.0f} MB"
    )


# ---------------------------------------------------------------------------------------------- run


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"watcher-image-test-{uuid.uuid4().hex[:12]}"
    yield name
    podman("rm", "--force", "--ignore", name, check=False)


def wait_for(what: str, condition: Callable[[], bool], deadline: float, name: str) -> None:
    """condition() until it is true; fails with the container's log at the deadline."""
    end = time.monotonic() + deadline
    while True:
        if condition():
            return
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, check=False).stdout
        if time.monotonic() > end or not state.startswith("running"):
            logs = podman("logs", name, check=False)
            pytest.fail(f"{what}: not within {deadline} s (container: {state.strip()})\n{logs.stdout}{logs.stderr}")
        time.sleep(0.1)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status = response.status
            assert isinstance(status, int)
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_runs_as_the_pod_does_and_delivers_through_the_volumes(
    built: Built, pod: PodSpec, tmp_path: Path, container_name: str
) -> None:
    volumes = {path: tmp_path / path.rsplit("/", 1)[1] for path in VOLUMES}
    for host in volumes.values():
        # What fsGroup gives a pod: the volume group-owned by fsGroup, group-writable, setgid.
        host.mkdir()
        os.chown(host, 0, pod.fs_group)
        host.chmod(0o2770)
    podman(
        "run", "--detach", "--name", container_name, *ulimits(),
        "--user", f"{pod.uid}:{pod.gid}", "--group-add", str(pod.fs_group),
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777,size=256m",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--env-file", str(SETTINGS_ENV),
        *[arg for path, host in volumes.items() for arg in ("--volume", f"{host}:{path}")],
        "--publish", f"127.0.0.1::{pod.port}",
        built.id,
    )  # fmt: skip
    mounts = run_in(container_name, "cat", "/proc/mounts")
    root = next(line.split() for line in mounts.splitlines() if line.split()[1] == "/")
    assert "ro" in root[3].split(","), f"the root is not read-only: {root}"

    host_port = podman("port", container_name, f"{pod.port}/tcp").stdout.strip().rsplit(":", 1)[1]
    ready = f"http://127.0.0.1:{host_port}/health/ready"
    wait_for(f"{ready} answering 200", lambda: http_status(ready) == 200, 60, container_name)

    payload = os.urandom(64 * 1024)
    source = tmp_path / "report.csv"
    source.write_bytes(payload)
    shutil.copy(source, volumes["/data/inbox"] / source.name)
    delivered = volumes["/data/outbox"] / source.name
    wait_for(
        "the file copied into the mounted inbox arriving in the mounted outbox",
        lambda: delivered.is_file() and delivered.read_bytes() == payload,
        30,
        container_name,
    )
    assert any(volumes["/data/state"].iterdir()), "nothing written to the state volume"

    start = time.monotonic()
    podman("kill", "--signal", "TERM", container_name)
    waited = podman("wait", container_name, timeout=pod.grace + 15, check=False)
    elapsed = time.monotonic() - start
    logs = podman("logs", container_name, check=False)
    assert waited.stdout.strip() == "0", f"exit {waited.stdout.strip()} after SIGTERM:\n{logs.stdout}{logs.stderr}"
    assert elapsed < pod.grace, f"SIGTERM took {elapsed:.1f} s, the grace period is {pod.grace} s"


def run_in(name: str, *command: str) -> str:
    return podman("exec", name, *command).stdout
