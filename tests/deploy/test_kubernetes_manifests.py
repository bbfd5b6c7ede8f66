"""The kustomizations render, validate against the Kubernetes schemas, and say what the issue asks."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from watcher.lifecycle import STOP_MARGIN

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VARIANT_NAMES = ["base", "with-prometheus-operator", "network-filesystem", "cluster", "sharded"]
# The overlays of several replicas: a StatefulSet of three, built from the base's pod.
REPLICATED = ["cluster", "sharded"]

# The oldest Kubernetes minor still served by the main providers, and the newest the installed
# kubernetes-validate knows: the manifests must be valid for both.
K8S_VERSIONS = sorted({"1.31.0", kv.latest_version()}, key=lambda v: tuple(int(p) for p in v.split(".")))

# Custom resources have no schema in kubernetes-validate; these kinds alone are checked structurally
# (test_prometheus_operator_component). Any other kind without a schema is a failure.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

POD_LABELS = {"app.kubernetes.io/name": "watcher"}
SHUTDOWN_TIMEOUT_DEFAULT = 30.0  # the contract's default of WATCHER_SHUTDOWN_TIMEOUT


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def all_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The one object that runs the pods: the base's Deployment, or the StatefulSet of an overlay."""
    found = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    assert len(found) == 1, f"expected one Deployment or StatefulSet, found {[o['kind'] for o in found]}"
    return found[0]


def settings_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The WATCHER_* variables that the workload's envFrom ConfigMap gives the container."""
    container = workload(objects)["spec"]["template"]["spec"]["containers"][0]
    names = [src["configMapRef"]["name"] for src in container.get("envFrom", []) if "configMapRef" in src]
    assert len(names) == 1, "the settings must come from one ConfigMap through envFrom"
    maps = {o["metadata"]["name"]: o for o in all_of(objects, "ConfigMap")}
    assert names[0] in maps, f"envFrom names ConfigMap {names[0]}, which is not rendered"
    data = maps[names[0]].get("data", {})
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = workload(objects)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def watcher_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == ["watcher"]
    container = containers[0]
    assert isinstance(container, dict)
    return container


def env_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The container's `env` entries by name (the variables that do not come from the ConfigMap)."""
    return {e["name"]: e for e in watcher_container(objects).get("env", [])}


def storage_of(objects: list[dict[str, Any]], path: str) -> tuple[str, tuple[str, ...], bool]:
    """Where `path` lives: (volume name, its access modes, whether each pod has a claim of its own).

    The volume is the one mounted at `path` or at its nearest parent; a claim of its own per pod is a
    StatefulSet's volumeClaimTemplate, a shared one a PersistentVolumeClaim that is rendered.
    """
    mounts = {m["mountPath"]: m["name"] for m in watcher_container(objects)["volumeMounts"]}
    holders = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    assert holders, f"{path} is on no mounted volume (the container's root filesystem is read-only)"
    name = mounts[max(holders, key=len)]
    templates = {t["metadata"]["name"]: t for t in workload(objects)["spec"].get("volumeClaimTemplates", [])}
    if name in templates:
        return name, tuple(templates[name]["spec"]["accessModes"]), True
    volume = {v["name"]: v for v in pod_spec(objects)["volumes"]}[name]
    claim = volume["persistentVolumeClaim"]["claimName"]
    claims = {o["metadata"]["name"]: o for o in all_of(objects, "PersistentVolumeClaim")}
    assert claim in claims, f"{path} mounts claim {claim}, which is not rendered"
    return name, tuple(claims[claim]["spec"]["accessModes"]), False


# ---------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_rendered_objects_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], variant: str, k8s_version: str
) -> None:
    checked = 0
    for obj in rendered[variant]:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kv.validate(obj, k8s_version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{variant}: {name} is invalid for Kubernetes {k8s_version}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            pytest.fail(f"{variant}: {name}: {exc.message} (only {sorted(CRD_KINDS)} may lack a schema)")
        checked += 1
    assert checked >= 6


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # Guards the check above: a misspelt field must not pass as "valid".
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_base_holds_the_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered["base"] if o["kind"] != "ConfigMap")
    assert kinds == [
        ("Deployment", "watcher"),
        ("NetworkPolicy", "watcher"),
        ("PersistentVolumeClaim", "watcher-inbox"),
        ("PersistentVolumeClaim", "watcher-outbox"),
        ("PersistentVolumeClaim", "watcher-state"),
        ("Service", "watcher"),
    ]
    assert len(all_of(rendered["base"], "ConfigMap")) == 1


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_object_is_labelled_and_no_secret_is_shipped(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    for obj in rendered[variant]:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "watcher", f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["kind"] != "Secret", "manifests must never hold the API token"
        assert "namespace" not in obj["metadata"], "the base leaves the namespace to kubectl -n or an overlay"


# ------------------------------------------------------------------------------------------ deployment


def test_deployment_runs_one_replica_with_recreate(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = one(rendered["base"], "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "RWO volumes: the old pod must go before the new one"
    assert spec["selector"]["matchLabels"] == POD_LABELS
    assert spec["template"]["metadata"]["labels"].items() >= POD_LABELS.items()


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_grace_period_outlasts_the_shutdown_timeout(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    objects = rendered[variant]
    timeout = float(settings_of(objects).get("WATCHER_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_DEFAULT))
    assert timeout == 30
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    # The whole stop is bounded by WATCHER_SHUTDOWN_TIMEOUT + STOP_MARGIN (tests/integration/test_lifecycle.py).
    bound = timeout + STOP_MARGIN
    assert grace > bound, (
        f"grace {grace}s must exceed the stop bound WATCHER_SHUTDOWN_TIMEOUT + {STOP_MARGIN:g} = {bound:g}s"
    )
    assert grace == 45


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_pod_meets_the_restricted_pod_security_standard(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    spec = pod_spec(rendered[variant])
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert isinstance(pod_sc[key], int), key
        assert pod_sc[key] > 0, key
    assert pod_sc["runAsUser"] == 10001, "the image's numeric user"
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag, False), flag
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("enableServiceLinks") is False, "service links would inject WATCHER_* variables"

    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert sc.get("privileged", False) is False
        assert sc.get("runAsNonRoot", True) is True
        assert sc.get("seccompProfile", {"type": "RuntimeDefault"})["type"] in {"RuntimeDefault", "Localhost"}
        assert "hostPort" not in str(container.get("ports", []))

    restricted_volume_types = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"
    }  # fmt: skip
    for volume in spec["volumes"]:
        types = set(volume) - {"name"}
        assert types <= restricted_volume_types, f"volume {volume['name']}: {types}"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_probes_use_the_health_endpoints_on_the_http_port(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    container = watcher_container(rendered[variant])
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["http"]["containerPort"] == 8080
    assert ports["http"]["protocol"] == "TCP"

    def endpoint(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        port = get["port"]
        number = ports[port]["containerPort"] if isinstance(port, str) else port
        return get["path"], number

    assert endpoint("livenessProbe") == ("/health/live", 8080)
    assert endpoint("readinessProbe") == ("/health/ready", 8080)
    assert endpoint("startupProbe") == ("/health/live", 8080)
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 600, f"the startup probe allows only {budget}s for the start-up walk of a large inbox"


# Where each folder lives, per variant: (access mode, a claim per pod). The base: three ReadWriteOnce claims
# (the failed dir is <state dir>/failed). Cluster: inbox, outbox and failed dir on one ReadWriteMany claim
# that every pod mounts, the state on a claim per pod. Sharded: everything on claims of each pod's own.
STORAGE = {
    "base": {"inbox": ("ReadWriteOnce", False), "outbox": ("ReadWriteOnce", False), "state": ("ReadWriteOnce", False)},
    "cluster": {"inbox": ("ReadWriteMany", False), "outbox": ("ReadWriteMany", False),
                "failed": ("ReadWriteMany", False), "state": ("ReadWriteOnce", True)},
    "sharded": {"inbox": ("ReadWriteOnce", True), "outbox": ("ReadWriteOnce", True),
                "failed": ("ReadWriteOnce", True), "state": ("ReadWriteOnce", True)},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(STORAGE))
def test_container_settings_volumes_and_resources(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    objects = rendered[variant]
    container = watcher_container(objects)
    settings = settings_of(objects)

    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section

    folders = {
        "inbox": settings["WATCHER_INBOX"],
        "outbox": settings["WATCHER_OUTBOX"],
        "state": settings["WATCHER_STATE_DIR"],
        "failed": settings.get("WATCHER_FAILED_DIR", settings["WATCHER_STATE_DIR"] + "/failed"),
    }
    for folder, (mode, per_pod) in STORAGE[variant].items():
        _, modes, own = storage_of(objects, folders[folder])
        assert (modes, own) == ((mode,), per_pod), f"{variant}: {folder} ({folders[folder]})"
    if variant != "base":  # one volume for inbox and outbox: a delivery links the file, never copies it
        assert storage_of(objects, folders["inbox"])[0] == storage_of(objects, folders["outbox"])[0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root filesystem needs a writable /tmp"

    assert settings["WATCHER_HTTP_HOST"] == "0.0.0.0"
    assert settings["WATCHER_HTTP_PORT"] == "8080"
    assert "WATCHER_API_TOKEN" not in settings


def test_settings_are_known_and_accepted_names(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from watcher.config import Settings

    known = {"WATCHER_" + name.upper() for name in Settings.model_fields}
    for variant in VARIANT_NAMES:
        unknown = set(settings_of(rendered[variant])) - known
        assert not unknown, f"{variant}: the ConfigMap sets unknown settings {sorted(unknown)}"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_api_token_comes_from_an_optional_secret(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    env = env_of(rendered[variant])
    ref = env["WATCHER_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "watcher-api-token", "key": "token", "optional": True}
    assert "value" not in env["WATCHER_API_TOKEN"]


# What the cluster's Secret and the downward API give the container, for `watcher check-config`.
FROM_THE_POD = {
    ("secretKeyRef", "watcher-jobstore"): "postgresql://watcher:secret@db.example:5432/watcher",
    ("fieldRef", "metadata.name"): "watcher-0",
}


@pytest.mark.parametrize("variant", ["base", "network-filesystem", "cluster", "sharded"])
def test_watcher_accepts_the_rendered_settings(
    rendered: dict[str, list[dict[str, Any]]], variant: str, tmp_path: Path
) -> None:
    # The ConfigMap and env as the container sees them, with /data moved under tmp_path, through
    # `watcher check-config`. The API token's Secret is optional, and left out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    for key, value in settings_of(rendered[variant]).items():
        env[key] = str(tmp_path) + value if value.startswith("/data/") else value
    for name, entry in env_of(rendered[variant]).items():
        source = entry["valueFrom"]
        ref = source.get("secretKeyRef", {}).get("name") or source.get("fieldRef", {}).get("fieldPath")
        stand_in = (str(next(iter(source))), str(ref))
        if stand_in in FROM_THE_POD:
            env[name] = FROM_THE_POD[stand_in]
        else:
            assert source.get("secretKeyRef", {}).get("optional"), f"{variant}: {name} has no stand-in here"
    (tmp_path / "data").mkdir()  # the image has /data, where the volumes are mounted
    for mount in watcher_container(rendered[variant])["volumeMounts"]:
        if mount["mountPath"].startswith("/data/"):
            (tmp_path / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, f"watcher check-config rejected the {variant} settings:\n{proc.stderr}"


# --------------------------------------------------------------------------------- service and network


def test_service_exposes_the_named_http_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    service = one(rendered["base"], "Service")
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


def test_network_policy_admits_only_tcp_8080(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = one(rendered["base"], "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == POD_LABELS
    assert "Ingress" in policy["policyTypes"]
    rules = policy["ingress"]
    assert rules, "an empty ingress list would admit nothing, not even probes from Prometheus"
    for rule in rules:
        assert rule.get("ports") == [{"protocol": "TCP", "port": 8080}], rule


# ------------------------------------------------------------------------------------------- overlays


def test_network_filesystem_overlay_polls_and_settles_longer(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = settings_of(rendered["base"])
    nfs = settings_of(rendered["network-filesystem"])
    assert nfs["WATCHER_OBSERVER"] == "polling"
    assert float(nfs["WATCHER_SETTLE_SECONDS"]) == 10
    changed = {k for k in base.keys() | nfs.keys() if base.get(k) != nfs.get(k)}
    assert changed == {"WATCHER_OBSERVER", "WATCHER_SETTLE_SECONDS"}
    # a changed ConfigMap gets a new hashed name, and the Deployment follows it
    base_name = one(rendered["base"], "ConfigMap")["metadata"]["name"]
    assert one(rendered["network-filesystem"], "ConfigMap")["metadata"]["name"] != base_name


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only: these manifests use nothing else) selects `labels`."""
    assert set(selector) == {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("variant", REPLICATED)
def test_replicated_overlays_run_a_statefulset_of_three(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objects = rendered[variant]
    assert not all_of(objects, "Deployment"), "the StatefulSet replaces the base's Deployment"
    sts = one(objects, "StatefulSet")
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert selects(spec["selector"], labels)
    assert spec["podManagementPolicy"] == "Parallel", "replicas are peers: no start order"
    assert spec.get("updateStrategy", {"type": "RollingUpdate"})["type"] == "RollingUpdate"

    # The headless Service that governs it, and still one Service with the port `http` for clients
    # and the ServiceMonitor (which selects Services by label and scrapes the port named `http`).
    services = {o["metadata"]["name"]: o for o in all_of(objects, "Service")}
    governing = services[spec["serviceName"]]["spec"]
    assert governing["clusterIP"] == "None"
    assert governing["selector"].items() <= labels.items()
    with_http = [n for n, svc in services.items() if "http" in {p["name"] for p in svc["spec"]["ports"]}]
    assert with_http == ["watcher"], "a second Service with a port `http` would be scraped twice"

    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert selects(budget["selector"], labels), "the PodDisruptionBudget must select the pods"
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget

    spread = {c["topologyKey"]: c for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    across_nodes = spread["kubernetes.io/hostname"]
    assert selects(across_nodes["labelSelector"], labels)
    assert across_nodes["maxSkew"] == 1 and across_nodes["whenUnsatisfiable"] == "DoNotSchedule"
    assert across_nodes["nodeTaintsPolicy"] == "Honor", "a cordoned node must not block a reschedule"

    # Each pod: its own state (the job database of the sharded pods; each replica's own in a cluster).
    templates = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    assert templates["state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert settings_of(objects)["WATCHER_STATE_DIR"] == "/data/state"
    for template in templates.values():
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "watcher"


def test_cluster_overlay_shares_one_volume_and_postgresql(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cluster"]
    settings = settings_of(objects)
    assert settings["WATCHER_CLUSTER"] == "true"
    assert "WATCHER_JOBSTORE_URL" not in settings, "the PostgreSQL URL holds a password: a Secret, never a ConfigMap"
    assert "WATCHER_REPLICA_ID" not in settings

    env = env_of(objects)
    url = env["WATCHER_JOBSTORE_URL"]
    assert "value" not in url
    assert url["valueFrom"]["secretKeyRef"]["name"] == "watcher-jobstore"
    assert url["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert not url["valueFrom"]["secretKeyRef"].get("optional", False), "cluster mode cannot run without it"
    replica = env["WATCHER_REPLICA_ID"]
    assert replica["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, "the pod's name is its id"

    # Inbox, outbox and failed dir on one ReadWriteMany claim that every pod mounts.
    shared = {storage_of(objects, settings[key]) for key in ("WATCHER_INBOX", "WATCHER_OUTBOX", "WATCHER_FAILED_DIR")}
    assert len(shared) == 1
    _, modes, per_pod = next(iter(shared))
    assert modes == ("ReadWriteMany",) and not per_pod
    assert [o["metadata"]["name"] for o in all_of(objects, "PersistentVolumeClaim")] == ["watcher-files"]


def test_sharded_overlay_gives_each_pod_its_own_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["sharded"]
    settings = settings_of(objects)
    env = env_of(objects)
    assert settings.get("WATCHER_CLUSTER", "false") == "false"
    assert "WATCHER_CLUSTER" not in env and "WATCHER_JOBSTORE_URL" not in env and "WATCHER_JOBSTORE_URL" not in settings
    assert not all_of(objects, "PersistentVolumeClaim"), "no claim is shared: every one is a pod's own"
    templates = workload(objects)["spec"]["volumeClaimTemplates"]
    assert sorted(t["metadata"]["name"] for t in templates) == ["files", "state"]
    for template in templates:
        assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    files = {storage_of(objects, settings[key]) for key in ("WATCHER_INBOX", "WATCHER_OUTBOX", "WATCHER_FAILED_DIR")}
    assert files == {("files", ("ReadWriteOnce",), True)}


def test_prometheus_operator_component(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["with-prometheus-operator"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert names >= {(kind, name) for kind, name in ((o["kind"], o["metadata"]["name"]) for o in rendered["base"])}

    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor must select the Service"
    endpoints = monitor["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")]
    assert endpoints[0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert not endpoints[0].get("honorLabels", False), "honor_labels is not needed: the service exports no target label"

    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text(encoding="utf-8"))
    assert rule["spec"] == expected, "the PrometheusRule must carry exactly the rules of deploy/prometheus/rules.yml"


def test_prometheusrule_file_is_in_sync_with_rules_yml() -> None:
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "tools" / "sync-prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
