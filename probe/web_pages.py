"""The HTML of the status page and the debug view: plain HTML and CSS, every value escaped and redacted."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, Final, Protocol
from urllib.parse import urlencode

import yaml

from probe.config import Config, ConnectorConfig, RouteConfig, SmartHostConfig, redacted_view
from probe.diagnosis import RouteDiagnosis, diagnose_history
from probe.secret import redact
from probe.tracking import tracking_hint
from probe.vocabulary import CONNECTOR_PAIR

Via = SmartHostConfig | ConnectorConfig  # what a pair goes through: a smart host, or the route's connector

HISTORY_LIMIT: Final = 20
REFRESH_SECONDS: Final = 10
_SYMBOLS: Final = {"delivered": "✓", "send_failed": "✗", "lost": "✗", "late": "!", "bounced": "↩", "unknown": "?"}
_TRACKED: Final = frozenset({"lost", "bounced"})  # verdicts whose debug view says how to follow the probe

_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .4em} h3{font-size:1em;margin:1.2em 0 .3em}
.meta{color:#666;font-size:.9em} table{border-collapse:collapse;background:#fff;margin:.3em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0}
.v{font-weight:600;padding:.1em .5em;border-radius:3px;color:#fff;white-space:nowrap}
.chip{display:inline-block;width:1.3em;height:1.3em;line-height:1.3em;margin:0 1px;text-align:center;
 border-radius:3px;color:#fff;text-decoration:none;font-size:.85em}
.delivered{background:#2e7d32}.send_failed{background:#c62828}.lost{background:#6a1b9a}
.late{background:#ef6c00}.bounced{background:#ad1457}.unknown{background:#757575}.none{background:#bdbdbd}
.warn{color:#e65100;font-size:.9em}
.diagnosis{border-left:4px solid #c62828;background:#fff;padding:.3em .6em;margin:.3em 0}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow-x:auto;font-size:12.5px}
a{color:#1565c0}
"""


class HistorySource(Protocol):
    """Where the pages read the configuration and the recent verdicts from."""

    def config(self) -> Config:
        """Return the configuration in force."""
        ...

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the latest decided probes of a pair, newest first (probe.ledger.Ledger.history rows)."""
        ...

    def waiting(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the probes of a pair still awaiting a verdict, newest first (probe.ledger.Ledger.waiting rows)."""
        ...


def _e(value: object) -> str:
    """Return ``value`` redacted and escaped for HTML."""
    return escape(redact("" if value is None else str(value)), quote=True)


def _page(title: str, body: str, *, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


def _stamp(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    seconds = max(0, round(seconds))
    for unit, size, up_to in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < up_to:
            return f"{seconds // size} {unit} ago"
    return f"{seconds // 86400} d ago"


def _when(stamp: float | None, now: float) -> str:
    if stamp is None:
        return ""
    return f"{_stamp(stamp)} ({_ago(now - stamp)})"


def _latency(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


def debug_link(route: str, smart_host: str, probe_id: str | None = None) -> str:
    """Return the debug view's URL for a pair (and one of its probes)."""
    query = {"route": route, "smart_host": smart_host}
    if probe_id is not None:
        query["probe_id"] = probe_id
    return "/debug?" + urlencode(query)


def _verdict(state: str | None) -> str:
    state = state or "none"
    label = "no verdict yet" if state == "none" else state
    return f'<span class="v {_e(state)}">{_e(label)}</span>'


def _chips(route: str, smart_host: str, rows: Sequence[Mapping[str, Any]], now: float) -> str:
    chips = []
    for row in reversed(rows):  # oldest left, newest right
        state = str(row.get("state") or "none")
        title = " ".join(p for p in (state, _latency(row.get("latency")), row.get("stage") or "",
                                     row.get("reason") or "", _when(row.get("decided_at"), now)) if p)
        chips.append(f'<a class="chip {_e(state)}" title="{_e(title)}" '
                     f'href="{_e(debug_link(route, smart_host, row.get("probe_id")))}">'
                     f'{_e(_SYMBOLS.get(state, "?"))}</a>')
    return "".join(chips)


def _name_of(via: Via) -> str:
    return via.name if isinstance(via, SmartHostConfig) else CONNECTOR_PAIR


def _path(via: Via) -> str:
    """Return what a pair goes through, as the row's second line shows it."""
    if isinstance(via, SmartHostConfig):
        return f"{via.host}:{via.port} {via.tls}"
    if via.submit == "ews":
        return "the Send connector, sent from the sender's mailbox over EWS"
    return f"the Send connector, submitted to {via.host}:{via.port} {via.tls}"


def _where(row: Mapping[str, Any]) -> str:
    """Return a verdict's stage and reason (a bounce's: its NDR's status code and reason class)."""
    bounce = (row.get("detail") or {}).get("bounce") if row.get("state") == "bounced" else None
    first = bounce.get("status") if isinstance(bounce, Mapping) else row.get("stage")
    return " / ".join(str(p) for p in (first, row.get("reason")) if p)


def _delay_warning(rows: Sequence[Mapping[str, Any]]) -> str:
    """Return the warning line of the newest probe with a delay notification, if any."""
    for row in rows:
        delayed = (row.get("detail") or {}).get("delayed_dsn")
        if isinstance(delayed, Mapping):
            text = (f"delivery delayed: {delayed.get('status')} reported by {delayed.get('reporting_mta') or '?'}"
                    f" (probe {row.get('probe_id')}, {row.get('state')})")
            return f'<br><span class="warn" title="{_e(delayed.get("diagnostic"))}">{_e(text)}</span>'
    return ""


def _pair_row(source: HistorySource, route: RouteConfig, via: Via, rows: Sequence[Mapping[str, Any]],
              now: float) -> str:
    name = _name_of(via)
    last: Mapping[str, Any] = rows[0] if rows else {}
    where = _where(last)
    warning = _delay_warning([*source.waiting(route.name, name, HISTORY_LIMIT), *rows[:1]])
    carried = ""
    if route.connector is not None:
        carried_by = ((last.get("detail") or {}).get("carried_by") or "") if name == CONNECTOR_PAIR else ""
        carried = f"<td>{_e(carried_by)}</td>"
    return (f"<tr><td>{_e(name)}<br><span class=meta>{_e(_path(via))}</span>{warning}</td>"
            f"<td>{_verdict(last.get('state'))}</td><td>{_e(_latency(last.get('latency')))}</td>{carried}"
            f"<td>{_e(where)}</td><td>{_e(last.get('smtp_code'))}</td>"
            f"<td>{_e(_when(last.get('decided_at'), now))}</td>"
            f"<td>{_chips(route.name, name, rows, now)}</td>"
            f'<td><a href="{_e(debug_link(route.name, name))}">debug</a></td></tr>')


def _diagnosis(found: RouteDiagnosis) -> str:
    if found.text is None:
        return ""
    return (f'<p class="diagnosis" data-diagnosis="{_e(found.diagnosis)}"><strong>Diagnosis:</strong> '
            f"{_e(found.text)}</p>")


def _route_section(source: HistorySource, config: Config, route: RouteConfig, now: float) -> list[str]:
    vias: list[Via] = [*route.smart_hosts, *([route.connector] if route.connector is not None else [])]
    history = {_name_of(via): source.history(route.name, _name_of(via), HISTORY_LIMIT) for via in vias}
    carried = "<th>carried by</th>" if route.connector is not None else ""
    parts = [f"<h2>{_e(route.name)}</h2><p class=meta>{_e(route.sender)} → {_e(config.recipient_of(route))}"
             f" (mailbox {_e(route.mailbox)}), every {route.interval:g} s, timeout {route.timeout:g} s</p>",
             f"<table><tr><th>smart host</th><th>last verdict</th><th>latency</th>{carried}<th>stage / reason</th>"
             "<th>SMTP code</th><th>decided</th><th>recent (oldest → newest)</th><th></th></tr>"]
    parts.extend(_pair_row(source, route, via, history[_name_of(via)], now) for via in vias)
    parts.append("</table>")
    if route.connector is not None:
        parts.append(_diagnosis(diagnose_history(route.name, history)))
    return parts


def status_page(source: HistorySource, *, now: float | None = None) -> str:
    """Return the status page: per route, each smart host and the connector probe with the last verdict and the
    recent history, and the route's diagnosis across both kinds of probe."""
    now = time.time() if now is None else now
    config = source.config()
    parts = [f"<h1>mailflow-probe</h1><p class=meta>{_e(_stamp(now))} · refreshes every "
             f'{REFRESH_SECONDS} s · <a href="/metrics">metrics</a></p>']
    if not config.routes:
        parts.append("<p>No routes are configured.</p>")
    for route in config.routes:
        parts.extend(_route_section(source, config, route, now))
    return _page("mailflow-probe status", "".join(parts), refresh=True)


# -- the debug view ------------------------------------------------------------------------------------


def _table(mapping: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>" for k, v in mapping.items())
    return f"<table>{rows}</table>"


def _show(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    return "" if value is None else str(value)


def _hops(hops: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for hop in hops:
        columns += [k for k in hop if k not in columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_show(hop.get(c)))}</td>" for c in columns) + "</tr>"
                   for hop in hops)
    return f"<table><tr>{head}</tr>{body}</table>"


def _probe_section(row: Mapping[str, Any], now: float) -> str:
    detail = row.get("detail") or {}
    summary = {"verdict": row.get("state"), "latency": _latency(row.get("latency")), "stage": row.get("stage"),
               "reason": row.get("reason"), "SMTP code": row.get("smtp_code"),
               "decided": _when(row.get("decided_at"), now), "message id": row.get("message_id"),
               "probe id": row.get("probe_id")}
    parts = [f"<h2>Probe {_e(row.get('probe_id'))}</h2>", _table(summary)]
    transcript = detail.get("transcript") or []
    parts.append("<h3>SMTP transcript (redacted)</h3>")
    parts.append(f"<pre>{_e(chr(10).join(str(line) for line in transcript))}</pre>" if transcript
                 else "<p>No transcript was kept.</p>")
    parts.append("<h3>Hops (Received headers, oldest first)</h3>")
    hops = detail.get("hops") or []
    parts.append(_hops(hops) if hops else "<p>No hops known.</p>")
    parts.append("<h3>TLS</h3>")
    tls = detail.get("tls")
    parts.append(_table(tls) if isinstance(tls, Mapping) and tls else "<p>No TLS facts.</p>")
    parts += _report_sections(row, detail)
    rest = {k: v for k, v in detail.items() if k not in ("transcript", "hops", "tls", "bounce", "delayed_dsn")}
    if rest:
        parts.append("<h3>Other details</h3>" + _table(rest))
    return "".join(parts)


def _report_sections(row: Mapping[str, Any], detail: Mapping[str, Any]) -> list[str]:
    """Return a probe's NDR, its delay warning, and (lost or bounced) how to follow it in the smart host's logs."""
    parts = []
    bounce, delayed = detail.get("bounce"), detail.get("delayed_dsn")
    if isinstance(bounce, Mapping):
        parts.append("<h3>Non-delivery report</h3>" + _table(bounce))
    if isinstance(delayed, Mapping):
        parts.append('<h3 class="warn">Warning: delivery delayed</h3>' + _table(delayed))
    if row.get("state") in _TRACKED and row.get("created_at") is not None:
        hint = tracking_hint(detail=detail, message_id=str(row.get("message_id") or ""),
                             created_at=float(row["created_at"]),
                             finished_at=max(float(row.get("deadline") or 0), float(row.get("decided_at") or 0)))
        commands = "".join(f"<pre>{_e(command)}</pre>" for command in hint.commands) or (
            "<p>The smart host's reply does not say which MTA it is; search its logs for the Message-ID.</p>")
        facts = {"Message-ID": hint.message_id, "queue id": hint.queue_id, "server": hint.server,
                 "MTA": hint.mta, "window": f"{hint.to_json()['start']} to {hint.to_json()['end']}"}
        parts.append("<h3>Track it in the smart host's logs</h3>" + _table(facts) + commands)
    return parts


def _effective_config(config: Config, route: RouteConfig, host: Via) -> str:
    effective = {
        "route": {k: v for k, v in redacted_view(route).items() if k not in ("smart_hosts", "connector")},
        "smart_host" if isinstance(host, SmartHostConfig) else "connector": redacted_view(host),
        "mailbox": redacted_view(config.mailboxes.get(route.mailbox)),
    }
    text = yaml.safe_dump(effective, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"<h2>Effective configuration</h2><pre>{_e(text)}</pre>"


def find_pair(config: Config, route: str, smart_host: str) -> tuple[RouteConfig, Via] | None:
    """Return the configured route and smart host (or connector, for "@connector") of a pair, or None."""
    for each in config.routes:
        if each.name != route:
            continue
        if smart_host == CONNECTOR_PAIR and each.connector is not None:
            return each, each.connector
        for host in each.smart_hosts:
            if host.name == smart_host:
                return each, host
    return None


def debug_page(source: HistorySource, route: RouteConfig, host: Via, *, probe_id: str | None = None,
               now: float | None = None) -> str:
    """Return the debug view of a pair: a probe's transcript, hops and TLS facts, and the effective config."""
    now = time.time() if now is None else now
    name = _name_of(host)
    rows = source.history(route.name, name, HISTORY_LIMIT)
    chosen = next((r for r in rows if r.get("probe_id") == probe_id), rows[0] if rows else None)
    parts = [f'<p><a href="/">← status</a></p><h1>{_e(route.name)} via {_e(name)}</h1>',
             f"<p class=meta>recent: {_chips(route.name, name, rows, now)}</p>"]
    parts.append(_probe_section(chosen, now) if chosen is not None else "<p>No probe of this pair has a verdict "
                 "yet.</p>")
    parts.append(_effective_config(source.config(), route, host))
    return _page(f"mailflow-probe: {route.name} via {name}", "".join(parts), refresh=False)
