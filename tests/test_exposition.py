"""The exposition writes exactly what prometheus_client's encoders write, scrape after scrape, however cached."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from probe.config import Config, MetricsConfig
from probe.exposition import generate_text
from probe.metric_families import OPTIONAL_PAIR_LABELS, Kind, PairFamily
from probe.metrics import ProbeMetrics, histogram_bounds, per_pair_families
from probe.vocabulary import MailboxReason, Stage, Verdict
from tests.test_metrics import decision, make_config, searched, submitted, tls_facts

# What Prometheus itself sends (its default scrape_protocols).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
ODD = 'we"ird\\na\nme ü'
ROUTES = {"c2f": ["edge-1", "edge-2"], "f2c": ["edge-3"], ODD: ["plain"]}


def daemon_metrics(routes: dict[str, list[str]] | None = None, *, per_pair: bool = False) -> ProbeMetrics:
    return ProbeMetrics(config_of(routes, per_pair=per_pair), version="1", process_metrics=False)


def config_of(routes: dict[str, list[str]] | None = None, *, per_pair: bool = False) -> Config:
    """Return the test config; with ``per_pair``, every family with optional pair labels is asked per pair."""
    config = make_config(ROUTES if routes is None else routes, tls_none=("plain",))
    return replace(config, metrics=MetricsConfig(per_pair=OPTIONAL_PAIR_LABELS)) if per_pair else config


MODES = pytest.mark.parametrize("per_pair", [False, True], ids=["default", "per_pair"])


def observe_everything(m: ProbeMetrics, route: str = "c2f", host: str = "edge-1", latency: float = 0.25) -> None:
    """Move every kind of series of one pair (and the mailbox and exporter health series)."""
    m.observe_submit(route, host, submitted({Stage.CONNECT: 0.01, Stage.DATA: 30.0, Stage.AUTH: 1e9},
                                            tls_facts(datetime(2030, 1, 2, tzinfo=UTC))))
    m.observe_decision(decision(Verdict.DELIVERED, route=route, host=host, latency=latency))
    m.observe_decision(decision(Verdict.SEND_FAILED, route=route, host=host, stage="rcpt", reason="rejected"))
    m.observe_decision(decision(Verdict.SEND_FAILED, route=route, host=host, stage="odd\nstage", reason='new "one"'))
    m.observe_decision(decision(Verdict.LOST, route=route, host=host))
    m.observe_decision(decision(Verdict.LATE, route=route, host=host))
    m.observe_decision(decision(Verdict.UNKNOWN, route=route, host=host))
    m.observe_decision(decision(Verdict.BOUNCED, route=route, host=host, reason="recipient"))
    m.observe_decision(replace(decision(Verdict.DELIVERED, route=route, host=host, latency=latency),
                               slowest_hop=(f"MBX-1.{route}", 0.75)))
    m.set_in_flight(route, host, 2)
    m.observe_search("fc", searched(ok=False, error_reason=MailboxReason.THROTTLED))
    m.set_watcher("fc", "streaming", True)
    m.set_reload(True, 1234.5)
    m.observe_lag(0.3)


@MODES
def test_the_probes_metrics_render_byte_for_byte_as_prometheus_client_does(per_pair):
    """Every series of a daemon's registry, after every kind of observation, renders to generate_latest's bytes."""
    m = daemon_metrics(per_pair=per_pair)
    assert m.render() == generate_latest(m.registry)
    observe_everything(m)
    observe_everything(m, ODD, "plain", latency=float("inf"))
    m.lag.observe(-0.0)
    assert m.render() == generate_latest(m.registry)
    assert b'smart_host="plain"' in m.render()


@MODES
def test_a_scrape_after_changes_shows_them_and_keeps_the_unchanged_pairs(per_pair):
    """Scrape after scrape (the unchanged pairs' text kept), the exposition matches a fresh full render."""
    m = daemon_metrics(per_pair=per_pair)
    first = m.render()
    assert m.render() == first
    m.set_in_flight("f2c", "edge-3", 1)
    second = m.render()
    assert second != first
    assert second == generate_latest(m.registry)
    observe_everything(m, "c2f", "edge-2")
    assert m.render() == generate_latest(m.registry)


@MODES
def test_a_reload_drops_removed_pairs_from_the_scrape_and_shows_new_ones_at_zero(per_pair):
    """After apply_config, a removed pair's series are gone from the (cached) scrape and a new pair's read 0."""
    m = daemon_metrics(per_pair=per_pair)
    observe_everything(m, "f2c", "edge-3")
    m.render()
    m.apply_config(make_config({"c2f": ["edge-1"], "new": ["edge-9"], ODD: ["plain"]}, tls_none=("edge-1",)))
    text = m.render()
    assert text == generate_latest(m.registry)
    assert b'route="f2c"' not in text
    assert b'smart_host="edge-2"' not in text
    assert b'mailflow_probe_sent_total{route="new",smart_host="edge-9"} 0.0\n' in text
    assert b'tls_cert_expiry_timestamp_seconds{route="c2f",smart_host="edge-1"}' not in text
    m.apply_config(Config(signing_key_file=make_config().signing_key_file, state_file=make_config().state_file))
    assert m.render() == generate_latest(m.registry)
    assert b"route=" not in m.render()


@MODES
def test_openmetrics_as_prometheus_asks_for_it_matches_prometheus_client(per_pair):
    """The Accept header Prometheus sends gets prometheus_client's OpenMetrics bytes, and its content type."""
    m = daemon_metrics(per_pair=per_pair)
    observe_everything(m)
    body, content_type = m.render_for(PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body == generate_openmetrics(m.registry)
    assert m.render_for(PROMETHEUS_ACCEPT)[0] == body


@MODES
def test_every_accepted_format_matches_prometheus_clients_encoder_for_it(per_pair):
    """Text and OpenMetrics, in every escaping, are what prometheus_client's chosen encoder writes."""
    from prometheus_client.exposition import choose_encoder
    m = daemon_metrics(per_pair=per_pair)
    observe_everything(m)
    for accept in (None, "text/plain;version=0.0.4", "text/plain;version=1.0.0;escaping=allow-utf-8",
                   "text/plain;version=1.0.0;escaping=dots", "application/openmetrics-text",
                   "application/openmetrics-text;version=1.0.0;escaping=values",
                   "application/openmetrics-text;version=1.0.0;escaping=dots"):
        encoder, content_type = choose_encoder(accept or "")
        assert m.render_for(accept) == (encoder(m.registry), content_type), accept


@MODES
def test_a_name_filter_matches_a_restricted_registry(per_pair):
    """name[] keeps the samples a restricted registry keeps: whole families, parts of histograms, or nothing."""
    m = daemon_metrics(per_pair=per_pair)
    observe_everything(m)
    for names in (["mailflow_probe_smtp_stage_seconds_bucket"],
                  ["mailflow_probe_smtp_stage_seconds_count", "mailflow_probe_delivery_seconds_sum"],
                  ["mailflow_probe_sent_total", "mailflow_probe_success", "mailflow_probe_delivery_seconds_bucket",
                   "mailflow_probe_delivery_seconds_count", "mailflow_probe_delivery_seconds_sum"],
                  ["mailflow_probe_sent"], ["mailflow_probe_scheduler_lag_seconds_bucket"], ["nothing"]):
        body, _ = m.render_for(None, names)
        assert body == generate_latest(m.registry.restricted_registry(names)), names
    assert m.render_for(None, ["nothing"])[0] == b""


def reference_metrics(config: Config, registry: CollectorRegistry) -> dict[PairFamily, Counter | Gauge | Histogram]:
    """Return a prometheus_client metric for every row of the family table, as its row declares it."""
    bounds, own = histogram_bounds(config), per_pair_families(config)
    made: dict[PairFamily, Counter | Gauge | Histogram] = {}
    for family in PairFamily:
        row = family.row
        # an own label of a pair label's name stands instead of the pair's (connector_carried's smart_host)
        labels = list(dict.fromkeys(["route", "smart_host", *row.labels])) if family in own else list(row.labels)
        if row.kind is Kind.COUNTER:
            made[family] = Counter(family.metric_name, row.help, labels, registry=registry)
        elif row.kind is Kind.GAUGE:
            made[family] = Gauge(family.metric_name, row.help, labels, registry=registry)
        else:
            made[family] = Histogram(family.metric_name, row.help, labels, registry=registry,
                                     buckets=bounds[family])
    return made


@MODES
def test_pair_series_hold_what_prometheus_clients_own_metrics_would(per_pair):
    """A pair's series read as prometheus_client's own metrics, made from the same table rows, fed the same values."""
    config = config_of({"c2f": ["edge-1"]}, per_pair=per_pair)
    m = ProbeMetrics(config, process_metrics=False)
    ref = CollectorRegistry()
    made = reference_metrics(config, ref)
    pair = ("c2f", "edge-1")
    stage_labels = (*pair, "connect") if per_pair else ("connect",)
    for seconds in (0.0, 0.01, 0.010000001, 0.05, 1.0, 29.9, 30.0, 31.0, 300.0, float("inf"), 1e-300, 7.0):
        m.observe_submit(*pair, submitted({Stage.CONNECT: seconds}))
        m.observe_decision(decision(Verdict.DELIVERED, latency=seconds, at=1e9 + seconds))
        made[PairFamily.SMTP_STAGE_SECONDS].labels(*stage_labels).observe(seconds)  # type: ignore[union-attr]
        made[PairFamily.DELIVERY_SECONDS].labels(*pair).observe(seconds)  # type: ignore[union-attr]
        made[PairFamily.SENT].labels(*pair).inc()  # type: ignore[union-attr]
        made[PairFamily.DELIVERED].labels(*pair).inc()  # type: ignore[union-attr]
        made[PairFamily.SUCCESS].labels(*pair).set(1)  # type: ignore[union-attr]
        made[PairFamily.LAST_SUCCESS_TIMESTAMP_SECONDS].labels(*pair).set(1e9 + seconds)  # type: ignore[union-attr]
    m.observe_decision(decision(Verdict.SEND_FAILED, stage="rcpt", reason="rejected"))
    made[PairFamily.SEND_FAILURES].labels(*pair, "rcpt", "rejected").inc()  # type: ignore[union-attr]
    made[PairFamily.SUCCESS].labels(*pair).set(0)  # type: ignore[union-attr]
    ours = m.render().decode().splitlines()
    theirs = [line for line in generate_latest(ref).decode().splitlines() if not line.startswith("#")]
    assert len(theirs) > 20
    for line in theirs:
        assert line in ours, line


@MODES
def test_a_scrape_shows_each_pair_consistently_while_other_threads_observe(per_pair):
    """Under concurrent observes, every scrape shows one state: stage counts = +Inf bucket = sent (pair or summed)."""
    m = daemon_metrics({"c2f": [f"edge-{i}" for i in range(8)]}, per_pair=per_pair)
    stop = threading.Event()

    def observe(host: str) -> None:
        while not stop.is_set():
            m.observe_submit("c2f", host, submitted(dict.fromkeys(Stage, 0.2)))
            m.observe_decision(decision(Verdict.DELIVERED, host=host, latency=0.5))

    threads = [threading.Thread(target=observe, args=(f"edge-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            assert_consistent(m.render().decode(), per_pair=per_pair)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert m.render() == generate_latest(m.registry)


def assert_consistent(text: str, *, per_pair: bool) -> None:
    """Check the histograms agree with themselves and with the counters, in one scrape."""
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    sent_in_all = 0.0
    for (name, labels), value in values.items():
        if name == "mailflow_probe_sent_total":
            sent_in_all += value
            for stage in Stage:
                if per_pair:
                    assert_stage(values, tuple(sorted((*labels, ("stage", str(stage))))), value)
        if name == "mailflow_probe_delivered_total":
            assert values[("mailflow_probe_delivery_seconds_count", labels)] == value
    if not per_pair:
        for stage in Stage:
            assert_stage(values, (("stage", str(stage)),), sent_in_all)


def assert_stage(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], key: tuple[tuple[str, str], ...],
                 expected: float) -> None:
    assert values[("mailflow_probe_smtp_stage_seconds_count", key)] == expected
    inf = tuple(sorted((*key, ("le", "+Inf"))))
    assert values[("mailflow_probe_smtp_stage_seconds_bucket", inf)] == expected


OPS = st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["edge-1", "edge-2", "edge-3", "plain"]),
                         st.floats(allow_nan=True, allow_infinity=True)), max_size=30)


@settings(max_examples=40, deadline=None)
@given(rounds=st.lists(OPS, min_size=1, max_size=4), per_pair=st.booleans())
def test_any_observations_between_scrapes_render_as_prometheus_client_does(rounds, per_pair):
    """Whatever is observed (NaN and infinities too) between any number of scrapes, each equals generate_latest."""
    m = daemon_metrics({"c2f": ["edge-1", "edge-2"], "f2c": ["edge-3", "plain"]}, per_pair=per_pair)
    for ops in rounds:
        for op, host, x in ops:
            route = "f2c" if host in ("edge-3", "plain") else "c2f"
            apply(m, op, route, host, x)
        assert m.render() == generate_latest(m.registry)


def apply(m: ProbeMetrics, op: int, route: str, host: str, x: float) -> None:
    if op == 0:
        m.observe_submit(route, host, submitted({Stage.CONNECT: x, Stage.RCPT: abs(x)}))
    elif op == 1:
        m.observe_decision(decision(Verdict.DELIVERED, route=route, host=host, latency=x, at=abs(x)))
    elif op == 2:
        m.observe_decision(decision(Verdict.SEND_FAILED, route=route, host=host, stage="data", reason=str(x)))
    elif op == 3:
        m.observe_decision(decision(Verdict.LOST, route=route, host=host))
    elif op == 4:
        m.set_in_flight(route, host, int(x) if abs(x) < 1e6 else 0)
    elif op == 5:
        m.apply_config(make_config({"c2f": ["edge-1"], "f2c": [host]}, tls_none=("plain",)))
    else:
        m.observe_lag(x)


def test_awkward_label_values_and_kinds_render_as_prometheus_client_does():
    """Quotes, backslashes, newlines and non-ASCII in label values, infinities, and info/counter munging match."""
    registry = CollectorRegistry()
    counter = Counter("c", 'help with \\ and\nnewline', ["a", "b"], registry=registry)
    counter.labels('say "hi"', "back\\slash\nline").inc(2)
    counter.labels("ünï", "").inc()
    Gauge("g", "g", registry=registry).set(float("inf"))
    Gauge("n", "n", registry=registry).set(float("nan"))
    Histogram("h", "h", ["x"], registry=registry, buckets=(1e-3, 0.5)).labels("y").observe(7)
    Info("i", "i", registry=registry).info({"k": "v"})
    assert generate_text(registry) == generate_latest(registry)


def test_setting_a_gauge_to_the_value_it_has_re_renders_nothing():
    """The daemon sets every pair's in_flight every few seconds: an unchanged value keeps the pair's kept text
    (the very same bytes objects), a changed one renders it anew."""
    m = daemon_metrics({"c2f": ["edge-1", "edge-2"]})
    m.set_in_flight("c2f", "edge-1", 1)
    first, _ = m.render_parts_for(None)
    m.set_in_flight("c2f", "edge-1", 1)
    m.set_in_flight("c2f", "edge-2", 0)
    again, _ = m.render_parts_for(None)
    assert len(first) == len(again)
    assert all(a is b for a, b in zip(first[:-1], again[:-1], strict=True))  # the tail is the other families
    m.set_in_flight("c2f", "edge-2", 2)
    changed, _ = m.render_parts_for(None)
    assert b'mailflow_probe_in_flight{route="c2f",smart_host="edge-2"} 2.0\n' in b"".join(changed)
    assert b"".join(changed) == generate_latest(m.registry)
