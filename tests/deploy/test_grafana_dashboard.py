"""deploy/grafana/watcher-dashboard.json: stable uid, data source variable, the panels the issue asks for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.deploy

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables, replaced by plain values so that promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels of a collapsed row
    return found


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in panels(dashboard) for t in p.get("targets", [])]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [str(t["expr"]) for t in targets(dashboard)]


def test_uid_title_and_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "watcher-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id would clash on import"


def test_datasource_is_a_prometheus_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == DS_REF, panel["title"]
            assert panel["targets"], panel["title"]
    for target in targets(dashboard):
        assert target["datasource"] == DS_REF
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DS_REF, variable["name"]


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24, panel["title"]
    for panel in panels(dashboard):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_required_views_are_there(dashboard: dict[str, Any]) -> None:
    text = "\n".join(exprs(dashboard))
    for metric in (
        "watcher_files_delivered_total",  # deliveries/s
        "watcher_delivery_latency_seconds_bucket",  # latency from the histogram
        "watcher_queue_depth",
        "watcher_inflight_transfers",
        "watcher_oldest_pending_seconds",
        "watcher_files_failed_total",
        "watcher_files_duplicate_total",
        "watcher_files_discovered_total",  # events missed: rescan discoveries
        "watcher_events_dropped_total",
        "watcher_job_runs_total",
        "watcher_observer_up",
        "watcher_observer_polling",
        "watcher_delivery_paused",
    ):
        assert re.search(rf"\b{metric}\b", text), f"no panel shows {metric}"
    assert 'source="rescan"' in text
    latency = [e for e in exprs(dashboard) if "watcher_delivery_latency_seconds_bucket" in e]
    assert any(e.startswith("histogram_quantile(0.5,") for e in latency), "p50 latency"
    assert any(e.startswith("histogram_quantile(0.99,") for e in latency), "p99 latency"
    assert any("outcome" in e for e in exprs(dashboard) if "watcher_job_runs_total" in e), "job runs by outcome"


def test_queries_parse_as_promql(dashboard: dict[str, Any], promtool_bin: str, tmp_path: Path) -> None:
    # promtool has no offline query parser, but it parses every expression of a rules file.
    queries = exprs(dashboard) + [
        re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"])
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    rules = []
    for index, query in enumerate(queries):
        for var, value in GRAFANA_VARS.items():
            query = query.replace(var, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        rules.append({"record": f"dashboard:query:{index}", "expr": query})
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run(
        [promtool_bin, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"a dashboard query is not valid PromQL:\n{proc.stdout}{proc.stderr}"
