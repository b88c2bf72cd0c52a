"""The Grafana dashboard (dashboards/mailflow-probe.json): generated, provisionable, and every query valid.

The panel-by-panel list of titles and queries is printed (``pytest -s``) and written to
artifacts/dashboard-panels.txt: no Grafana server renders the dashboard here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from probe.daemon import start_daemon
from probe.lab import Lab
from probe.metric_families import Kind, PairFamily, PairShape

# A direct pair and a connector pair (whose route's smart hosts may carry its probes).
ANY_PAIRS = (PairShape(route="r", smart_host="h", tls=True, auth=True),
             PairShape(route="r", smart_host="@connector", tls=True, auth=True, carriers=("h",)))

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "mailflow-probe.json"
PANEL_LIST = ROOT / "artifacts" / "dashboard-panels.txt"

# DESIGN.md "Contract" metric families: the pair families of the family table, and the others.
PAIR_FAMILIES = frozenset(f.metric_name + ("_total" if f.row.kind is Kind.COUNTER else "") for f in PairFamily)
CONTRACT_METRICS = PAIR_FAMILIES | frozenset(f"mailflow_probe_{name}" for name in (
    "mailbox_up", "mailbox_errors_total", "build_info", "config_last_reload_successful", "scheduler_lag_seconds",
    "mailbox_watcher_up",
))
# Families whose route and smart_host labels are optional (metrics.per_pair), and those whose series appear
# at their first observation rather than at start-up (the family table says which).
OPTIONAL_PAIR = frozenset(f.metric_name for f in PairFamily if f.row.optional_pair_labels)
CREATED_WHEN_SEEN = frozenset(f.metric_name + ("_total" if f.row.kind is Kind.COUNTER else "")
                              for f in PairFamily if not any(tuple(f.row.created(p)) for p in ANY_PAIRS))
MAILBOX_METRICS = frozenset(f"mailflow_probe_{n}" for n in ("mailbox_up", "mailbox_errors_total", "mailbox_watcher_up"))
UNLABELLED_METRICS = frozenset(
    f"mailflow_probe_{n}" for n in ("build_info", "config_last_reload_successful", "scheduler_lag_seconds"))
ROUTE_METRICS = CONTRACT_METRICS - MAILBOX_METRICS - UNLABELLED_METRICS
HISTOGRAMS = frozenset(
    f"mailflow_probe_{n}" for n in ("delivery_seconds", "smtp_stage_seconds", "scheduler_lag_seconds"))
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


def dashboard() -> dict[str, Any]:
    """Return the committed dashboard."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Yield every panel that is not a row, rows' collapsed panels included."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries() -> Iterator[tuple[str, str, str]]:
    """Yield (panel title, refId, expr) for every target of every panel."""
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["refId"], target["expr"]


def variable_selectors() -> Iterator[tuple[str, str]]:
    """Yield (variable name, series selector) for every label_values variable."""
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert match, var["definition"]
            yield var["name"], match.group(1)


def as_promql(expr: str) -> str:
    """Return expr with Grafana's variables replaced so that Prometheus can parse it."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_families(expr: str) -> set[str]:
    """Return the mailflow_probe_ metric families an expression names (histogram suffixes stripped)."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"\bmailflow_probe_\w+", expr)}


def metric_names(expr: str) -> set[str]:
    """Return the mailflow_probe_ series names an expression reads, exactly as written."""
    return set(re.findall(r"\bmailflow_probe_\w+", expr))


def exported_series_names(exposition: str) -> set[str]:
    """Return the names of the samples of a Prometheus text exposition (``_created`` samples left out)."""
    names = set()
    for line in exposition.splitlines():
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{|\s)", line)
        if match and not line.startswith("#") and not match.group(1).endswith("_created"):
            names.add(match.group(1))
    return names


def promtool() -> str:
    """Return promtool's path, or fail saying how to get it."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool not found: run scripts/setup (it installs Debian's prometheus package)")
    return path


def panel_listing() -> str:
    """Return the panel-by-panel list of titles and queries, in dashboard order."""
    lines = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            lines.append(f"\n== {panel['title']} ==")
            continue
        lines.append(f"[{panel['type']}] {panel['title']}")
        lines.extend(f"    {t['refId']}: {t['expr']}" for t in panel["targets"])
    return "\n".join(lines).lstrip("\n") + "\n"


def test_generated_json_is_up_to_date() -> None:
    """The committed JSON is exactly what dashboards/build.py generates."""
    result = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_datasource_route_and_smart_host_are_variables() -> None:
    """The data source is a Prometheus variable; route and smart_host are multi-value with All."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("route", "smart_host"):
        var = variables[name]
        assert var["type"] == "query", name
        assert var["multi"], name
        assert var["includeAll"], name
        assert var["definition"].startswith("label_values(")
        assert var["definition"].endswith(f", {name})")
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Every panel query and variable selector, variables substituted, is PromQL that promtool accepts."""
    listing = panel_listing()
    print("\n" + listing)
    PANEL_LIST.parent.mkdir(parents=True, exist_ok=True)
    PANEL_LIST.write_text(listing, encoding="utf-8")
    records = [{"record": f"dashboard:panel_{i}:{ref}", "expr": as_promql(expr)}
               for i, (_, ref, expr) in enumerate(queries())]
    records += [{"record": f"dashboard:variable:{name}", "expr": as_promql(selector)}
                for name, selector in variable_selectors()]
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8")
    result = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The parse check can fail: promtool rejects an expression with an unbalanced parenthesis."""
    rule_file = tmp_path / "broken.yml"
    rule = {"record": "dashboard:broken", "expr": as_promql("sum(rate(mailflow_probe_sent_total[$__rate_interval])")}
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [rule]}]}), encoding="utf-8")
    result = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0


def test_dashboard_names_only_contract_metrics() -> None:
    """Every query and variable names only metric families of DESIGN.md's contract."""
    named: set[str] = set()
    for title, ref, expr in queries():
        families = metric_families(expr)
        assert families, (title, ref, "names no mailflow_probe_ metric")
        assert families <= CONTRACT_METRICS, (title, ref, families - CONTRACT_METRICS)
        named |= families
    for name, selector in variable_selectors():
        assert metric_families(selector) <= CONTRACT_METRICS, name
    assert named == CONTRACT_METRICS, CONTRACT_METRICS - named


def test_histograms_are_read_through_their_series() -> None:
    """A histogram is read as _bucket, _sum or _count: its bare name has no series."""
    for title, ref, expr in queries():
        assert not metric_names(expr) & HISTOGRAMS, (title, ref)


def test_queries_are_filtered_by_the_variables_that_apply() -> None:
    """Each route metric is selected by $route and $smart_host; each mailbox metric by $mailbox."""
    for title, ref, expr in queries():
        for name, selector in re.findall(r"\b(mailflow_probe_\w+?)(?:_bucket|_sum|_count)?\b(\{[^}]*\})?", expr):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if family in OPTIONAL_PAIR:  # series without the pair labels match too
                assert 'route=~"$route|"' in selector, (title, ref)
                assert 'smart_host=~"$smart_host|"' in selector, (title, ref)
            elif family in ROUTE_METRICS:
                assert 'route=~"$route"' in selector, (title, ref)
                assert 'smart_host=~"$smart_host"' in selector, (title, ref)
            elif family in MAILBOX_METRICS:
                assert 'mailbox=~"$mailbox"' in selector, (title, ref)


def test_required_panels_are_present() -> None:
    """The panels the issue asks for exist with the right kind of visualisation."""
    kinds = {p["title"]: p["type"] for p in panels()}
    assert kinds["Success per route and smart host"] == "state-timeline"
    assert kinds["Delivery latency distribution"] == "heatmap"
    exprs = {title: [] for title in kinds}  # type: dict[str, list[str]]
    for title, _, expr in queries():
        exprs[title].append(expr)
    latency = " ".join(exprs["Delivery latency p50 / p95 / p99"])
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, route, smart_host)" in latency
    assert "(mailflow_probe_tls_cert_expiry_timestamp_seconds" in exprs["Days to certificate expiry"][0]
    assert "/ 86400" in exprs["Days to certificate expiry"][0]
    assert "stage, reason" in exprs["Send failures by stage and reason"][0]
    assert {"In flight", "Lost, late and unknown", "Bounced by reason", "Slowest hop", "Mailbox observable",
            "Mailbox errors by reason",
            "SMTP stage timings p50 / p95", "Build", "Configuration last reload",
            "Scheduler lag p99 and mean", "Mailbox watcher running"} <= set(kinds)


def test_panels_do_not_overlap_on_the_grid() -> None:
    """Panels sit inside Grafana's 24 columns and no two cover the same cell."""
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_provisioning_points_grafana_at_the_dashboard_and_a_prometheus() -> None:
    """The provisioning YAML declares a file dashboard provider and a Prometheus data source."""
    provider = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/mailflow-probe.yml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file"
    assert provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((DASHBOARDS / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert dashboard()["uid"] == "mailflow-probe"
    assert 36 <= dashboard()["schemaVersion"] <= 41


def test_exposition_names_are_read_as_the_dashboard_names_them() -> None:
    """Metric names read from a real prometheus_client exposition match the dashboard's families."""
    registry = CollectorRegistry()
    Counter("mailflow_probe_sent", "probes sent", ["route", "smart_host"], registry=registry).labels("r", "h").inc()
    Histogram("mailflow_probe_delivery_seconds", "latency", registry=registry).observe(1.5)
    Gauge("mailflow_probe_in_flight", "in flight", registry=registry).set(2)
    names = exported_series_names(generate_latest(registry).decode())
    assert names == {"mailflow_probe_sent_total", "mailflow_probe_delivery_seconds_bucket",
                     "mailflow_probe_delivery_seconds_sum", "mailflow_probe_delivery_seconds_count",
                     "mailflow_probe_in_flight"}
    assert metric_names("histogram_quantile(0.5, rate(mailflow_probe_delivery_seconds_bucket[5m]))") <= names
    assert not metric_names("rate(mailflow_probe_delivery_seconds[5m])") <= names


def live_metrics(lab: Lab, tmp_path: Path) -> str:
    """Start the real daemon on the lab, read its /metrics over loopback once, and stop it."""
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=60.0, timeout=30.0, jitter=0.0,
                                    connector="ews")
    daemon, server = start_daemon(config, listen_address="127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            text: str = response.read().decode()
    finally:
        server.close()
        daemon.stop()
    return text


def test_dashboard_names_only_metrics_the_daemon_exports(lab: Lab, tmp_path: Path) -> None:
    """Every series the dashboard and the alert rules read is on a live daemon's /metrics from start-up, but
    those of the families the table creates at their first observation (send failures by stage and reason)."""
    exported = exported_series_names(live_metrics(lab, tmp_path))
    assert not CREATED_WHEN_SEEN & exported
    exported |= CREATED_WHEN_SEEN
    for title, ref, expr in queries():
        missing = metric_names(expr) - exported
        assert not missing, (title, ref, missing)
    for name, selector in variable_selectors():
        assert metric_names(selector) <= exported, name
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text(encoding="utf-8"))
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        missing = metric_names(rule["expr"]) - exported
        assert not missing, (rule["alert"], missing)
