"""The daemon's metrics: every configured series from start-up, verdicts moving the right ones, reloads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from probe.config import (
    Config,
    ConnectorConfig,
    EwsConfig,
    MailboxConfig,
    MetricsConfig,
    RouteConfig,
    SmartHostConfig,
)
from probe.ledger import Decision
from probe.mailbox.base import SearchResult
from probe.metric_families import Kind, PairFamily
from probe.metrics import ALL_PAIRS, ProbeMetrics, pair_shapes, per_pair_families, wanted_series
from probe.secret import Secret
from probe.smtp import SubmitResult
from probe.tls_facts import TlsFacts
from probe.vocabulary import BounceReason, MailboxReason, Stage, Verdict

P = "mailflow_probe_"
REPO = Path(__file__).resolve().parent.parent


def make_config(routes: dict[str, list[str]] | None = None, *, tls_none: tuple[str, ...] = (),
                connectors: tuple[str, ...] = ()) -> Config:
    """Return a config with the given routes (name -> smart host names), all into mailbox "fc"; the routes named
    in ``connectors`` have a connector probe (submit: smtp)."""
    routes = {"c2f": ["edge-1", "edge-2"]} if routes is None else routes
    mailbox = MailboxConfig(name="fc", address="probe@fourthcoffee.com",
                            backend=EwsConfig(url="https://127.0.0.1/EWS/Exchange.asmx", username="svc",
                                          password=Secret("ews-password-123")))
    built = tuple(
        RouteConfig(name=name, sender="probe@contoso.com", mailbox="fc", timeout=300.0, smart_hosts=tuple(
            SmartHostConfig(name=h, host="127.0.0.1", username="c@contoso.com", password=Secret("smtp-pw-456"),
                            tls="none" if h in tls_none else "starttls", allow_insecure=h in tls_none)
            for h in hosts), connector=SUBMISSION if name in connectors else None)
        for name, hosts in routes.items())
    return Config(signing_key_file=Path("key"), state_file=Path("state.db"), mailboxes={"fc": mailbox}, routes=built)


SUBMISSION = ConnectorConfig(submit="smtp", host="127.0.0.1", username="probe@contoso.com",
                             password=Secret("sender-pw-789"), timeout=45.0)


def samples(metrics: ProbeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of the exposition, parsed by prometheus_client, keyed by name and labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class Snapshot:
    """The samples of one scrape, parsed once."""

    def __init__(self, metrics: ProbeMetrics) -> None:
        self.samples = samples(metrics)

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.samples.get((P + name, frozenset(labels.items())))


def names_with(metrics: ProbeMetrics, **labels: str) -> set[str]:
    return {name for name, lbls in samples(metrics) if set(labels.items()) <= lbls}


def decision(verdict: Verdict, *, route: str = "c2f", host: str = "edge-1", stage: str | None = None,
             reason: str | None = None, latency: float | None = None, at: float = 1_700_000_000.0) -> Decision:
    return Decision(probe_id="p1", route=route, smart_host=host, mailbox="fc", message_id="<m@x>", verdict=verdict,
                    stage=stage, reason=reason, latency=latency, decided_at=at)


def tls_facts(not_after: datetime | None) -> TlsFacts:
    return TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", not_after=not_after, subject=None,
                    issuer=None, verified=True)


def submitted(stage_seconds: dict[Stage, float], tls: TlsFacts | None = None) -> SubmitResult:
    return SubmitResult(ok=True, stage_seconds=stage_seconds, tls=tls)


def searched(*, ok: bool, error_reason: MailboxReason | None = None) -> SearchResult:
    return SearchResult(ok=ok, started_at=0.0, finished_at=0.0, error_reason=error_reason)


def created_samples(config: Config) -> list[tuple[str, dict[str, str]]]:
    """Return (sample name, labels) of one sample of every series the family table creates for ``config``'s pairs."""
    own = per_pair_families(config)
    sets = [({"route": route, "smart_host": host}, wanted_series(shape, own))
            for (route, host), shape in pair_shapes(config).items()]
    sets.append(({}, wanted_series(ALL_PAIRS, set(PairFamily) - own)))
    out = []
    for pair_labels, wanted in sets:
        for family, created in wanted.items():
            suffix = {Kind.COUNTER: "_total", Kind.GAUGE: "", Kind.HISTOGRAM: "_count"}[family.row.kind]
            for values in created:
                labels = {**pair_labels, **dict(zip(family.row.labels, values, strict=True))}
                out.append((family.metric_name.removeprefix(P) + suffix, labels))
    return out


def test_every_configured_series_exists_at_zero_from_start_up():
    """Each pair (a connector pair too), mailbox and stage has its series at 0 before any probe, so absence never
    hides a route."""
    config = make_config(connectors=("c2f",))
    m = ProbeMetrics(config)
    v = Snapshot(m)
    expected = created_samples(config)
    assert len(expected) > 2 * len(PairFamily)
    for name, labels in expected:
        assert v(name, **labels) == 0.0, (name, labels)
    for host in ("edge-1", "edge-2"):
        pair = {"route": "c2f", "smart_host": host}
        assert v("sent_total", **pair) == 0.0
        assert v("tls_cert_expiry_timestamp_seconds", **pair) == 0.0
    assert v("mailbox_up", mailbox="fc", backend="ews") == 0.0
    for reason in MailboxReason:
        assert v("mailbox_errors_total", mailbox="fc", reason=str(reason)) == 0.0
    for mode in ("streaming", "polling"):
        assert v("mailbox_watcher_up", mailbox="fc", mode=mode) == 0.0
    assert v("config_last_reload_successful") == 0.0
    assert v("scheduler_lag_seconds_count") == 0.0
    build = [lbls for name, lbls in samples(m) if name == P + "build_info"]
    assert len(build) == 1
    assert dict(build[0])["version"]


def test_a_smart_host_without_tls_has_no_tls_series():
    """With tls: none there is no certificate to expire and no STARTTLS stage to fail at."""
    m = ProbeMetrics(make_config({"c2f": ["plain"]}, tls_none=("plain",)))
    v = Snapshot(m)
    assert v("tls_cert_expiry_timestamp_seconds", route="c2f", smart_host="plain") is None
    assert v("sent_total", route="c2f", smart_host="plain") == 0.0


def test_a_delivery_moves_delivered_latency_and_success():
    """A delivered verdict counts once, fills the latency histogram and sets success and its timestamp."""
    m = ProbeMetrics(make_config())
    m.observe_decision(decision(Verdict.DELIVERED, latency=1.05))
    pair = {"route": "c2f", "smart_host": "edge-1"}
    v = Snapshot(m)
    assert v("delivered_total", **pair) == 1.0
    assert v("delivery_seconds_count", **pair) == 1.0
    assert v("delivery_seconds_sum", **pair) == pytest.approx(1.05)
    assert v("delivery_seconds_bucket", **pair, le="1.0") == 0.0
    assert v("delivery_seconds_bucket", **pair, le="2.0") == 1.0
    assert v("success", **pair) == 1.0
    assert v("last_success_timestamp_seconds", **pair) == 1_700_000_000.0
    assert v("delivered_total", route="c2f", smart_host="edge-2") == 0.0


def test_a_send_failure_moves_success_to_zero_and_counts_stage_and_reason():
    """After a delivery, a send failure sets success 0 and counts its stage and reason."""
    m = ProbeMetrics(make_config())
    m.observe_decision(decision(Verdict.DELIVERED, latency=0.5))
    m.observe_decision(decision(Verdict.SEND_FAILED, stage="rcpt", reason="rejected"))
    pair = {"route": "c2f", "smart_host": "edge-1"}
    v = Snapshot(m)
    assert v("success", **pair) == 0.0
    assert v("send_failures_total", **pair, stage="rcpt", reason="rejected") == 1.0
    assert v("send_failures_total", **pair, stage="rcpt", reason="tempfail") is None  # appears when first seen
    assert v("delivered_total", **pair) == 1.0


def test_lost_sets_success_zero_while_late_and_unknown_leave_it():
    """Lost is a failure; late and unknown are counted but say nothing about the last probe's success."""
    m = ProbeMetrics(make_config())
    pair = {"route": "c2f", "smart_host": "edge-1"}
    m.observe_decision(decision(Verdict.DELIVERED, latency=0.5))
    m.observe_decision(decision(Verdict.LATE))
    m.observe_decision(decision(Verdict.UNKNOWN))
    v = Snapshot(m)
    assert v("success", **pair) == 1.0
    assert v("late_total", **pair) == 1.0
    assert v("unknown_total", **pair) == 1.0
    m.observe_decision(decision(Verdict.LOST))
    v = Snapshot(m)
    assert v("success", **pair) == 0.0
    assert v("lost_total", **pair) == 1.0


def test_a_submission_counts_sent_times_stages_and_notes_certificate_expiry():
    """observe_submit counts the probe as sent, observes each stage's time and the certificate's expiry."""
    m = ProbeMetrics(make_config())
    expiry = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    m.observe_submit("c2f", "edge-2", submitted({Stage.CONNECT: 0.01, Stage.DATA: 0.2}, tls_facts(expiry)))
    pair = {"route": "c2f", "smart_host": "edge-2"}
    v = Snapshot(m)
    assert v("sent_total", **pair) == 1.0
    assert v("smtp_stage_seconds_count", stage="connect") == 1.0  # summed over the pairs by default
    assert v("smtp_stage_seconds_sum", stage="data") == pytest.approx(0.2)
    assert v("smtp_stage_seconds_count", stage="auth") == 0.0
    assert v("tls_cert_expiry_timestamp_seconds", **pair) == expiry.timestamp()


def test_searches_set_mailbox_up_and_count_errors_by_reason():
    """A failed search sets mailbox_up 0 and counts its reason; a good one sets it 1."""
    m = ProbeMetrics(make_config())
    m.observe_search("fc", searched(ok=True))
    v = Snapshot(m)
    assert v("mailbox_up", mailbox="fc", backend="ews") == 1.0
    m.observe_search("fc", searched(ok=False, error_reason=MailboxReason.THROTTLED))
    v = Snapshot(m)
    assert v("mailbox_up", mailbox="fc", backend="ews") == 0.0
    assert v("mailbox_errors_total", mailbox="fc", reason="throttled") == 1.0


def test_exporter_health_series_move():
    """Reload outcome, scheduler lag, in-flight count and watcher state are exported."""
    m = ProbeMetrics(make_config())
    m.set_reload(True, 1234.0)
    m.set_reload(False, None)
    m.observe_lag(0.02)
    m.set_in_flight("c2f", "edge-1", 3)
    m.set_watcher("fc", "streaming", True)
    m.set_watcher("fc", "polling", True)
    v = Snapshot(m)
    assert v("config_last_reload_successful") == 0.0
    assert v("config_last_reload_success_timestamp_seconds") == 1234.0
    assert v("scheduler_lag_seconds_count") == 1.0
    assert v("in_flight", route="c2f", smart_host="edge-1") == 3.0
    assert v("mailbox_watcher_up", mailbox="fc", mode="polling") == 1.0
    assert v("mailbox_watcher_up", mailbox="fc", mode="streaming") == 0.0


def test_apply_config_creates_new_pairs_and_removes_the_series_of_removed_ones():
    """A reload removes every series of a removed route and never brings them back; new routes read 0."""
    m = ProbeMetrics(make_config({"old": ["edge-1"], "kept": ["edge-1"]}))
    m.observe_decision(decision(Verdict.SEND_FAILED, route="old", stage="data", reason="weird_new_reason"))
    m.observe_decision(decision(Verdict.DELIVERED, route="kept", latency=0.3))
    assert names_with(m, route="old")
    m.apply_config(make_config({"kept": ["edge-1"], "new": ["edge-9"]}))
    assert names_with(m, route="old") == set()
    v = Snapshot(m)
    assert v("sent_total", route="new", smart_host="edge-9") == 0.0
    assert v("delivered_total", route="kept", smart_host="edge-1") == 1.0
    m.observe_decision(decision(Verdict.LOST, route="old"))  # an in-flight probe of the removed route
    m.set_in_flight("old", "edge-1", 1)
    assert names_with(m, route="old") == set()


def test_removing_a_mailbox_removes_its_series():
    """A mailbox no longer configured loses its up, errors and watcher series."""
    m = ProbeMetrics(make_config())
    empty = Config(signing_key_file=Path("key"), state_file=Path("state.db"))
    m.apply_config(empty)
    assert names_with(m, mailbox="fc") == set()


def test_delivery_buckets_are_few_hold_the_alert_threshold_and_stop_below_the_timeout():
    """At the default 5m timeout: 8 buckets (+Inf included), one at the 120 s alert threshold, none at or past 300."""
    buckets = PairFamily.DELIVERY_SECONDS.row.buckets
    assert buckets is not None
    bounds = buckets.bounds(300.0)
    assert list(bounds) == sorted(set(bounds))
    assert len(bounds) + 1 == 8
    assert 120.0 in bounds
    assert bounds[-1] < 300.0
    assert buckets.bounds(100.0)[-1] < 100.0


def test_openmetrics_is_served_when_asked_for():
    """An Accept header asking for OpenMetrics gets it; otherwise the Prometheus text format 0.0.4."""
    m = ProbeMetrics(make_config())
    body, content_type = m.render_for("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    _, plain_type = m.render_for(None)
    assert plain_type.startswith("text/plain; version=0.0.4")


@pytest.mark.prometheus
def test_promtool_check_metrics_is_clean(tmp_path):
    """The exposition, after every kind of observation, passes promtool check metrics without a complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/setup")
    m = ProbeMetrics(make_config())
    m.observe_decision(decision(Verdict.DELIVERED, latency=1.5))
    m.observe_decision(decision(Verdict.SEND_FAILED, host="edge-2", stage="starttls", reason="tls_certificate"))
    m.observe_submit("c2f", "edge-1", submitted({Stage.EHLO: 0.01}, tls_facts(datetime(2030, 1, 1, tzinfo=UTC))))
    m.observe_search("fc", searched(ok=False, error_reason=MailboxReason.TIMEOUT))
    m.set_reload(True, 1.0)
    m.observe_lag(0.1)
    result = subprocess.run([promtool, "check", "metrics"], input=m.render(), capture_output=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b""
    assert result.stderr.strip() == b""


def test_name_filter_renders_only_the_named_samples():
    """Asked for some sample names (name[]), /metrics renders those samples and no other series."""
    m = ProbeMetrics(make_config())
    m.observe_lag(0.2)
    body, _ = m.render_for(None, ["mailflow_probe_scheduler_lag_seconds_bucket"])
    lines = [line for line in body.decode().splitlines() if not line.startswith("#")]
    assert lines
    assert all(line.startswith("mailflow_probe_scheduler_lag_seconds_bucket{") for line in lines)
    assert 'le="0.25"} 1.0' in body.decode()


NEW_ROW = '''
    EXAMPLE_HOPS = Row(kind=Kind.GAUGE, help="A made-up family: hops of the last delivered probe.")
    EXAMPLE_REJECTS = Row(kind=Kind.COUNTER, help="A made-up family with a label.", labels=("code",),
                          created=lambda pair: [("550",), ("554",)] if pair.auth else [], grows=True)
'''
NEW_ROW_SCRIPT = '''
import sys
from prometheus_client.exposition import generate_latest
from tests.test_metrics import make_config
from probe.metric_families import PairFamily
from probe.metrics import ProbeMetrics
m = ProbeMetrics(make_config(), version="1", process_metrics=False)
with m._lock:
    m._pairs[("c2f", "edge-1")].inc(PairFamily.EXAMPLE_REJECTS, ("421",))
    m._pairs[("c2f", "edge-2")].set(PairFamily.EXAMPLE_HOPS, 3.0)
assert m.render() == generate_latest(m.registry), "the mirror differs"
sys.stdout.write(m.render().decode())
'''


def test_a_new_family_is_one_row(tmp_path):
    """A row added to the family table (and nothing else) is created for every pair, rendered and mirrored."""
    shutil.copytree(REPO / "probe", tmp_path / "probe", ignore=shutil.ignore_patterns("__pycache__", "lab"))
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__", "node*", "data"))
    table = tmp_path / "probe" / "metric_families.py"
    text = table.read_text(encoding="utf-8")
    anchor = "\n    @property\n    def row(self) -> Row:"
    assert anchor in text
    table.write_text(text.replace(anchor, NEW_ROW + anchor, 1), encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", NEW_ROW_SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "# TYPE mailflow_probe_example_hops gauge" in lines
    assert 'mailflow_probe_example_hops{route="c2f",smart_host="edge-1"} 0.0' in lines
    assert 'mailflow_probe_example_hops{route="c2f",smart_host="edge-2"} 3.0' in lines
    assert 'mailflow_probe_example_rejects_total{code="550",route="c2f",smart_host="edge-2"} 0.0' in lines
    assert 'mailflow_probe_example_rejects_total{code="421",route="c2f",smart_host="edge-1"} 1.0' in lines


def test_per_pair_stage_histograms_follow_the_config_on_reload():
    """metrics.per_pair moves smtp_stage_seconds between each pair and the set summed over them, on reload too."""
    summed = make_config()
    per_pair = replace(summed, metrics=MetricsConfig(per_pair=("smtp_stage_seconds",)))
    m = ProbeMetrics(summed)
    m.observe_submit("c2f", "edge-1", submitted({Stage.CONNECT: 0.2}))
    v = Snapshot(m)
    assert v("smtp_stage_seconds_count", stage="connect") == 1.0
    assert v("smtp_stage_seconds_count", route="c2f", smart_host="edge-1", stage="connect") is None
    m.apply_config(per_pair)
    m.observe_submit("c2f", "edge-1", submitted({Stage.CONNECT: 0.2}))
    v = Snapshot(m)
    assert v("smtp_stage_seconds_count", stage="connect") is None
    assert v("smtp_stage_seconds_count", route="c2f", smart_host="edge-1", stage="connect") == 1.0
    assert v("smtp_stage_seconds_count", route="c2f", smart_host="edge-2", stage="data") == 0.0
    m.apply_config(summed)
    v = Snapshot(m)
    assert v("smtp_stage_seconds_count", stage="connect") == 0.0
    assert names_with(m, stage="connect") == {P + "smtp_stage_seconds_bucket", P + "smtp_stage_seconds_count",
                                              P + "smtp_stage_seconds_sum"}


def test_bounced_series_appear_by_reason_when_seen_and_the_slowest_hop_is_there_from_start_up():
    """bounced_total{reason} appears at a reason's first bounce (a breakdown by reason, as send failures are:
    not 5 series per pair up front, README "Series per pair"); slowest_hop_seconds is at 0 with an empty hop
    until a delivery names one."""
    v = Snapshot(ProbeMetrics(make_config()))
    for host in ("edge-1", "edge-2"):
        for reason in BounceReason:
            assert v("bounced_total", route="c2f", smart_host=host, reason=str(reason)) is None
        assert v("slowest_hop_seconds", route="c2f", smart_host=host, hop="") == 0.0


def test_bounced_counts_its_reason_and_sets_success_to_zero():
    """A bounced verdict counts under its reason only and moves success to 0; nothing else counts it."""
    m = ProbeMetrics(make_config())
    pair = {"route": "c2f", "smart_host": "edge-1"}
    m.observe_decision(decision(Verdict.DELIVERED, latency=1.0))
    m.observe_decision(decision(Verdict.BOUNCED, reason="policy"))
    v = Snapshot(m)
    assert v("bounced_total", **pair, reason="policy") == 1.0
    assert [v("bounced_total", **pair, reason=str(r)) for r in BounceReason if r is not BounceReason.POLICY] == [
        None] * 4
    assert v("success", **pair) == 0.0
    assert (v("lost_total", **pair), v("unknown_total", **pair), v("delivered_total", **pair)) == (0.0, 0.0, 1.0)


def test_lost_then_bounced_counts_once_each():
    """A probe declared lost whose NDR came later counts once as lost and once as bounced."""
    m = ProbeMetrics(make_config())
    pair = {"route": "c2f", "smart_host": "edge-1"}
    m.observe_decision(decision(Verdict.LOST))
    m.observe_decision(decision(Verdict.BOUNCED, reason="routing"))
    v = Snapshot(m)
    assert (v("lost_total", **pair), v("bounced_total", **pair, reason="routing")) == (1.0, 1.0)


def test_the_slowest_hop_is_one_series_labelled_by_its_receiving_host():
    """The slowest hop's delay of the last delivered probe: one series per pair, its hop label following it."""
    m = ProbeMetrics(make_config())
    pair = {"route": "c2f", "smart_host": "edge-1"}
    m.observe_decision(replace(decision(Verdict.DELIVERED, latency=1.0), slowest_hop=("MBX-1.fourthcoffee.com", 0.8)))
    assert Snapshot(m)("slowest_hop_seconds", **pair, hop="MBX-1.fourthcoffee.com") == 0.8
    m.observe_decision(replace(decision(Verdict.LATE), slowest_hop=("edge-2.fourthcoffee.com", 42.0)))
    hops = [dict(lbls) for name, lbls in samples(m) if name == P + "slowest_hop_seconds"
            and dict(lbls)["smart_host"] == "edge-1"]
    assert hops == [{**pair, "hop": "edge-2.fourthcoffee.com"}]


def test_a_connector_pair_has_its_series_and_a_carried_count_per_smart_host_from_start_up():
    """A route's connector pair (smart_host="@connector") has a pair's series at 0 from start-up, and
    connector_carried_total one series per smart host of its route (labelled by that host); a route without
    a connector probe has neither."""
    m = ProbeMetrics(make_config({"c2f": ["edge-1", "edge-2"], "f2c": ["edge-3"]}, connectors=("c2f",)),
                     process_metrics=False)
    v = Snapshot(m)
    connector = {"route": "c2f", "smart_host": "@connector"}
    for name in ("sent_total", "delivered_total", "lost_total", "success", "delivery_seconds_count",
                 "tls_cert_expiry_timestamp_seconds"):  # submit: smtp over STARTTLS: the server's certificate
        assert v(name, **connector) == 0.0, name
    carried = {lbls for name, lbls in samples(m) if name == P + "connector_carried_total"}
    assert carried == {frozenset({("route", "c2f"), ("smart_host", h)}) for h in ("edge-1", "edge-2")}
    assert v("sent_total", route="f2c", smart_host="@connector") is None
    assert m.render() == generate_latest(m.registry)


def test_carried_counts_the_smart_host_that_carried_a_connector_probe_and_ignores_others():
    """observe_carried counts the smart host of the route; a host not of the route, or a route without a
    connector probe, is ignored; the connector pair's verdicts and send failures count under "@connector"."""
    m = ProbeMetrics(make_config({"c2f": ["edge-1", "edge-2"], "f2c": ["edge-3"]}, connectors=("c2f",)),
                     process_metrics=False)
    m.observe_carried("c2f", "edge-2")
    m.observe_carried("c2f", "edge-2")
    m.observe_carried("c2f", "elsewhere")
    m.observe_carried("f2c", "edge-3")
    m.observe_decision(decision(Verdict.DELIVERED, host="@connector", latency=2.5))
    m.observe_decision(decision(Verdict.SEND_FAILED, host="@connector", stage="auth", reason="auth_failed"))
    v = Snapshot(m)
    assert v("connector_carried_total", route="c2f", smart_host="edge-2") == 2.0
    assert v("connector_carried_total", route="c2f", smart_host="edge-1") == 0.0
    assert v("connector_carried_total", route="c2f", smart_host="elsewhere") is None
    assert v("connector_carried_total", route="f2c", smart_host="edge-3") is None
    assert v("delivered_total", route="c2f", smart_host="@connector") == 1.0
    assert v("send_failures_total", route="c2f", smart_host="@connector", stage="auth", reason="auth_failed") == 1.0
    assert v("success", route="c2f", smart_host="@connector") == 0.0
    assert m.render() == generate_latest(m.registry)


def test_a_reload_follows_the_connector_and_its_route_s_smart_hosts():
    """A reload drops the carried series of a removed smart host (keeping the others' counts), and every
    series of the connector pair when the route's connector probe is removed."""
    m = ProbeMetrics(make_config({"c2f": ["edge-1", "edge-2"]}, connectors=("c2f",)))
    m.observe_carried("c2f", "edge-1")
    m.apply_config(make_config({"c2f": ["edge-1"]}, connectors=("c2f",)))
    v = Snapshot(m)
    assert v("connector_carried_total", route="c2f", smart_host="edge-1") == 1.0
    assert v("connector_carried_total", route="c2f", smart_host="edge-2") is None
    m.apply_config(make_config({"c2f": ["edge-1"]}))
    assert names_with(m, smart_host="@connector") == set()
    assert P + "connector_carried_total" not in {name for name, _ in samples(m)}
    m.observe_carried("c2f", "edge-1")  # a connector probe decided after the reload
    assert P + "connector_carried_total" not in {name for name, _ in samples(m)}


def test_the_stage_buckets_reach_the_connector_submission_s_timeout():
    """The stage histograms end at the longest timeout of a smart host or a connector submission."""
    v = Snapshot(ProbeMetrics(make_config(connectors=("c2f",))))
    assert v("smtp_stage_seconds_bucket", stage="connect", le="45.0") == 0.0
    assert v("smtp_stage_seconds_bucket", stage="connect", le="30.0") == 0.0
