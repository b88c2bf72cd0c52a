"""The daemon's metrics: every configured series from start-up, verdicts moving the right ones, reloads."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.config import Config, EwsConfig, MailboxConfig, RouteConfig, SmartHostConfig
from probe.ledger import Decision
from probe.mailbox.base import SearchResult
from probe.metrics import ProbeMetrics, delivery_buckets, possible_failures
from probe.secret import Secret
from probe.smtp import SubmitResult
from probe.tls_facts import TlsFacts
from probe.vocabulary import BounceReason, MailboxReason, Stage, Verdict

P = "mailflow_probe_"


def make_config(routes: dict[str, list[str]] | None = None, *, tls_none: tuple[str, ...] = ()) -> Config:
    """Return a config with the given routes (name -> smart host names), all into mailbox "fc"."""
    routes = {"c2f": ["edge-1", "edge-2"]} if routes is None else routes
    mailbox = MailboxConfig(name="fc", address="probe@fourthcoffee.com",
                            backend=EwsConfig(url="https://127.0.0.1/EWS/Exchange.asmx", username="svc",
                                          password=Secret("ews-password-123")))
    built = tuple(
        RouteConfig(name=name, sender="probe@contoso.com", mailbox="fc", timeout=300.0, smart_hosts=tuple(
            SmartHostConfig(name=h, host="127.0.0.1", username="c@contoso.com", password=Secret("smtp-pw-456"),
                            tls="none" if h in tls_none else "starttls", allow_insecure=h in tls_none)
            for h in hosts))
        for name, hosts in routes.items())
    return Config(signing_key_file=Path("key"), state_file=Path("state.db"), mailboxes={"fc": mailbox}, routes=built)


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


PAIR_SERIES = ("sent_total", "delivered_total", "lost_total", "late_total", "unknown_total", "success",
               "last_success_timestamp_seconds", "in_flight", "delivery_seconds_count", "delivery_seconds_sum",
               "tls_cert_expiry_timestamp_seconds")


def test_every_configured_series_exists_at_zero_from_start_up():
    """Each pair, mailbox and stage has its series at 0 before any probe, so absence never hides a route."""
    m = ProbeMetrics(make_config())
    v = Snapshot(m)
    for host in ("edge-1", "edge-2"):
        pair = {"route": "c2f", "smart_host": host}
        for name in PAIR_SERIES:
            assert v(name, **pair) == 0.0, name
        for stage in Stage:
            assert v("smtp_stage_seconds_count", **pair, stage=str(stage)) == 0.0
        assert v("send_failures_total", **pair, stage="connect", reason="refused") == 0.0
        assert v("send_failures_total", **pair, stage="starttls", reason="tls_certificate") == 0.0
        assert v("send_failures_total", **pair, stage="auth", reason="auth_failed") == 0.0
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
    assert v("send_failures_total", route="c2f", smart_host="plain", stage="starttls",
                 reason="tls_handshake") is None
    assert ("starttls", "tls_handshake") not in possible_failures(make_config(
        {"c2f": ["plain"]}, tls_none=("plain",)).routes[0].smart_hosts[0])


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
    assert v("delivery_seconds_bucket", **pair, le="1.25") == 1.0
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
    assert v("send_failures_total", **pair, stage="rcpt", reason="tempfail") == 0.0
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
    assert v("smtp_stage_seconds_count", **pair, stage="connect") == 1.0
    assert v("smtp_stage_seconds_sum", **pair, stage="data") == pytest.approx(0.2)
    assert v("smtp_stage_seconds_count", **pair, stage="auth") == 0.0
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


def test_delivery_buckets_resolve_a_tenth_of_a_second_and_end_at_the_timeout():
    """Buckets rise strictly from 0.1 s in 0.1 s steps to 1 s and end at the route timeout."""
    buckets = delivery_buckets(300.0)
    assert buckets[:10] == pytest.approx([0.1 * i for i in range(1, 11)])
    assert list(buckets) == sorted(set(buckets))
    assert buckets[-1] == 300.0
    assert delivery_buckets(100.0)[-1] == 100.0


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


def test_every_pair_has_its_bounced_series_by_reason_from_start_up():
    """bounced_total{reason} exists at 0 for each reason class of each pair, and slowest_hop_seconds at 0 with an
    empty hop until a delivery names one."""
    v = Snapshot(ProbeMetrics(make_config()))
    for host in ("edge-1", "edge-2"):
        for reason in BounceReason:
            assert v("bounced_total", route="c2f", smart_host=host, reason=str(reason)) == 0.0
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
        0.0] * 4
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
