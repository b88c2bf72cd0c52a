"""The daemon's Prometheus metrics: every series of DESIGN.md ("Metrics"), created up front from the config.

One ``ProbeMetrics`` owns a fresh ``CollectorRegistry``. Every configured series exists from start-up at 0,
so absence never hides a route; a reload creates the series of new routes, smart hosts and mailboxes and
removes those of the ones that are gone. News about a pair or mailbox that is not configured (an in-flight
probe of a removed route, decided after the reload) is ignored, so removed series never come back.
"""

from __future__ import annotations

import math
import platform
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from probe import __version__
from probe.config import Config, RouteConfig, SmartHostConfig
from probe.exposition import Values, cached_parts, generate_text
from probe.ledger import Decision
from probe.mailbox.base import SearchResult
from probe.metric_families import PAIR_LABELS, PREFIX, LabelValues, Limit, PairFamily, PairShape
from probe.pair_series import HEADS, SeriesSet, Snapshot, bucket_texts, render, to_metrics
from probe.prometheus_internals import encoder_style
from probe.smtp import SubmitResult
from probe.vocabulary import CONNECTOR_PAIR, BounceReason, LocalResource, MailboxReason, Verdict

PAIR: Final = PAIR_LABELS
WATCH_MODES: Final = ("streaming", "polling")
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

_M = TypeVar("_M", Counter, Gauge)

# The *_created series would add one line per counter and histogram of every pair (a fifth of the output at
# thousands of pairs) and nothing a dashboard or alert here uses. This process exports only these metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def shape_of(route: str, host: SmartHostConfig) -> PairShape:
    """Return what the family table needs to know of a configured pair."""
    return PairShape(route=route, smart_host=host.name, tls=host.tls != "none", auth=host.username is not None)


def connector_shape(route: RouteConfig) -> PairShape | None:
    """Return what the family table needs to know of a route's connector pair (None: the route has none).

    Its smart hosts are its carriers; it speaks TLS when submitted over SMTP with TLS (the submission server's
    certificate); it always authenticates (as the sender, over SMTP or EWS).
    """
    if route.connector is None:
        return None
    smtp_tls = route.connector.submit == "smtp" and route.connector.tls != "none"
    return PairShape(route=route.name, smart_host=CONNECTOR_PAIR, tls=smtp_tls, auth=True,
                     carriers=tuple(host.name for host in route.smart_hosts))


def pair_shapes(config: Config) -> dict[tuple[str, str], PairShape]:
    """Return the shape of every pair of ``config``, in config order: each route's smart hosts, then its
    connector pair."""
    shapes = {}
    for route in config.routes:
        for host in route.smart_hosts:
            shapes[(route.name, host.name)] = shape_of(route.name, host)
        connector = connector_shape(route)
        if connector is not None:
            shapes[(route.name, CONNECTOR_PAIR)] = connector
    return shapes


ALL_PAIRS: Final = PairShape(route="", smart_host="", tls=True, auth=True)  # the set summed over the pairs


def per_pair_families(config: Config) -> frozenset[PairFamily]:
    """Return the families each pair has of its own: all but those with optional pair labels not asked for."""
    asked = set(config.metrics.per_pair)
    return frozenset(f for f in PairFamily if not f.row.optional_pair_labels or f.key in asked)


def wanted_series(shape: PairShape, families: Iterable[PairFamily] = PairFamily) -> dict[PairFamily,
                                                                                        tuple[LabelValues, ...]]:
    """Return the series of ``families`` a pair of ``shape`` has from start-up (the family table's ``created``)."""
    return {family: tuple(family.row.created(shape)) for family in families}


def histogram_bounds(config: Config) -> dict[PairFamily, tuple[float, ...]]:
    """Return each histogram family's bucket bounds (ending with +Inf) for ``config``'s longest timeouts."""
    limits = {
        Limit.ROUTE_TIMEOUT: max([r.timeout for r in config.routes] or [config.defaults.timeout]),
        Limit.SMART_HOST_TIMEOUT: max([h.timeout for r in config.routes for h in r.smart_hosts]
                                      + [r.connector.timeout for r in config.routes if r.connector is not None]
                                      or [30.0]),
    }
    return {family: (*family.row.buckets.bounds(limits[family.row.buckets.limit]), math.inf)
            for family in PairFamily if family.row.buckets is not None}


@dataclass(frozen=True)
class _Layout:
    """The labelled series a config calls for; ``pairs`` in config order."""

    pairs: dict[tuple[str, str], PairShape]
    mailboxes: frozenset[str]
    backends: dict[str, str]  # each mailbox's backend (ews, ...): mailbox_up's backend label
    per_pair: frozenset[PairFamily]  # the families each pair has of its own; the others are summed over the pairs

    @classmethod
    def of(cls, config: Config) -> _Layout:
        pairs = pair_shapes(config)
        backends = {name: mailbox.backend.name for name, mailbox in config.mailboxes.items()}
        return cls(pairs, frozenset(config.mailboxes), backends, per_pair_families(config))


class _PairCollector(Collector):
    """The registry's view of the pair families: a snapshot of every pair, as ``Metric``s."""

    def __init__(self, snapshot: Callable[[], list[Snapshot]], le: Mapping[PairFamily, Sequence[str]]) -> None:
        self._snapshot, self._le = snapshot, le

    def collect(self) -> Iterable[Metric]:
        """Return the pair families with every pair's samples."""
        return to_metrics(self._snapshot(), self._le)

    def describe(self) -> Iterable[Metric]:
        """Return the pair families without samples."""
        return [head.metric() for head in HEADS]


class _Forward(Collector):
    """Everything else the daemon exports (a registry of its own), as one collector of the main registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        """Return the other registry's families."""
        return self._registry.collect()

    def describe(self) -> Iterable[Metric]:
        """Return the other registry's families (their names are what a restricted registry looks up)."""
        return list(self._registry.collect())


class ProbeMetrics:
    """Every metric of the daemon.

    The pair families hold plain numbers per (route, smart host) pair and render each pair's text only when the
    pair changed since the last scrape; everything else is prometheus_client metrics in a registry of their own.
    ``registry`` holds both (pairs first), for prometheus_client's own encoders.
    """

    def __init__(self, config: Config, *, version: str = __version__, process_metrics: bool = True) -> None:
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._children: dict[Counter | Gauge, set[tuple[str, ...]]] = {}
        self._bounds = histogram_bounds(config)
        self._le = bucket_texts(self._bounds)
        self._pairs: dict[tuple[str, str], SeriesSet] = {}
        self._all_pairs = SeriesSet(None, self._bounds)  # the families summed over the pairs
        self._health = CollectorRegistry(auto_describe=True)
        self._build_families()
        if process_metrics:
            ProcessCollector(registry=self._health)
            PlatformCollector(registry=self._health)
            GCCollector(registry=self._health)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_PairCollector(self._snapshots, self._le))
        self.registry.register(_Forward(self._health))
        self.build_info.labels(version=version, python=platform.python_version()).set(1)
        self._layout = _Layout({}, frozenset(), {}, frozenset(PairFamily))
        self.apply_config(config)

    # -- families --------------------------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: Iterable[str] = PAIR) -> Counter:
        return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=self._health)

    def _gauge(self, name: str, doc: str, labels: Iterable[str] = PAIR) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=self._health)

    def _build_families(self) -> None:
        self.mailbox_up = self._gauge("mailbox_up", "1 when the last search of the mailbox worked.",
                                      ["mailbox", "backend"])
        self.mailbox_errors = self._counter("mailbox_errors_total", "Failed searches of a mailbox, by reason.",
                                            ["mailbox", "reason"])
        self.build_info = self._gauge("build_info", "Always 1; the labels give the version.", ["version", "python"])
        self.reload_ok = self._gauge("config_last_reload_successful",
                                     "1 when the last configuration (re)load worked.", ())
        self.reload_time = self._gauge("config_last_reload_success_timestamp_seconds",
                                       "Unix time of the last successful configuration (re)load.", ())
        self.lag = Histogram(f"{PREFIX}_scheduler_lag_seconds", "How late scheduled jobs started.",
                             registry=self._health, buckets=_LAG_BUCKETS)
        self.watcher_up = self._gauge("mailbox_watcher_up", "1 when the mailbox's watcher in this mode runs.",
                                      ["mailbox", "mode"])
        self.local_errors = self._counter("local_errors_total", "Failures of the probe's own host, by what ran "
                                          "out; the probes they hit end unknown (reason local).", ["resource"])
        for resource in LocalResource:
            self.local_errors.labels(str(resource))
        self.forged_tags = self._counter("forged_tags_total", "Messages in the mailbox whose probe tag does not "
                                         "verify (never counted as a probe, never deleted).", ["mailbox"])

    # -- series bookkeeping ------------------------------------------------------------------------

    def _child(self, family: _M, *values: str) -> _M:
        self._children.setdefault(family, set()).add(values)
        return family.labels(*values)

    def _drop(self, family: Counter | Gauge, keep: frozenset[tuple[str, ...]], width: int) -> None:
        kept = self._children.setdefault(family, set())
        for values in sorted(kept):
            if values[:width] not in keep:
                family.remove(*values)
                kept.discard(values)

    def apply_config(self, config: Config) -> None:
        """Create the series of new pairs and mailboxes; remove those no longer configured."""
        layout = _Layout.of(config)
        with self._lock:
            pairs = {}
            for pair, shape in layout.pairs.items():
                series = self._pairs.get(pair) or SeriesSet(pair, self._bounds)
                series.conform(wanted_series(shape, layout.per_pair))
                pairs[pair] = series
            self._pairs = pairs
            self._all_pairs.conform(wanted_series(ALL_PAIRS, set(PairFamily) - layout.per_pair) if pairs else {})
            for mailbox in layout.mailboxes:
                self._create_mailbox(mailbox, layout.backends[mailbox])
            self._drop(self.mailbox_up, frozenset(layout.backends.items()), 2)  # a mailbox that changed backend too
            mailboxes = frozenset((m,) for m in layout.mailboxes)
            for family in (self.mailbox_errors, self.watcher_up, self.forged_tags):
                self._drop(family, mailboxes, 1)
            self._layout = layout

    def _create_mailbox(self, mailbox: str, backend: str) -> None:
        self._child(self.mailbox_up, mailbox, backend)
        for reason in MailboxReason:
            self._child(self.mailbox_errors, mailbox, str(reason))
        for mode in WATCH_MODES:
            self._child(self.watcher_up, mailbox, mode)
        self._child(self.forged_tags, mailbox)

    def _pair(self, route: str, smart_host: str) -> SeriesSet | None:
        """Return the pair's series, or None when the pair is not configured."""
        return self._pairs.get((route, smart_host))

    def _own_or_all(self, series: SeriesSet, family: PairFamily) -> SeriesSet:
        """Return where a pair's observation of ``family`` goes: its own set, or the set summed over the pairs."""
        return series if family in self._layout.per_pair else self._all_pairs

    # -- observations ------------------------------------------------------------------------------

    def observe_decision(self, decision: Decision) -> None:
        """Count one verdict; move ``success`` on delivered, send_failed, lost and bounced; note the slowest hop."""
        with self._lock:
            series = self._pair(decision.route, decision.smart_host)
            if series is None:
                return
            verdict = decision.verdict
            if decision.slowest_hop is not None:
                hop, seconds = decision.slowest_hop
                series.set(PairFamily.SLOWEST_HOP_SECONDS, seconds, (hop,))
            if verdict is Verdict.DELIVERED:
                series.inc(PairFamily.DELIVERED)
                if decision.latency is not None:
                    series.observe(PairFamily.DELIVERY_SECONDS, decision.latency)
                series.set(PairFamily.SUCCESS, 1.0)
                series.set(PairFamily.LAST_SUCCESS_TIMESTAMP_SECONDS, float(decision.decided_at))
            elif verdict is Verdict.SEND_FAILED:
                series.inc(PairFamily.SEND_FAILURES, (decision.stage or "unknown", decision.reason or "unknown"))
                series.set(PairFamily.SUCCESS, 0.0)
            elif verdict is Verdict.LOST:
                series.inc(PairFamily.LOST)
                series.set(PairFamily.SUCCESS, 0.0)
            elif verdict is Verdict.BOUNCED:
                series.inc(PairFamily.BOUNCED, (decision.reason or str(BounceReason.OTHER),))
                series.set(PairFamily.SUCCESS, 0.0)
            else:
                series.inc(PairFamily.LATE if verdict is Verdict.LATE else PairFamily.UNKNOWN)

    def observe_submit(self, route: str, smart_host: str, result: SubmitResult) -> None:
        """Count a submission and time its stages; note the certificate's expiry when TLS was used.

        Send failures are counted by ``observe_decision`` (the ledger decides them), never here.
        """
        with self._lock:
            series = self._pair(route, smart_host)
            if series is None:
                return
            series.inc(PairFamily.SENT)
            stages = self._own_or_all(series, PairFamily.SMTP_STAGE_SECONDS)
            for stage, seconds in result.stage_seconds.items():
                stages.observe(PairFamily.SMTP_STAGE_SECONDS, max(0.0, seconds), (str(stage),))
            not_after = result.tls.not_after if result.tls is not None else None
            if not_after is not None:
                series.set(PairFamily.TLS_CERT_EXPIRY_TIMESTAMP_SECONDS, not_after.timestamp())

    def observe_search(self, mailbox: str, result: SearchResult) -> None:
        """Set ``mailbox_up`` from a search; count its error by reason, and the forged tags it saw.

        A search the probe's own host failed (``result.local``) says nothing of the mailbox: it is counted by
        :meth:`observe_local` only.
        """
        with self._lock:
            if mailbox not in self._layout.mailboxes:
                return
            if result.forged:
                self._child(self.forged_tags, mailbox).inc(result.forged)
            if result.local is not None:
                return
            self._child(self.mailbox_up, mailbox, self._layout.backends[mailbox]).set(1 if result.ok else 0)
            if not result.ok:
                reason = str(result.error_reason) if result.error_reason is not None else "unknown"
                self._child(self.mailbox_errors, mailbox, reason).inc()

    def observe_carried(self, route: str, smart_host: str) -> None:
        """Count a connector probe delivered through ``smart_host`` (ignored unless one of the route's)."""
        with self._lock:
            series = self._pair(route, CONNECTOR_PAIR)
            if series is not None:
                series.inc(PairFamily.CONNECTOR_CARRIED, (smart_host,))

    def observe_local(self, resource: LocalResource) -> None:
        """Count a failure of the probe's own host (what ran out)."""
        self.local_errors.labels(str(resource)).inc()

    def set_in_flight(self, route: str, smart_host: str, n: int) -> None:
        """Set how many probes of a pair await a verdict."""
        with self._lock:
            series = self._pair(route, smart_host)
            if series is not None:
                series.set(PairFamily.IN_FLIGHT, float(n))

    def observe_lag(self, seconds: float) -> None:
        """Record how late a scheduled job started."""
        self.lag.observe(max(0.0, seconds))

    def set_reload(self, ok: bool, ts: float | None) -> None:
        """Record a configuration (re)load's outcome; ``ts`` counts only when it worked."""
        with self._lock:
            self.reload_ok.set(1 if ok else 0)
            if ok and ts is not None:
                self.reload_time.set(ts)

    def set_watcher(self, mailbox: str, mode: str, up: bool) -> None:
        """Record whether a mailbox's watcher runs in ``mode``; a mailbox has one watcher, so up in one
        mode means down in the others."""
        with self._lock:
            if mailbox not in self._layout.mailboxes:
                return
            if up:
                for other in WATCH_MODES:
                    if other != mode:
                        self._child(self.watcher_up, mailbox, other).set(0)
            self._child(self.watcher_up, mailbox, mode).set(1 if up else 0)

    # -- exposition --------------------------------------------------------------------------------

    def _snapshots(self) -> list[Snapshot]:
        """Return a copy of every pair's numbers, in config order."""
        with self._lock:
            return [series.snapshot() for series in (*self._pairs.values(), self._all_pairs)]

    def _pair_parts(self, *, openmetrics: bool, names: frozenset[str] | None, tail: bytes) -> list[bytes]:
        """Return the pair families, then ``tail``, re-rendering only the pairs that changed since the last scrape.

        The changed pairs' numbers are copied under the lock (so each shows one consistent state) and
        formatted outside it, so observers wait for copies only. A ``names`` filter that wants no pair
        family renders no pair.
        """
        if names is not None and all(names.isdisjoint(head.sample_names) for head in HEADS):
            return [tail]
        with self._render_lock:
            with self._lock:
                pairs = [*self._pairs.values(), self._all_pairs]
                todo = [(s, s.version, s.snapshot()) for s in pairs if s.rendered_version != s.version]
            values = Values()
            for series, version, snapshot in todo:
                series.rendered = render(snapshot, self._le, values, series.label_texts)
                series.rendered_version = version
            return cached_parts(HEADS, [s.rendered for s in pairs], openmetrics=openmetrics, names=names, tail=tail)

    def render(self) -> bytes:
        """Return the Prometheus text exposition (0.0.4) of every series."""
        return b"".join(self._pair_parts(openmetrics=False, names=None, tail=generate_text(self._health)))

    def render_for(self, accept: str | None, names: Iterable[str] | None = None) -> tuple[bytes, str]:
        """Return the exposition in the format an ``Accept`` header asks for, and its content type.

        ``names`` (the ``name[]`` query parameters, as prometheus_client's own handler takes them) keeps only
        the samples of those names: a cheap read of one series at thousands of pairs.
        """
        parts, content_type = self.render_parts_for(accept, names)
        return b"".join(parts), content_type

    def render_parts_for(self, accept: str | None, names: Iterable[str] | None = None) -> tuple[list[bytes], str]:
        """Return :meth:`render_for`'s body as the pieces it is made of, to be written without joining them.

        At thousands of pairs the page is tens of megabytes; written piece by piece it never exists whole.
        """
        encoder, content_type = choose_encoder(accept or "")
        wanted = None if names is None else frozenset(names)
        style = encoder_style(encoder)
        if style is None:
            registry = self.registry if wanted is None else self.registry.restricted_registry(wanted)
            return [encoder(registry)], content_type
        health = self._health if wanted is None else self._health.restricted_registry(wanted)
        rest = generate_text(health) if style == "text" else encoder(health)
        return self._pair_parts(openmetrics=style == "openmetrics", names=wanted, tail=rest), content_type
