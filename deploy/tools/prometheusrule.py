"""Writes deploy/k8s/base/common/prometheusrule.yaml from deploy/prometheus/alerts.yml.

One source for the alert rules: Prometheus loads alerts.yml directly (docker compose, make run), the
Prometheus Operator loads the PrometheusRule made from it. `python deploy/tools/prometheusrule.py --check`
exits 1 when the committed PrometheusRule differs from what alerts.yml gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = ROOT / "deploy" / "k8s" / "base" / "common" / "prometheusrule.yaml"
HEADER = "# Generated from deploy/prometheus/alerts.yml by `make prometheusrule`: edit that file instead.\n"


def prometheus_rule(alerts: dict) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "synergy", "labels": {"app.kubernetes.io/name": "synergy-alerts"}},
        "spec": {"groups": alerts["groups"]},
    }


def _literal(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _literal)


def render() -> str:
    alerts = yaml.safe_load(ALERTS.read_text())
    return HEADER + yaml.dump(prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not RULE.exists() or RULE.read_text() != text:
            print(f"{RULE} is out of date: run `make prometheusrule`", file=sys.stderr)
            return 1
        return 0
    RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
