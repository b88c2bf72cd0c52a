"""Benchmark one /metrics scrape at many (route, smart host) pairs: CPU seconds and bytes, before and after.

Run: python bench/metrics_render.py [--quick] [--scrapes 5] [--connectors]
In-process: a ProbeMetrics built from a generated config shaped like the lab's (4 routes, 2 forests x 2
mailboxes, each route through all of its source forest's smart hosts, STARTTLS and AUTH everywhere), every
pair probed once. Between two timed scrapes a fraction of the pairs probes again (0, a quarter as at a 60 s
interval and a 15 s scrape, all). "before" is prometheus_client's generate_latest of the registry (it
collects every sample afresh); "text" and "openmetrics" are ProbeMetrics.render_for as /metrics calls it,
with no Accept header and with the one Prometheus sends. CPU is time.process_time per scrape, the mean over
the scrapes. ``--connectors`` gives each route a connector probe (submit: smtp): 4 more pairs, each of whose
probes counts connector_carried_total for one of the route's smart hosts. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table
from prometheus_client.exposition import generate_latest

from probe.config import Config, ConnectorConfig, EwsConfig, MailboxConfig, RouteConfig, SmartHostConfig
from probe.ledger import Decision
from probe.metrics import ProbeMetrics, pair_shapes
from probe.secret import Secret
from probe.smtp import SubmitResult
from probe.tls_facts import TlsFacts
from probe.vocabulary import CONNECTOR_PAIR, Stage, Verdict

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
FORESTS = (("contoso", "contoso.com"), ("fourthcoffee", "fourthcoffee.com"))
ROUTES_PER_CONFIG = 4
FRACTIONS = (0.0, 0.25, 1.0)
TLS = TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", not_after=datetime(2030, 1, 1, tzinfo=UTC),
               subject=None, issuer=None, verified=True)


def lab_like_config(pairs: int, *, connectors: bool = False) -> Config:
    """Return a config of 4 routes with ``pairs`` (route, smart host) pairs in all (and a connector probe each,
    with ``connectors``)."""
    mailboxes = {
        f"{forest}-{i}": MailboxConfig(name=f"{forest}-{i}", address=f"probe{i}@{domain}", backend=EwsConfig(
            url="https://127.0.0.1/EWS/Exchange.asmx", username="svc", password=Secret("ews-password")))
        for forest, domain in FORESTS for i in (1, 2)}
    hosts = {forest: tuple(
        SmartHostConfig(name=f"{forest}-smtp-{n}", host="127.0.0.1", username=f"probe@{domain}",
                        password=Secret("smtp-password"), tls="starttls")
        for n in range(pairs // ROUTES_PER_CONFIG)) for forest, domain in FORESTS}
    routes = tuple(
        RouteConfig(name=f"{source}-to-{target}" + (f"-{i}" if i > 1 else ""), sender=f"probe1@{source_domain}",
                    mailbox=f"{target}-{i}", smart_hosts=hosts[source],
                    connector=ConnectorConfig(submit="smtp", host="127.0.0.1", username=f"probe1@{source_domain}",
                                              password=Secret("sender-password")) if connectors else None)
        for source, source_domain in FORESTS for target, _ in FORESTS if target != source for i in (1, 2))
    return Config(signing_key_file=Path("key"), state_file=Path("state.db"), mailboxes=mailboxes, routes=routes)


def probe_pair(m: ProbeMetrics, route: str, host: str, n: int, carriers: tuple[str, ...] = ()) -> None:
    """Record what one delivered probe of a pair records (a connector pair's: carried by one of ``carriers``)."""
    stages = {stage: 0.001 * (n % 97 + 1) * (i + 1) for i, stage in enumerate(Stage)}
    m.observe_submit(route, host, SubmitResult(ok=True, stage_seconds=stages, tls=TLS))
    m.set_in_flight(route, host, 1)
    m.observe_decision(Decision(probe_id=f"p{n}", route=route, smart_host=host, mailbox="m", message_id="<m@x>",
                                verdict=Verdict.DELIVERED, stage=None, reason=None, latency=0.3 + (n % 50) / 10,
                                decided_at=1_700_000_000.0 + n))
    if host == CONNECTOR_PAIR and carriers:
        m.observe_carried(route, carriers[n % len(carriers)])
    m.set_in_flight(route, host, 0)


def series_per_pair(text: str, pairs: int) -> float:
    """Return how many series of a /metrics page carry the pair labels, per pair."""
    return sum(1 for line in text.splitlines() if not line.startswith("#") and 'smart_host="' in line) / pairs


def cpu(action: Callable[[], bytes]) -> tuple[float, int]:
    """Return the CPU seconds one call of ``action`` takes and the size of what it returned."""
    start = time.process_time()
    body = action()
    return time.process_time() - start, len(body)


def measure(pairs: int, scrapes: int, *, connectors: bool = False) -> list[list[object]]:
    """Return the table rows for one number of pairs."""
    config = lab_like_config(pairs, connectors=connectors)
    shapes = pair_shapes(config)
    names = list(shapes)
    m = ProbeMetrics(config)
    for n, pair in enumerate(names):
        probe_pair(m, *pair, n, shapes[pair].carriers)
    before, size = cpu(lambda: generate_latest(m.registry))
    per_pair = series_per_pair(m.render().decode(), len(names))
    rows: list[list[object]] = []
    for fraction in FRACTIONS:
        changed = round(len(names) * fraction)
        results = {}
        for style, accept in (("text", None), ("openmetrics", PROMETHEUS_ACCEPT)):
            m.render_for(accept)
            total, cursor = 0.0, 0
            for _ in range(scrapes):
                for k in range(changed):
                    pair = names[(cursor + k) % len(names)]
                    probe_pair(m, *pair, cursor + k, shapes[pair].carriers)
                cursor += changed
                seconds, _ = cpu(lambda accept=accept: m.render_for(accept)[0])  # type: ignore[misc]
                total += seconds
            results[style] = total / scrapes
        rows.append([len(names), f"{fraction:g}", f"{size / 1e6:.2f} MB", f"{per_pair:.1f}", f"{before:.3f}",
                     f"{results['text']:.3f}", f"{results['openmetrics']:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the scrape cost table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 and 500 pairs, 2 scrapes each")
    parser.add_argument("--scrapes", type=int, default=5, help="timed scrapes per row (default 5)")
    parser.add_argument("--connectors", action="store_true", help="a connector probe on each route (4 more pairs)")
    args = parser.parse_args(argv)
    sizes = (100, 500) if args.quick else (100, 500, 2000)
    scrapes = 2 if args.quick else max(1, args.scrapes)
    rows = [row for pairs in sizes for row in measure(pairs, scrapes, connectors=args.connectors)]
    print(table(["pairs", "changed", "bytes", "series per pair", "before: generate_latest CPU s", "after: text CPU s",
                 "after: openmetrics CPU s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
