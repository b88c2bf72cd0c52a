"""The Prometheus alert rules (dashboards/alerts.yml): valid, unit-tested by promtool, and documented."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.metric_families import Kind, PairFamily

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "alerts.yml"
RULE_TESTS = DASHBOARDS / "alerts_test.yml"

# DESIGN.md "Contract" metric families: the pair families of the family table, and the others.
CONTRACT_METRICS = frozenset(f.metric_name + ("_total" if f.row.kind is Kind.COUNTER else "") for f in PairFamily) | \
    frozenset(f"mailflow_probe_{name}" for name in (
        "mailbox_up", "mailbox_errors_total", "build_info", "config_last_reload_successful", "scheduler_lag_seconds",
        "mailbox_watcher_up"))
EXPECTED_ALERTS = {
    "MailflowRouteDown", "MailflowSmartHostFailing", "MailflowDeliverySlow", "MailflowMailboxUnobservable",
    "MailflowProbeStale", "MailflowCertificateExpiring", "MailflowLost", "MailflowConnectorSourceSide",
    "MailflowConnectorFailingOver", "MailflowConnectorTargetSide",
}
# Alerts whose cause is told by a reason label; their runbook must say which one to read.
REASON_LABEL_ALERTS = {
    "MailflowRouteDown": "mailflow_probe_send_failures_total",
    "MailflowSmartHostFailing": "mailflow_probe_send_failures_total",
    "MailflowMailboxUnobservable": "mailflow_probe_mailbox_errors_total",
    "MailflowConnectorSourceSide": "mailflow_probe_send_failures_total",
    "MailflowConnectorFailingOver": "mailflow_probe_send_failures_total",
    "MailflowConnectorTargetSide": "mailflow_probe_send_failures_total",
}


def promtool() -> str:
    """Return promtool's path, or fail saying how to get it."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool not found: run scripts/setup (it installs Debian's prometheus package)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in dashboards/ and return its result."""
    return subprocess.run([promtool(), *args], cwd=DASHBOARDS, capture_output=True, text=True, timeout=60,
                          check=False)


def rules() -> list[dict[str, Any]]:
    """Return every alerting rule of alerts.yml."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def metric_families(expr: str) -> set[str]:
    """Return the mailflow_probe_ metric families an expression names (histogram suffixes stripped)."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"\bmailflow_probe_\w+", expr)}


def test_rule_file_passes_promtool_check() -> None:
    """promtool accepts alerts.yml: every expression parses and every template renders."""
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    """Every promtool unit test of alerts_test.yml passes: alerts fire, and stay quiet, when they should."""
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_are_the_expected_alerts_with_severity_and_annotations() -> None:
    """Each expected alert exists once, with a severity label and a summary, description and runbook."""
    found = [rule["alert"] for rule in rules()]
    assert sorted(found) == sorted(EXPECTED_ALERTS)
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def test_runbooks_name_the_reason_label_to_read() -> None:
    """The runbook of a failure alert names the reason label of the metric that explains it."""
    by_name = {rule["alert"]: rule for rule in rules()}
    for alert, metric in REASON_LABEL_ALERTS.items():
        runbook = by_name[alert]["annotations"]["runbook"]
        assert f"reason label of {metric}" in runbook, alert


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """alerts_test.yml has, for every alert, an evaluation that expects it and one that expects silence."""
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_alert_expressions_name_only_contract_metrics() -> None:
    """Every metric an alert reads is one the daemon's contract (DESIGN.md) promises."""
    for rule in rules():
        names = metric_families(rule["expr"])
        assert names, rule["alert"]
        assert names <= CONTRACT_METRICS, (rule["alert"], names - CONTRACT_METRICS)


def test_header_documents_every_threshold() -> None:
    """The comment at the top of alerts.yml names every alert, so its thresholds are documented."""
    header = "".join(line for line in RULES.read_text(encoding="utf-8").splitlines(keepends=True)
                     if line.startswith("#"))
    for alert in EXPECTED_ALERTS:
        assert alert in header, alert


def test_the_runbook_page_is_generated_from_the_rules_and_every_url_points_at_its_section() -> None:
    """docs/runbook.md is what dashboards/runbook.py makes of alerts.yml; each runbook_url is its alert's section."""
    result = subprocess.run([sys.executable, str(DASHBOARDS / "runbook.py"), "--check"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    page = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"docs/runbook.md#{rule['alert'].lower()}"), rule["alert"]
        assert f"\n## {rule['alert']}\n" in page


def test_the_runbook_check_fails_on_a_url_that_points_elsewhere() -> None:
    """The check can fail: a runbook_url naming another alert's section is reported, by alert."""
    spec = importlib.util.spec_from_file_location("runbook", DASHBOARDS / "runbook.py")
    assert spec is not None
    assert spec.loader is not None
    runbook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runbook)
    text = RULES.read_text(encoding="utf-8").replace("#mailflowlost\"", "#mailflowroutedown\"")
    assert runbook.url_problems(text) == [
        f"MailflowLost: runbook_url is '{runbook.RUNBOOK_BASE}#mailflowroutedown', "
        f"expected '{runbook.RUNBOOK_BASE}#mailflowlost'"]
