"""The fast text exposition writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from probe.exposition import generate_text
from probe.metrics import ProbeMetrics
from tests.test_metrics import make_config


def test_the_probes_metrics_render_byte_for_byte_as_prometheus_client_does():
    """Every series of a daemon's registry, after observations, renders to generate_latest's exact bytes."""
    m = ProbeMetrics(make_config({"c2f": ["edge-1", "edge-2"], "f2c": ["edge-3"]}), process_metrics=False)
    m.observe_lag(0.3)
    m.lag.observe(-0.0)
    m.in_flight.labels("c2f", "edge-1").set(-0.0)
    m.tls_expiry.labels("c2f", "edge-2").set(1.5e12)
    m.delivery_seconds.labels("c2f", "edge-1").observe(0.25)
    assert generate_text(m.registry) == generate_latest(m.registry)


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
