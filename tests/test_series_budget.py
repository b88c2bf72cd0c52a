"""A (route, smart host) pair costs a Prometheus at most 30 series by default (DESIGN.md: "about 30").

Counted at 10 pairs: on ProbeMetrics after every kind of verdict through every pair, and on a real daemon's
/metrics probing the lab (every pair delivered, one smart host failing). Asking for the per-pair stage
histograms (metrics.per_pair) adds exactly what the README says.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.config import Config, MetricsConfig
from probe.lab import Lab
from probe.metrics import ProbeMetrics
from probe.vocabulary import CONNECTOR_PAIR, Stage, Verdict
from tests.daemon_harness import fetch, running_daemon, scrape, value, wait_for
from tests.test_metrics import decision, make_config, submitted

BUDGET = 30
PAIRS = 10
STAGE_SERIES_PER_PAIR = 8 * 13  # 8 stages x (11 buckets at the default 30 s smart host timeout + _count + _sum)


def series_per_pair(text: str) -> tuple[dict[tuple[str, str], int], int]:
    """Return how many series each pair has on a /metrics page, and how many series have no pair labels."""
    per_pair: Counter[tuple[str, str]] = Counter()
    other = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "route" in sample.labels:
                per_pair[(sample.labels["route"], sample.labels["smart_host"])] += 1
            else:
                other += 1
    return dict(per_pair), other


def ten_pairs(*, per_pair: tuple[str, ...] = (), connectors: bool = False) -> Config:
    """Return a config of 10 pairs (2 routes x 5 smart hosts, STARTTLS and AUTH everywhere); with
    ``connectors``, each route has a connector probe too (2 more pairs)."""
    config = make_config({"c2f": [f"edge-{i}" for i in range(5)], "f2c": [f"edge-{i}" for i in range(5, 10)]},
                         connectors=("c2f", "f2c") if connectors else ())
    return replace(config, metrics=MetricsConfig(per_pair=per_pair))


def probe_every_way(m: ProbeMetrics, config: Config) -> None:
    """Send every pair through every verdict, two kinds of send failure and a bounce included."""
    for route in config.routes:
        hosts = [host.name for host in route.smart_hosts]
        for h in hosts + ([CONNECTOR_PAIR] if route.connector is not None else []):
            r = route.name
            m.observe_submit(r, h, submitted(dict.fromkeys(Stage, 0.1)))
            m.set_in_flight(r, h, 1)
            m.observe_decision(decision(Verdict.DELIVERED, latency=3.0, route=r, host=h))
            for stage, reason in (("starttls", "tls_certificate"), ("connect", "refused")):
                m.observe_decision(decision(Verdict.SEND_FAILED, stage=stage, reason=reason, route=r, host=h))
            for verdict in (Verdict.LOST, Verdict.LATE, Verdict.UNKNOWN):
                m.observe_decision(decision(verdict, route=r, host=h))
            m.observe_decision(decision(Verdict.BOUNCED, reason="recipient", route=r, host=h))
        if route.connector is not None:
            for h in hosts:
                m.observe_carried(route.name, h)


@pytest.mark.parametrize("connectors", [False, True], ids=["direct", "with_connector_probes"])
def test_ten_pairs_have_at_most_30_series_each_by_default(connectors: bool) -> None:
    """At start-up and after every verdict through every pair, no pair has more than 30 series; with a connector
    probe on each route (2 more pairs, each smart host carrying some), neither a connector pair nor a direct one
    (which gains connector_carried_total's series of its smart host) has."""
    config = ten_pairs(connectors=connectors)
    pairs = PAIRS + (len(config.routes) if connectors else 0)
    m = ProbeMetrics(config, process_metrics=False)
    at_start, _ = series_per_pair(m.render().decode())
    probe_every_way(m, config)
    busy, _ = series_per_pair(m.render().decode())
    print("series per pair at start-up:", max(at_start.values()), "after every verdict:", max(busy.values()),
          "connector pairs:", [n for (_, h), n in busy.items() if h == CONNECTOR_PAIR])
    assert len(at_start) == len(busy) == pairs
    assert max(at_start.values()) <= BUDGET
    assert max(busy.values()) <= BUDGET
    assert sum(busy.values()) <= BUDGET * pairs


def test_the_per_pair_stage_histograms_add_104_series_per_pair() -> None:
    """metrics.per_pair: [smtp_stage_seconds] gives each pair its 8 stage histograms and drops the summed ones."""
    default = ProbeMetrics(ten_pairs(), process_metrics=False)
    full = ProbeMetrics(ten_pairs(per_pair=("smtp_stage_seconds",)), process_metrics=False)
    base, base_other = series_per_pair(default.render().decode())
    more, more_other = series_per_pair(full.render().decode())
    assert {pair: more[pair] - base[pair] for pair in base} == dict.fromkeys(base, STAGE_SERIES_PER_PAIR)
    assert base_other - more_other == STAGE_SERIES_PER_PAIR  # the summed histograms are gone


@pytest.mark.parametrize("connector", [None, "smtp"], ids=["direct", "with_connector_probes"])
def test_a_real_daemon_on_ten_pairs_stays_within_the_budget(tmp_path: Path, connector: str | None) -> None:
    """The daemon's own /metrics, probing the lab's 10 pairs (one smart host failing), has at most 30 per pair; with
    the lab's connector probes on (2 more pairs), too."""
    with Lab.start(tmp_path / "lab", smart_hosts_per_forest=5, tarpit_seconds=0.5) as lab:
        failing = "fourthcoffee-edge-1"
        lab.add_fault(target=f"smarthost/{failing}", kind="auth_reject")
        path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2,
                                      connector="smtp" if connector else None)
        with running_daemon(path) as (daemon, server):
            pairs = [(r.name, h.name) for r in daemon.config.routes for h in r.smart_hosts]
            assert len(pairs) == PAIRS
            pairs += [(r.name, CONNECTOR_PAIR) for r in daemon.config.routes if r.connector is not None]

            # A connector probe whose connector tries the failing smart host first waits out its AUTH tarpit (0.5 s
            # here, Exchange's 5 s by default) before failing over: under load it may be lost at the 5 s timeout.
            verdicts = ("delivered_total", "send_failures_total", "lost_total")

            def all_seen() -> bool:
                samples = scrape(server.port)
                return all(any(value(samples, f"mailflow_probe_{name}", route=r, smart_host=h) >= 1
                               for name in verdicts) for r, h in pairs)

            wait_for(all_seen, timeout=60, what="every pair delivered, failing or lost")
            per_pair, other = series_per_pair(fetch(f"http://127.0.0.1:{server.port}/metrics"))
    print(f"series per pair: {sorted(per_pair.values())}; without pair labels: {other}")
    assert len(per_pair) == len(pairs)
    assert max(per_pair.values()) <= BUDGET
