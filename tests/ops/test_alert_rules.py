"""The alert rules load in Prometheus (`promtool check rules`) and each fires exactly when its unit test in
deploy/prometheus/tests says (`promtool test rules`)."""

from __future__ import annotations

import subprocess

from tests.ops.support import ROOT, tool

PROMETHEUS = ROOT / "deploy" / "prometheus"


def test_the_alert_rules_are_valid() -> None:
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 13 rules found" in out.stdout


def test_every_alert_passes_its_unit_tests() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    out = subprocess.run(
        [tool("promtool"), "test", "rules", *map(str, tests)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    import yaml

    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts == fired
    assert len(alerts) == 10


def test_a_broken_expectation_fails_promtool(tmp_path) -> None:
    """promtool really compares: a test that expects the wrong severity fails."""
    original = (PROMETHEUS / "tests" / "alerts_test.yml").read_text()
    broken = tmp_path / "broken_test.yml"
    broken.write_text(
        original.replace("../alerts.yml", str(PROMETHEUS / "alerts.yml")).replace(
            "{workspace: site-a, severity: critical}", "{workspace: site-a, severity: warning}"
        )
    )
    out = subprocess.run([tool("promtool"), "test", "rules", str(broken)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "SynergyCustomerIoWorkspacePaused" in out.stdout + out.stderr


def test_the_kubernetes_prometheus_rule_is_generated_from_alerts_yml() -> None:
    out = subprocess.run(
        ["python", str(ROOT / "deploy" / "tools" / "prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_every_alert_links_to_its_section_of_the_runbook() -> None:
    import re

    import yaml

    headings = re.findall(r"^### (Synergy\w+)$", (ROOT / "docs" / "operations.md").read_text(), re.M)
    rules = [
        rule
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert [r["alert"] for r in rules] == headings
    for rule in rules:
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
