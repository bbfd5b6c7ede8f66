"""Every metric that the alert rules, recording rules and dashboard use is exposed by a running watcher.

A rule or panel that names a metric the service does not expose never fires and never draws: nothing
else would notice. The service runs as a subprocess (`python -m watcher run`), /metrics is scraped once,
and every metric name in the PromQL of deploy/prometheus/rules.yml and deploy/grafana/watcher-dashboard.json
must be among the exposed samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import WatcherProcess

pytestmark = pytest.mark.deploy

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

# Labels that Prometheus attaches to every scraped series (target labels), not the service.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "node"}
# Metrics that Prometheus makes itself.
SYNTHETIC_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}

# Sample names a metric family can expose, by type, for families declared without samples yet
# (a labelled metric such as watcher_job_runs_total has no sample until its first label set is used).
FAMILY_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

_PROMQL_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<braces>\{[^{}]*\})
    | (?P<brackets>\[[^\[\]]*\])
    | (?P<number>\d[\w.]*)
    | (?P<ident>[A-Za-z_:][\w:]*)
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)\"""")
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


@dataclass
class Selector:
    """One vector selector of a PromQL expression: the metric name and its label matchers."""

    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)
    source: str = ""


def selectors(expr: str, source: str) -> list[Selector]:
    """The vector selectors of a PromQL expression (a small tokenizer, enough for rules and panels)."""
    tokens = [(m.lastgroup or "", m.group()) for m in _PROMQL_TOKEN.finditer(expr)]
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _GROUPING:
            i += 1
            if nxt == ("other", "("):  # skip the label list: by (namespace, job, le)
                while i < len(tokens) and tokens[i] != ("other", ")"):
                    i += 1
        elif kind == "ident":
            if nxt != ("other", "(") and text.lower() not in _KEYWORDS | _AGGREGATIONS:
                matchers = []
                if nxt[0] == "braces":
                    matchers = _MATCHER.findall(nxt[1])
                    i += 1  # the braces belong to this name
                found.append(Selector(text, matchers, source))
        elif kind == "braces":
            matchers = _MATCHER.findall(text)  # {__name__="..."} without a name in front
            names = [value for label, op, value in matchers if label == "__name__" and op == "="]
            if names:
                found.append(Selector(names[0], matchers, source))
        i += 1
    return found


def rule_selectors(rules: dict[str, Any]) -> tuple[list[Selector], set[str]]:
    """Selectors of every alerting and recording rule expression, and the names the rules record."""
    found: list[Selector] = []
    recorded: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            found.extend(selectors(str(rule["expr"]), f"rules.yml {name}"))
            if "record" in rule:
                recorded.add(rule["record"])
    return found, recorded


def dashboard_selectors(dashboard: dict[str, Any]) -> list[Selector]:
    """Selectors of every panel query and of the template variables' label_values() queries."""
    found: list[Selector] = []
    panels = list(dashboard["panels"])
    panels += [p for row in dashboard["panels"] for p in row.get("panels", [])]
    for panel in panels:
        for target in panel.get("targets", []):
            found.extend(selectors(str(target["expr"]), f"dashboard panel {panel['title']!r}"))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            if match:
                found.extend(selectors(match.group(1), f"dashboard variable {variable['name']}"))
    return found


@dataclass
class Scrape:
    """What /metrics exposed: sample names, names declared by families, and label sets per name."""

    samples: dict[str, list[dict[str, str]]]
    declared: set[str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[str, list[dict[str, str]]] = {}
        declared: set[str] = set()
        for family in text_string_to_metric_families(text):
            for suffix in FAMILY_SAMPLE_SUFFIXES.get(family.type, ("",)):
                declared.add(family.name + suffix)
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(dict(sample.labels))
        return cls(samples, declared)

    def exposes(self, name: str) -> bool:
        return name in self.samples or name in self.declared


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """Start `python -m watcher run`, scrape /metrics once it answers, stop it with SIGTERM."""
    root = tmp_path_factory.mktemp("metrics-consistency")
    env = {"WATCHER_HTTP_HOST": "127.0.0.1", "WATCHER_LOG_FORMAT": "json"}
    with WatcherProcess(root, env) as proc:
        proc.inbox.mkdir()
        proc.outbox.mkdir()
        proc.start("live", timeout=START_TIMEOUT)
        response = proc.http.get("/metrics")
        assert response.status_code == 200, f"GET /metrics answered {response.status_code}:\n{proc.log_tail()}"
        code = proc.terminate(STOP_TIMEOUT)
        assert code == 0, f"watcher exited with {code} after SIGTERM:\n{proc.log_tail()}"
        return Scrape.parse(response.text)


def check(found: list[Selector], scrape: Scrape) -> list[str]:
    """Problems: names that /metrics does not expose, and labels or values that no exposed sample has."""
    problems: list[str] = []
    for sel in found:
        if sel.metric in SYNTHETIC_METRICS or ":" in sel.metric:
            continue
        if not scrape.exposes(sel.metric):
            problems.append(f"{sel.source}: {sel.metric} is not exposed by /metrics")
            continue
        label_sets = scrape.samples.get(sel.metric, [])
        if not label_sets:
            continue  # declared, no label set used yet: nothing to compare labels with
        for label, op, value in sel.matchers:
            if label in TARGET_LABELS or label == "__name__":
                continue
            if not any(label in labels for labels in label_sets):
                problems.append(f"{sel.source}: {sel.metric} has no label {label!r}")
            elif op == "=" and "$" not in value and not any(labels.get(label) == value for labels in label_sets):
                problems.append(f"{sel.source}: {sel.metric} never has {label}={value!r}")
    return problems


def test_selector_parsing() -> None:
    # The tokenizer must find metrics and only metrics: not functions, keywords or grouping labels.
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{job=~"$job", x="y"}[$__rate_interval])))'
        ' / on (job) group_left sum(b_total) or absent(up{job="w"}) and time() - c > 5 unless {__name__="d"}'
    )
    found = selectors(expr, "test")
    assert [s.metric for s in found] == ["a_bucket", "b_total", "up", "c", "d"]
    assert found[0].matchers == [("job", "=~", "$job"), ("x", "=", "y")]


def test_check_reports_unknown_names_labels_and_values() -> None:
    exposition = (
        "# HELP w_total Help.\n# TYPE w_total counter\n"
        'w_total{source="event"} 1.0\n'
        "# HELP l_total Labelled, no sample yet.\n# TYPE l_total counter\n"
    )
    scrape = Scrape.parse(exposition)
    found = selectors(
        'w_total{source="event", job="x"} + l_total{outcome="error"} + w_total{source="rescan"}'
        ' + w_total{kind="a"} + missing_total + up + a:recorded:rate5m',
        "t",
    )
    assert check(found, scrape) == [
        "t: w_total never has source='rescan'",
        "t: w_total has no label 'kind'",
        "t: missing_total is not exposed by /metrics",
    ]


def test_rules_use_only_exposed_metrics(scrape: Scrape, rules: dict[str, Any]) -> None:
    found, recorded = rule_selectors(rules)
    names = {s.metric for s in found}
    assert {"watcher_files_delivered_total", "watcher_delivery_latency_seconds_bucket"} <= names, "recording inputs"
    assert {n for n in names if ":" in n} <= recorded, "a rule uses a recorded series that no rule records"
    problems = check(found, scrape)
    assert not problems, "\n".join(problems)


def test_dashboard_uses_only_exposed_metrics(scrape: Scrape, dashboard: dict[str, Any]) -> None:
    found = dashboard_selectors(dashboard)
    assert len(found) > 20
    problems = check(found, scrape)
    assert not problems, "\n".join(problems)


def test_scrape_has_the_service_metrics(scrape: Scrape) -> None:
    assert scrape.samples["watcher_build_info"][0]["version"]
    assert {"event", "rescan", "startup"} <= {
        labels["source"] for labels in scrape.samples["watcher_files_discovered_total"]
    }
    assert "process_resident_memory_bytes" in scrape.samples
    # What /health/ready says is a metric too: one series per check, and the overall verdict.
    checks = {labels["check"] for labels in scrape.samples["watcher_ready_check"]}
    assert {"observer", "inbox", "outbox", "state_dir", "schedule_store", "delivery"} <= checks
    assert scrape.samples["watcher_ready"] == [{}]
    assert "watcher_log_lines_dropped_total" in scrape.samples


def test_scrape_has_no_target_label_and_no_created_series(scrape: Scrape) -> None:
    # A service label named like a target label (`job`, `instance`) is renamed to exported_* by
    # Prometheus, or overwrites the target's with honor_labels.
    clashes = {
        (name, label)
        for name, label_sets in scrape.samples.items()
        for labels in label_sets
        for label in labels
        if label in TARGET_LABELS
    }
    assert not clashes
    assert not [name for name in scrape.samples if name.endswith("_created")]
