#!/usr/bin/env python3
"""Write the PrometheusRule of the prometheus-operator component from deploy/prometheus/rules.yml.

A PrometheusRule's spec is a Prometheus rules file, so the text of rules.yml is embedded as it is
(comments and all) under `spec:`. Run after every change of rules.yml:

    python3 deploy/tools/sync-prometheusrule.py          # rewrite the PrometheusRule
    python3 deploy/tools/sync-prometheusrule.py --check  # exit 1 if it is out of date (run by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
RULES = DEPLOY / "prometheus" / "rules.yml"
TARGET = DEPLOY / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/tools/sync-prometheusrule.py: do not edit here.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: watcher
  labels:
    app.kubernetes.io/name: watcher
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest whose spec is the rules file's text, indented under `spec:`."""
    body = "".join(f"  {line}" if line.strip() else line for line in rules_text.splitlines(keepends=True))
    if not body.endswith("\n"):
        body += "\n"
    return HEADER + body


def main(argv: list[str]) -> int:
    """Rewrite the target, or with --check report whether it matches rules.yml."""
    wanted = render(RULES.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != wanted:
            print(f"{TARGET} is out of date: run python3 deploy/tools/sync-prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
