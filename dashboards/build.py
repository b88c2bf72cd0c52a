#!/usr/bin/env python3
"""Generate the mailflow-probe Grafana dashboard (``dashboards/mailflow-probe.json``) from code.

Run ``python3 dashboards/build.py`` to write the JSON, ``python3 dashboards/build.py --check`` to
fail when the committed file differs from what this script makes. Standard library only, so the
output is reproducible anywhere. Metric names are those of DESIGN.md, "Contract".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "mailflow-probe.json"
UID = "mailflow-probe"
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
ROUTE_SELECTOR = 'route=~"$route", smart_host=~"$smart_host"'
# For a family whose route and smart_host labels are optional (the probe's metrics.per_pair): series without
# them match too (an absent label is the empty string), series with them follow the variables.
OPTIONAL_ROUTE_SELECTOR = 'route=~"$route|", smart_host=~"$smart_host|"'
MAILBOX_SELECTOR = 'mailbox=~"$mailbox"'
P = "mailflow_probe_"

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and how its series are named in the legend."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    heatmap: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel before layout: its kind, words, queries, width and height, and options."""

    kind: str
    title: str
    description: str
    queries: Sequence[Query]
    width: int
    height: int = 8
    unit: str = "short"
    options: Json = field(default_factory=dict)
    field_config: Json = field(default_factory=dict)


def sel(metric: str, selector: str = ROUTE_SELECTOR) -> str:
    """Return ``metric{selector}`` with the mailflow_probe_ prefix."""
    return f"{P}{metric}{{{selector}}}"


def rate_sum(func: str, metric: str, by: str, window: str = "$__rate_interval") -> str:
    """Return ``sum by (by) (func(metric{route,smart_host}[window]))``."""
    return f"sum by ({by}) ({func}({sel(metric)}[{window}]))"


def quantile(q: float, metric: str, by: str, selector: str = ROUTE_SELECTOR) -> str:
    """Return the q-quantile of a histogram family, per ``by``, over the rate interval."""
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({sel(metric + '_bucket', selector)}[$__rate_interval])))"


def mapping(values: dict[str, tuple[str, str]]) -> list[Json]:
    """Return a Grafana value mapping: value -> (text, colour)."""
    return [{"type": "value", "options": {v: {"text": t, "color": c, "index": i}
                                          for i, (v, (t, c)) in enumerate(values.items())}}]


def thresholds(*steps: tuple[float | None, str]) -> Json:
    """Return absolute thresholds from (value, colour) steps; the first value is None (base)."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


UP_DOWN = mapping({"0": ("down", "red"), "1": ("up", "green")})
RED_GREEN = thresholds((None, "red"), (1, "green"))


def flow_panels() -> list[Panel]:
    """Return the panels that answer "does mail cross, through each smart host?"."""
    return [
        Panel("state-timeline", "Success per route and smart host",
              "1 (delivered) when the last finished probe through this smart host was delivered, 0 (failed) "
              "when it failed to send, was lost or bounced. mailflow_probe_success.",
              [Query(sel("success"), "{{route}} / {{smart_host}}")], 24, 7,
              options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
              field_config={"mappings": mapping({"0": ("failed", "red"), "1": ("delivered", "green")}),
                            "thresholds": RED_GREEN, "color": {"mode": "thresholds"}}),
        Panel("stat", "Time since last delivery",
              "Seconds since a probe through this smart host was last delivered "
              "(time() - mailflow_probe_last_success_timestamp_seconds; never delivered shows no value).",
              [Query(f"time() - ({sel('last_success_timestamp_seconds')} > 0)", "{{route}} / {{smart_host}}",
                     instant=True)], 8, unit="s",
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
              field_config={"thresholds": thresholds((None, "green"), (600, "orange"), (1800, "red"))}),
        Panel("timeseries", "Probes sent and delivered per minute",
              "Rate of mailflow_probe_sent_total and mailflow_probe_delivered_total, per minute.",
              [Query(f"60 * {rate_sum('rate', 'sent_total', 'route, smart_host')}", "sent {{route}} / {{smart_host}}"),
               Query(f"60 * {rate_sum('rate', 'delivered_total', 'route, smart_host')}",
                     "delivered {{route}} / {{smart_host}}")], 8, unit="short"),
        Panel("timeseries", "In flight",
              "Probes accepted by a smart host and not yet decided (mailflow_probe_in_flight).",
              [Query(f"sum by (route, smart_host) ({sel('in_flight')})", "{{route}} / {{smart_host}}")], 8),
        Panel("timeseries", "Smart host the Send connector chose",
              "Connector probes (smart_host=\"@connector\": sent as a user of the source forest, so its Send "
              "connector picks the smart host) delivered, by the smart host that carried them "
              "(mailflow_probe_connector_carried_total, read from the Received chain at the target). A move from "
              "one smart host to another is the connector failing over.",
              [Query(rate_sum("increase", "connector_carried_total", "route, smart_host"),
                     "{{route}} via {{smart_host}}")], 24, 7,
              options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}},
              field_config={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}),
        Panel("timeseries", "Lost, late and unknown",
              "Verdicts that need a look: lost (accepted, never seen while the mailbox was observable), late "
              "(seen after being declared lost), unknown (the mailbox could not be observed long enough).",
              [Query(rate_sum("increase", f"{v}_total", "route, smart_host"), f"{v} {{{{route}}}} / {{{{smart_host}}}}")
               for v in ("lost", "late", "unknown")], 12, 7,
              options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}},
              field_config={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}),
        Panel("timeseries", "Bounced by reason",
              "Probes a smart host accepted that came back as an NDR (mailflow_probe_bounced_total), by the class of "
              "its status code: recipient (X.1.X), routing (X.4.X), size (X.3.4), policy (X.7.X), other. The debug "
              "view shows the code, the server that refused and how to track the message in its logs.",
              [Query(rate_sum("increase", "bounced_total", "route, smart_host, reason"),
                     "{{reason}} {{route}} / {{smart_host}}")], 12, 7,
              options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}},
              field_config={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}),
    ]


def latency_panels() -> list[Panel]:
    """Return the delivery latency panels: quantiles and a heatmap."""
    by = "route, smart_host"
    return [
        Panel("timeseries", "Delivery latency p50 / p95 / p99",
              "From the smart host's final 250 to the mailbox's receipt, on one clock "
              "(histogram_quantile over mailflow_probe_delivery_seconds_bucket).",
              [Query(quantile(q, "delivery_seconds", by), f"p{int(q * 100)} {{{{route}}}} / {{{{smart_host}}}}")
               for q in (0.5, 0.95, 0.99)], 12, 9, unit="s"),
        Panel("heatmap", "Delivery latency distribution",
              "How many probes were delivered in each latency bucket (mailflow_probe_delivery_seconds_bucket).",
              [Query(f"sum by (le) (increase({sel('delivery_seconds_bucket')}[$__rate_interval]))", "{{le}}",
                     heatmap=True)], 12, 9, unit="s",
              options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                       "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange"},
                       "filterValues": {"le": 1e-9}, "rowsFrame": {"layout": "auto"}}),
        Panel("timeseries", "Slowest hop",
              "The longest delay between two Received stamps of the last delivered probe, labelled by the server "
              "that received it (mailflow_probe_slowest_hop_seconds): where a rising latency is spent. Each server "
              "stamps on its own clock, so a skewed clock shows here as a negative or inflated hop.",
              [Query(f"max by (route, smart_host, hop) ({sel('slowest_hop_seconds')})",
                     "{{route}} / {{smart_host}} at {{hop}}")], 24, 7, unit="s"),
    ]


def sending_panels() -> list[Panel]:
    """Return the SMTP panels: failures by stage and reason, stage timings, certificate expiry."""
    failures = "route, smart_host, stage, reason"
    return [
        Panel("timeseries", "Send failures by stage and reason",
              "mailflow_probe_send_failures_total by stage (connect, banner, ehlo, starttls, auth, mail, rcpt, "
              "data) and reason (dns, refused, timeout, tls_unavailable, tls_certificate, tls_handshake, "
              "auth_unavailable, auth_failed, tempfail, rejected, protocol).",
              [Query(f"{rate_sum('increase', 'send_failures_total', failures)} > 0",
                     "{{smart_host}} {{stage}}/{{reason}}")], 12, 9,
              field_config={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}),
        Panel("table", "Send failures in the time range",
              "Every (route, smart host, stage, reason) that failed in the chosen range, with its count.",
              [Query(f"{rate_sum('increase', 'send_failures_total', failures, '$__range')} > 0",
                     instant=True, table=True)], 12, 9,
              options={"sortBy": [{"displayName": "Value", "desc": True}]}),
        Panel("timeseries", "SMTP stage timings p50 / p95",
              "Time spent in each SMTP stage (histogram_quantile over mailflow_probe_smtp_stage_seconds_bucket), "
              "over every smart host of the probe instances: by default the histograms have no route or "
              "smart_host label (a few series in all, not 104 per pair). With metrics.per_pair: "
              "[smtp_stage_seconds] in the probe's config they have, and this panel follows the route and smart "
              "host chosen above.",
              [Query(quantile(q, "smtp_stage_seconds", "stage", OPTIONAL_ROUTE_SELECTOR),
                     f"{{{{stage}}}} p{int(q * 100)}") for q in (0.5, 0.95)], 12, 9, unit="s"),
        Panel("bargauge", "Days to certificate expiry",
              "(mailflow_probe_tls_cert_expiry_timestamp_seconds - time()) / 86400 for the certificate each "
              "smart host presented; red under 14 days (the MailflowCertificateExpiring alert).",
              [Query(f"min by (route, smart_host) (({sel('tls_cert_expiry_timestamp_seconds')} > 0) - time()) / 86400",
                     "{{route}} / {{smart_host}}", instant=True)], 12, 9, unit="d",
              options={"orientation": "horizontal", "displayMode": "basic",
                       "reduceOptions": {"calcs": ["lastNotNull"]}},
              field_config={"thresholds": thresholds((None, "red"), (14, "orange"), (30, "green")),
                            "decimals": 1, "min": 0}),
    ]


def mailbox_panels() -> list[Panel]:
    """Return the mailbox health panels."""
    return [
        Panel("state-timeline", "Mailbox observable",
              "mailflow_probe_mailbox_up: 1 when the last search of the probe mailbox worked.",
              [Query(sel("mailbox_up", MAILBOX_SELECTOR), "{{mailbox}}")], 8, 7,
              options={"showValue": "never", "mergeValues": True},
              field_config={"mappings": UP_DOWN, "thresholds": RED_GREEN, "color": {"mode": "thresholds"}}),
        Panel("state-timeline", "Mailbox watcher running",
              "max by mailbox of mailflow_probe_mailbox_watcher_up: whether the mailbox's watcher runs in either "
              "mode (streaming or polling; one mode is up at a time, so the other reads 0).",
              [Query(f"max by (mailbox) ({sel('mailbox_watcher_up', MAILBOX_SELECTOR)})", "{{mailbox}}")], 8, 7,
              options={"showValue": "never", "mergeValues": True},
              field_config={"mappings": UP_DOWN, "thresholds": RED_GREEN, "color": {"mode": "thresholds"}}),
        Panel("timeseries", "Mailbox errors by reason",
              "mailflow_probe_mailbox_errors_total by reason (unreachable, timeout, unauthorized, tls, "
              "throttled, server_error, protocol).",
              [Query(f"sum by (mailbox, reason) (increase({sel('mailbox_errors_total', MAILBOX_SELECTOR)}"
                     "[$__rate_interval])) > 0", "{{mailbox}} {{reason}}")], 8, 7,
              field_config={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}}),
    ]


def health_panels() -> list[Panel]:
    """Return the probe's own health: build, configuration reloads, scheduler lag."""
    return [
        Panel("table", "Build", "mailflow_probe_build_info: the running version, one row per probe instance.",
              [Query(f"{P}build_info", instant=True, table=True)], 8, 6),
        Panel("stat", "Configuration last reload",
              "mailflow_probe_config_last_reload_successful: 1 when the last reload (SIGHUP) succeeded.",
              [Query(f"{P}config_last_reload_successful", "{{instance}}", instant=True)], 8, 6,
              options={"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
              field_config={"mappings": mapping({"0": ("failed", "red"), "1": ("ok", "green")}),
                            "thresholds": RED_GREEN}),
        Panel("timeseries", "Scheduler lag p99 and mean",
              "How late the scheduler starts due probes (the mailflow_probe_scheduler_lag_seconds histogram).",
              [Query(f"histogram_quantile(0.99, sum by (le, instance) "
                     f"(rate({P}scheduler_lag_seconds_bucket[$__rate_interval])))", "p99 {{instance}}"),
               Query(f"sum by (instance) (rate({P}scheduler_lag_seconds_sum[$__rate_interval])) / "
                     f"sum by (instance) (rate({P}scheduler_lag_seconds_count[$__rate_interval]))",
                     "mean {{instance}}")],
              8, 6, unit="s"),
    ]


SECTIONS: list[tuple[str, list[Panel]]] = [
    ("Mail flow", flow_panels()),
    ("Delivery latency", latency_panels()),
    ("Sending (SMTP)", sending_panels()),
    ("Mailboxes", mailbox_panels()),
    ("Probe health", health_panels()),
]


def target_json(query: Query, ref: str) -> Json:
    """Return the Grafana target of one query."""
    target: Json = {"datasource": DATASOURCE, "refId": ref, "expr": query.expr, "legendFormat": query.legend,
                    "range": not query.instant, "instant": query.instant, "editorMode": "code"}
    if query.table:
        target["format"] = "table"
    elif query.heatmap:
        target["format"] = "heatmap"
    else:
        target["format"] = "time_series"
    return target


def panel_json(panel: Panel, panel_id: int, grid: Json) -> Json:
    """Return the Grafana JSON of one panel at its place in the grid."""
    defaults: Json = {"unit": panel.unit, **panel.field_config}
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": grid,
        "targets": [target_json(q, chr(ord("A") + i)) for i, q in enumerate(panel.queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options,
    }


def layout(sections: Iterable[tuple[str, list[Panel]]]) -> list[Json]:
    """Place rows and panels on Grafana's 24-column grid, left to right, top to bottom."""
    out: list[Json] = []
    y, next_id = 0, 1
    for title, panels in sections:
        out.append({"id": next_id, "type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for panel in panels:
            if x + panel.width > 24:
                y, x, row_height = y + row_height, 0, 0
            out.append(panel_json(panel, next_id, {"h": panel.height, "w": panel.width, "x": x, "y": y}))
            next_id, x, row_height = next_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return out


def query_variable(name: str, label: str, query: str) -> Json:
    """Return a multi-value, include-All template variable filled by a label_values query."""
    return {
        "type": "query", "name": name, "label": label, "datasource": DATASOURCE,
        "definition": query, "query": {"query": query, "refId": f"{name}-variable-query", "qryType": 1},
        "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1, "regex": "",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0,
    }


def templating() -> Json:
    """Return the dashboard variables: data source, route, smart host, mailbox."""
    datasource = {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
                  "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0}
    return {"list": [
        datasource,
        query_variable("route", "Route", f"label_values({P}sent_total, route)"),
        query_variable("smart_host", "Smart host", f'label_values({P}sent_total{{route=~"$route"}}, smart_host)'),
        query_variable("mailbox", "Mailbox", f"label_values({P}mailbox_up, mailbox)"),
    ]}


def dashboard() -> Json:
    """Return the whole dashboard."""
    return {
        "id": None, "uid": UID, "title": "Mail flow probe", "description":
            "Does mail cross the forest boundary through each smart host, and how fast? (mailflow-probe)",
        "tags": ["mailflow-probe", "exchange", "smtp"], "timezone": "", "editable": True,
        "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "1m", "liveNow": False,
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "fiscalYearStartMonth": 0,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [], "templating": templating(), "panels": layout(SECTIONS),
    }


def render() -> str:
    """Return the dashboard as the JSON text that is committed."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON, or with --check compare it with the committed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python3 dashboards/build.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
