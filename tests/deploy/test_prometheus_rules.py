"""deploy/prometheus: promtool checks and tests the rules; every alert is labelled and has a runbook."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RUNBOOK_BASE = "https://github.com/watcher/watcher/blob/main/docs/operations.md#"
# docs/operations.md is where runbook_url points.
RUNBOOK_DOCS = [REPO / "docs" / "operations.md"]

EXPECTED_ALERTS = {
    "WatcherDown",
    "WatcherNotReady",
    "WatcherFilesFailing",
    "WatcherOldestPendingTooOld",
    "WatcherEventsMissed",
    "WatcherEventsDropped",
    "WatcherObserverDown",
    "WatcherObserverPolling",
    "WatcherJobFailing",
    "WatcherJobStale",
    "WatcherClusterNoLeader",
    "WatcherClusterClaimTooOld",
}


def all_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in all_rules(rules) if "alert" in rule}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_anchors() -> set[str]:
    anchors: set[str] = set()
    for doc in RUNBOOK_DOCS:
        if doc.exists():
            for line in doc.read_text(encoding="utf-8").splitlines():
                match = re.match(r"#{1,6}\s+(.*)", line)
                if match:
                    anchors.add(github_anchor(match.group(1)))
    return anchors


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_rules(promtool_bin: str) -> None:
    proc = run_promtool(promtool_bin, "check", "rules", "rules.yml")
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}{proc.stderr}"


def test_promtool_test_rules(promtool_bin: str) -> None:
    proc = run_promtool(promtool_bin, "test", "rules", "rules_test.yml")
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}"


def test_the_expected_alerts_exist(rules: dict[str, Any]) -> None:
    assert set(alerts(rules)) == EXPECTED_ALERTS


def test_every_alert_has_severity_summary_description_and_runbook(rules: dict[str, Any]) -> None:
    for name, rule in alerts(rules).items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}runbook-{name.lower()}", name


def test_every_runbook_anchor_has_a_section() -> None:
    # The anchors of the alerts, the dashboard's link and the docs' own links must all exist.
    anchors = doc_anchors()
    assert anchors, f"none of {[str(d) for d in RUNBOOK_DOCS]} exists"
    wanted = {f"runbook-{name.lower()}" for name in EXPECTED_ALERTS} | {"runbooks"}
    for doc in RUNBOOK_DOCS:
        if doc.exists():
            wanted |= set(re.findall(r"\]\(#([\w-]+)\)", doc.read_text(encoding="utf-8")))
    missing = sorted(wanted - anchors)
    assert not missing, f"no heading gives the anchors {missing}"


def test_recording_rules_follow_the_naming_convention(rules: dict[str, Any]) -> None:
    records = [rule["record"] for rule in all_rules(rules) if "record" in rule]
    assert set(records) == {
        "watcher:files_delivered:rate5m",
        "watcher:bytes_delivered:rate5m",
        "watcher:delivery_latency_seconds:p50_5m",
        "watcher:delivery_latency_seconds:p99_5m",
    }


def test_every_alert_has_a_firing_and_a_silent_unit_test(rules: dict[str, Any]) -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["rules.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alerts(rules))
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"
    recorded = {rule["record"] for rule in all_rules(rules) if "record" in rule}
    tested = {check["expr"] for case in tests["tests"] for check in case.get("promql_expr_test", [])}
    assert recorded <= tested, f"recording rules without a test: {sorted(recorded - tested)}"
