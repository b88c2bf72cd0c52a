"""The diagnosis across both kinds of probe, and how check's formats, the metrics and the pages show connector rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.config import Config, ConnectorConfig, EwsConfig, MailboxConfig, RouteConfig, SmartHostConfig
from probe.diagnosis import DiagnosisTracker, diagnose, diagnose_history
from probe.ledger import Decision
from probe.metrics import ProbeMetrics
from probe.report import FORMATS, Report
from probe.secret import Secret
from probe.vocabulary import CONNECTOR_PAIR, Diagnosis, Verdict
from probe.web_pages import debug_page, find_pair, status_page

ROUTE = "c2f"
A, B = "edge-1", "edge-2"
SUBMIT_PASSWORD = "submit-secret-5f0e"


@pytest.mark.parametrize(("connector", "direct", "carried", "expected", "failing"), [
    ("delivered", {A: "delivered", B: "delivered"}, A, None, ()),
    ("lost", {A: "delivered", B: "delivered"}, None, Diagnosis.SOURCE_SIDE, ()),
    ("send_failed", {A: "delivered", B: "lost"}, None, Diagnosis.SOURCE_SIDE, (B,)),
    ("bounced", {A: "delivered", B: "delivered"}, None, Diagnosis.SOURCE_SIDE, ()),
    ("delivered", {A: "send_failed", B: "delivered"}, B, Diagnosis.FAILING_OVER, (A,)),
    ("late", {A: "send_failed", B: "delivered"}, None, Diagnosis.FAILING_OVER, (A,)),
    ("delivered", {A: "send_failed", B: "delivered"}, A, None, (A,)),  # carried by the "failing" host itself
    ("lost", {A: "send_failed", B: "lost"}, None, Diagnosis.TARGET_SIDE, (A, B)),
    ("lost", {A: "send_failed", B: "unknown"}, None, None, (A,)),  # B's state is not known: no verdict on it
    ("unknown", {A: "send_failed", B: "send_failed"}, None, None, (A, B)),
    ("lost", {A: None, B: None}, None, None, ()),
])
def test_each_case_of_the_issue_gets_its_diagnosis(connector: str, direct: dict[str, str | None],
                                                   carried: str | None, expected: Diagnosis | None,
                                                   failing: tuple[str, ...]) -> None:
    """Connector failing while a smart host delivers: source side; connector delivering while a smart host
    fails: failing over; both failing everywhere: target side; unknowns say nothing."""
    found = diagnose(ROUTE, connector=connector, direct=direct, carried_by=carried)
    assert (found.diagnosis, found.failing) == (expected, failing)
    assert (found.text is None) == (expected is None)


def test_the_words_name_what_to_look_at() -> None:
    """The texts are the issue's: the source side lists what it is made of; failing over names where."""
    source = diagnose(ROUTE, connector="lost", direct={A: "delivered"}).text
    assert source == ("the source side: the Send connector (enabled, address space, stored credentials, TLS "
                      "setting), its source servers, the source forest's transport")
    over = diagnose(ROUTE, connector="delivered", direct={A: "lost", B: "delivered"}, carried_by=B).text
    assert over == f"the connector is failing over: redundancy lost at {A} (carried by {B})"


def test_history_reads_each_pairs_last_decisive_verdict() -> None:
    """From ledger history (newest first), unknown rows are passed over and the connector's carrier is read."""
    history: dict[str, list[dict[str, Any]]] = {
        CONNECTOR_PAIR: [{"state": "unknown"}, {"state": "delivered", "detail": {"carried_by": B}}],
        A: [{"state": "send_failed"}, {"state": "delivered"}],
        B: [{"state": "delivered"}],
    }
    found = diagnose_history(ROUTE, history)
    assert (found.diagnosis, found.failing, found.carried_by) == (Diagnosis.FAILING_OVER, (A,), B)


def test_the_tracker_reports_a_diagnosis_only_when_it_changes() -> None:
    """The daemon logs a route's diagnosis when it appears, changes or clears, not at every verdict."""
    tracker = DiagnosisTracker()
    hosts = [A, B]
    assert tracker.update(ROUTE, hosts, A, "delivered") is None
    assert tracker.update(ROUTE, hosts, B, "delivered") is None
    assert tracker.update(ROUTE, hosts, CONNECTOR_PAIR, "delivered", A) is None
    changed = tracker.update(ROUTE, hosts, CONNECTOR_PAIR, "lost")
    assert changed is not None
    assert changed.diagnosis is Diagnosis.SOURCE_SIDE
    assert tracker.update(ROUTE, hosts, A, "delivered") is None
    assert tracker.update(ROUTE, hosts, CONNECTOR_PAIR, "unknown") is None
    cleared = tracker.update(ROUTE, hosts, CONNECTOR_PAIR, "delivered", A)
    assert cleared is not None
    assert cleared.diagnosis is None


def decision(host: str, verdict: Verdict, *, carried: str | None = None, latency: float | None = 0.5) -> Decision:
    return Decision(probe_id=f"p-{host}", route=ROUTE, smart_host=host, mailbox="fc", message_id=f"<{host}@x>",
                    verdict=verdict, latency=latency if verdict is Verdict.DELIVERED else None, carried_by=carried,
                    smtp_code=250 if verdict is Verdict.DELIVERED else None)


FAILING_OVER = [decision(A, Verdict.SEND_FAILED), decision(B, Verdict.DELIVERED),
                decision(CONNECTOR_PAIR, Verdict.DELIVERED, carried=B)]


def test_the_table_shows_a_carried_by_column_and_the_diagnosis_line() -> None:
    """With a connector row the table has CARRIED BY (the connector row's smart host, "-" elsewhere) and ends
    with the route's diagnosis; without one the table is as it always was."""
    text = FORMATS["text"].render(Report(decisions=FAILING_OVER))
    lines = text.splitlines()
    assert lines[0].split()[:7] == ["ROUTE", "SMART", "HOST", "VERDICT", "LATENCY", "CARRIED", "BY"]
    assert lines[1].split()[:5] == [ROUTE, CONNECTOR_PAIR, "delivered", "0.50s", B]
    assert lines[-1] == f"diagnosis: {ROUTE}: the connector is failing over: redundancy lost at {A} (carried by {B})"
    plain = FORMATS["text"].render(Report(decisions=FAILING_OVER[:2]))
    assert "CARRIED BY" not in plain
    assert "diagnosis" not in plain


def test_json_puts_carried_by_and_the_diagnosis_on_the_connector_row_only() -> None:
    """JSON: the connector row has carried_by, diagnosis and diagnosis_text; direct rows keep their keys."""
    rows = {row["smart_host"]: row for row in json.loads(FORMATS["json"].render(Report(decisions=FAILING_OVER)))}
    assert (rows[CONNECTOR_PAIR]["carried_by"], rows[CONNECTOR_PAIR]["diagnosis"]) == (B, "failing_over")
    assert rows[CONNECTOR_PAIR]["diagnosis_text"].startswith("the connector is failing over")
    assert "diagnosis" not in rows[A]
    assert "carried_by" not in rows[B]


def test_nagios_names_the_diagnosis_in_its_one_line() -> None:
    """The Nagios status line carries the diagnosis before its perfdata."""
    line = FORMATS["nagios"].render(Report(decisions=FAILING_OVER)).splitlines()[0]
    assert line.startswith("MAILFLOW CRITICAL - ")
    status, _, perf = line.partition(" | ")
    assert f"diagnosis: {ROUTE}: the connector is failing over" in status
    assert f"'{ROUTE}/@connector'=0.500s" in perf


def config(connector: ConnectorConfig) -> Config:
    ews = EwsConfig(url="https://mail.example.test/EWS/Exchange.asmx", username="svc", password=Secret("ews-pw"))
    mailboxes = {name: MailboxConfig(name=name, address=f"probe@{name}.test", backend=ews) for name in ("fc", "co")}
    hosts = (SmartHostConfig(name=A, host="192.0.2.1"), SmartHostConfig(name=B, host="192.0.2.2", tls="none",
                                                                        allow_insecure=True))
    route = RouteConfig(name=ROUTE, sender="probe@co.test", mailbox="fc", smart_hosts=hosts, connector=connector)
    return Config(signing_key_file=Path("k"), state_file=Path("s"), mailboxes=mailboxes, routes=(route,))


SMTP = ConnectorConfig(submit="smtp", host="mail.co.test", username="probe@co.test", password=Secret(SUBMIT_PASSWORD))


def exposition(metrics: ProbeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}


def test_the_connector_pair_and_connector_carried_total_exist_from_start_up_at_zero() -> None:
    """The pair (route, "@connector") has every series a pair has from start-up (its submission server's
    certificate with submit: smtp), its submission's failures from their first occurrence as any pair's, and
    connector_carried_total one series per smart host, all 0."""
    metrics = ProbeMetrics(config(SMTP), process_metrics=False)
    samples = exposition(metrics)
    pair = {("route", ROUTE), ("smart_host", CONNECTOR_PAIR)}
    for name in ("mailflow_probe_sent_total", "mailflow_probe_delivered_total", "mailflow_probe_success",
                 "mailflow_probe_tls_cert_expiry_timestamp_seconds"):
        assert samples[(name, frozenset(pair))] == 0, name
    failure = ("mailflow_probe_send_failures_total", frozenset({*pair, ("stage", "auth"), ("reason", "auth_failed")}))
    assert failure not in samples
    for host in (A, B):
        assert samples[("mailflow_probe_connector_carried_total", frozenset({("route", ROUTE),
                                                                             ("smart_host", host)}))] == 0
    metrics.observe_decision(Decision(probe_id="p", route=ROUTE, smart_host=CONNECTOR_PAIR, mailbox="m",
                                      message_id="<m@x>", verdict=Verdict.SEND_FAILED, stage="auth",
                                      reason="auth_failed", decided_at=1.0))
    assert exposition(metrics)[failure] == 1
    ews = exposition(ProbeMetrics(config(ConnectorConfig(submit="ews")), process_metrics=False))
    assert ("mailflow_probe_tls_cert_expiry_timestamp_seconds", frozenset(pair)) not in ews
    assert ews[("mailflow_probe_sent_total", frozenset(pair))] == 0


def test_carried_counts_only_the_routes_own_smart_hosts_and_a_reload_drops_what_is_gone() -> None:
    """observe_carried counts a configured smart host of the route and ignores any other; a config without the
    connector drops its series."""
    metrics = ProbeMetrics(config(SMTP), process_metrics=False)
    metrics.observe_carried(ROUTE, B)
    metrics.observe_carried(ROUTE, "somewhere-else")
    carried = "mailflow_probe_connector_carried_total"
    samples = exposition(metrics)
    assert samples[(carried, frozenset({("route", ROUTE), ("smart_host", B)}))] == 1
    assert (carried, frozenset({("route", ROUTE), ("smart_host", "somewhere-else")})) not in samples
    without = config(SMTP)
    metrics.apply_config(Config(signing_key_file=without.signing_key_file, state_file=without.state_file,
                                mailboxes=without.mailboxes,
                                routes=tuple(RouteConfig(name=r.name, sender=r.sender, mailbox=r.mailbox,
                                                         smart_hosts=r.smart_hosts) for r in without.routes)))
    assert not [key for key in exposition(metrics) if key[0] == carried]


class Source:
    """A HistorySource of fixed rows, for the pages."""

    def __init__(self, cfg: Config, rows: dict[str, list[dict[str, Any]]]) -> None:
        self._config, self._rows = cfg, rows

    def config(self) -> Config:
        return self._config

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        return self._rows.get(smart_host, [])[:limit]

    def waiting(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        return []


def test_the_status_page_shows_the_connector_row_its_carrier_and_the_diagnosis() -> None:
    """The status page lists the connector row beside the smart hosts, with the smart host that carried it,
    and the route's diagnosis; its debug view shows the connector's config with the password hidden."""
    rows = {A: [{"state": "send_failed", "probe_id": "a1", "decided_at": 1.0}],
            B: [{"state": "delivered", "probe_id": "b1", "decided_at": 1.0}],
            CONNECTOR_PAIR: [{"state": "delivered", "probe_id": "c1", "decided_at": 1.0, "latency": 0.25,
                              "detail": {"carried_by": B, "transcript": ["C: AUTH PLAIN <secret>"]}}]}
    source = Source(config(SMTP), rows)
    page = status_page(source, now=10.0)
    assert "<th>carried by</th>" in page
    assert f"<td>{CONNECTOR_PAIR}<br>" in page
    assert f"<td>{B}</td>" in page
    assert 'data-diagnosis="failing_over"' in page
    pair = find_pair(source.config(), ROUTE, CONNECTOR_PAIR)
    assert pair is not None
    view = debug_page(source, *pair, now=10.0)
    assert "connector:" in view
    assert SUBMIT_PASSWORD not in page + view
    assert "&lt;secret&gt;" in view
