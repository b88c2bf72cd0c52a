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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
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
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from probe import __version__
from probe.config import Config, RouteConfig, SmartHostConfig
from probe.exposition import FamilyHead, Values, cached_parts, generate_text, label_value
from probe.ledger import Decision
from probe.mailbox.base import SearchResult
from probe.smtp import SubmitResult
from probe.submit.connector import submission_host
from probe.vocabulary import CONNECTOR_PAIR, BounceReason, LocalResource, MailboxReason, Stage, Verdict

PREFIX: Final = "mailflow_probe"
PAIR: Final = ("route", "smart_host")
WATCH_MODES: Final = ("streaming", "polling")
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

_M = TypeVar("_M", bound=MetricWrapperBase)

# Delivery latency: 0.1 s steps up to 1 s, then a ladder; cut at the largest route timeout.
_DELIVERY_LADDER: Final = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0,
    2700.0, 3600.0, 5400.0, 7200.0, 10800.0, 14400.0, 21600.0, 43200.0, 86400.0,
)
_STAGE_LADDER: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The *_created series would add one line per counter and histogram of every pair (a fifth of the output at
# thousands of pairs) and nothing a dashboard or alert here uses. This process exports only these metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The (stage, reason) pairs the submit step can produce (probe/smtp.py's classifier), created at 0.
_REPLY: Final = ("timeout", "tempfail", "rejected", "protocol")
_FAILURES_ALWAYS: Final = {
    Stage.CONNECT: ("dns", "refused", "timeout", "protocol"),
    Stage.BANNER: _REPLY, Stage.EHLO: _REPLY, Stage.MAIL: _REPLY, Stage.RCPT: _REPLY, Stage.DATA: _REPLY,
}
_FAILURES_TLS: Final = ("tls_unavailable", "tls_certificate", "tls_handshake", *_REPLY)
_FAILURES_AUTH: Final = ("auth_unavailable", "auth_failed", "timeout", "tempfail", "protocol")
# What a connector probe's EWS submission (probe.submit.ews) can fail with, in the send vocabulary.
_FAILURES_EWS: Final = (
    ("connect", "refused"), ("connect", "timeout"), ("starttls", "tls_certificate"), ("starttls", "tls_handshake"),
    ("auth", "auth_failed"), ("data", "timeout"), ("data", "tempfail"), ("data", "rejected"), ("data", "protocol"),
)


def possible_failures(host: SmartHostConfig) -> list[tuple[str, str]]:
    """Return the (stage, reason) pairs a send through ``host`` can fail with."""
    pairs = [(str(stage), reason) for stage, reasons in _FAILURES_ALWAYS.items() for reason in reasons]
    if host.tls != "none":
        pairs += [(str(Stage.STARTTLS), reason) for reason in _FAILURES_TLS]
    if host.username is not None:
        pairs += [(str(Stage.AUTH), reason) for reason in _FAILURES_AUTH]
    return pairs


def connector_failures(route: RouteConfig) -> list[tuple[str, str]]:
    """Return the (stage, reason) pairs a route's connector probe can fail to be submitted with."""
    if route.connector is None:
        return []
    if route.connector.submit == "ews":
        return list(_FAILURES_EWS)
    return possible_failures(submission_host(route.connector))


def delivery_buckets(timeout: float) -> tuple[float, ...]:
    """Return delivery latency buckets: 0.1 s resolution below 1 s, a ladder above, ending at ``timeout``."""
    buckets = [b for b in _DELIVERY_LADDER if b < timeout]
    if timeout > 0 and (not buckets or buckets[-1] < timeout):
        buckets.append(float(timeout))
    return tuple(buckets)


def stage_buckets(timeout: float) -> tuple[float, ...]:
    """Return SMTP stage time buckets up to ``timeout``."""
    buckets = [b for b in _STAGE_LADDER if b < timeout]
    buckets.append(float(timeout))
    return tuple(buckets)


@dataclass(frozen=True)
class _Layout:
    """The labelled series a config calls for; ``pairs`` in config order."""

    pairs: tuple[tuple[str, str], ...]
    tls_pairs: frozenset[tuple[str, str]]
    failures: dict[tuple[str, str], list[tuple[str, str]]]
    mailboxes: frozenset[str]
    backends: dict[str, str]  # each mailbox's backend (ews, ...): mailbox_up's backend label
    carriers: frozenset[tuple[str, str]] = frozenset()  # (route, smart host) of routes with a connector probe

    @classmethod
    def of(cls, config: Config) -> _Layout:
        pairs: dict[tuple[str, str], None] = {}
        tls_pairs: set[tuple[str, str]] = set()
        failures: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for route in config.routes:
            for host in route.smart_hosts:
                pair = (route.name, host.name)
                pairs[pair] = None
                failures[pair] = possible_failures(host)
                if host.tls != "none":
                    tls_pairs.add(pair)
            if route.connector is not None:
                pair = (route.name, CONNECTOR_PAIR)
                pairs[pair] = None
                failures[pair] = connector_failures(route)
                if route.connector.submit == "smtp" and route.connector.tls != "none":
                    tls_pairs.add(pair)  # the submission server's certificate
        backends = {name: mailbox.backend.name for name, mailbox in config.mailboxes.items()}
        carriers = frozenset((r.name, h.name) for r in config.routes if r.connector is not None for h in r.smart_hosts)
        return cls(tuple(pairs), frozenset(tls_pairs), failures, frozenset(config.mailboxes), backends, carriers)


# -- the families of the (route, smart host) pairs ------------------------------------------------------

# Their order in the exposition (the order the registry always had), as indexes into _PAIR_HEADS.
(_SENT, _FAILURES, _DELIVERED, _LOST, _LATE, _UNKNOWN, _DELIVERY, _STAGE, _SUCCESS, _LAST_SUCCESS, _IN_FLIGHT, _TLS,
 _BOUNCED, _SLOWEST_HOP) = range(14)
_PAIR_HEADS: Final = (
    FamilyHead(f"{PREFIX}_sent", "Probes submitted to a smart host (accepted or not).", "counter"),
    FamilyHead(f"{PREFIX}_send_failures", "Probes the smart host did not accept, by SMTP stage and reason.",
               "counter"),
    FamilyHead(f"{PREFIX}_delivered", "Probes found in the target mailbox within the timeout.", "counter"),
    FamilyHead(f"{PREFIX}_lost", "Probes accepted but not found by the timeout while observable.", "counter"),
    FamilyHead(f"{PREFIX}_late", "Probes found after they had been declared lost.", "counter"),
    FamilyHead(f"{PREFIX}_unknown", "Probes whose mailbox could not be observed long enough to tell (never counted "
               "as lost).", "counter"),
    FamilyHead(f"{PREFIX}_delivery_seconds", "Delivery latency of delivered probes: the smart host's final 250 to "
               "the mailbox's receipt.", "histogram"),
    FamilyHead(f"{PREFIX}_smtp_stage_seconds", "Time spent in each SMTP submission stage.", "histogram"),
    FamilyHead(f"{PREFIX}_success", "1 when the last finished probe was delivered, 0 when it failed to send or was "
               "lost.", "gauge"),
    FamilyHead(f"{PREFIX}_last_success_timestamp_seconds", "Unix time of the last delivered probe (0: none yet).",
               "gauge"),
    FamilyHead(f"{PREFIX}_in_flight", "Probes accepted or being submitted, awaiting a verdict.", "gauge"),
    FamilyHead(f"{PREFIX}_tls_cert_expiry_timestamp_seconds",
               "Unix time the smart host's certificate expires (0: not seen yet).", "gauge"),
    FamilyHead(f"{PREFIX}_bounced", "Probes accepted, then refused further on: an NDR carrying the probe's verified "
               "tag came back, by reason (the class of its enhanced status code).", "counter"),
    FamilyHead(f"{PREFIX}_slowest_hop_seconds", "Delay of the slowest hop of the last delivered probe's Received "
               "chain, labelled by the hop's receiving host (one series per pair; hop=\"\" and 0 until a delivered "
               "probe's chain has a timed hop).", "gauge"),
)
_COUNTER_FAMILIES: Final = (_SENT, _DELIVERED, _LOST, _LATE, _UNKNOWN)
_GAUGE_FAMILIES: Final = (_SUCCESS, _LAST_SUCCESS, _IN_FLIGHT)

Labels = tuple[tuple[str, str], ...]  # a series' labels besides route and smart_host


class _Histogram:
    """One histogram series as plain numbers: observations per bucket (not cumulative) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf
        self.counts = [0.0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket it fits, as prometheus_client's Histogram does."""
        self.total += value
        if not math.isnan(value):
            self.counts[bisect_left(self.bounds, value)] += 1.0


@dataclass(frozen=True)
class _PairNumbers:
    """A copy of one pair's numbers, taken under the lock: what one scrape shows of the pair."""

    pair: tuple[str, str]
    labels: str  # route="...",smart_host="..." escaped
    scalars: dict[int, float]  # family -> value, for the families of one series per pair
    failures: tuple[tuple[tuple[str, str], float], ...]  # ((stage, reason), value)
    bounces: tuple[tuple[str, float], ...]  # (reason, value)
    slowest_hop: tuple[str, float] | None  # (receiving host, seconds)
    histograms: tuple[tuple[int, tuple[str, ...], tuple[float, ...], float], ...]  # family, stage, counts, sum

    def labels_of(self, key: tuple[str, ...]) -> Labels:
        """Return the labels besides route and smart_host of a failure's or a histogram's key."""
        return tuple(zip(("stage", "reason"), key, strict=False))


class _PairSeries:
    """The numbers of one (route, smart host) pair, changed only under ``ProbeMetrics._lock``.

    ``version`` moves on every change; ``rendered`` is the pair's text as of ``rendered_version``, kept (and
    touched only) by the renderer.
    """

    def __init__(self, pair: tuple[str, str], delivery: tuple[float, ...], stage: tuple[float, ...]) -> None:
        self.pair = pair
        self.labels = f'route="{label_value(pair[0])}",smart_host="{label_value(pair[1])}"'
        self.version = 0
        self.scalars: dict[int, float] = dict.fromkeys((*_COUNTER_FAMILIES, *_GAUGE_FAMILIES), 0.0)
        self.failures: dict[tuple[str, str], float] = {}
        self.bounces: dict[str, float] = dict.fromkeys((str(reason) for reason in BounceReason), 0.0)
        self.slowest_hop: tuple[str, float] | None = ("", 0.0)  # hop="" at 0 until a delivery tells
        self.delivery = _Histogram(delivery)
        self.stages = {str(each): _Histogram(stage) for each in Stage}
        self.rendered: list[bytes] = []
        self.rendered_version = -1

    def conform(self, failures: Iterable[tuple[str, str]], tls: bool) -> None:
        """Add the failure series a (re)load calls for; keep the certificate series only for TLS."""
        before = (len(self.failures), _TLS in self.scalars)
        for key in failures:
            self.failures.setdefault(key, 0.0)
        if not tls:
            self.scalars.pop(_TLS, None)
        elif _TLS not in self.scalars:
            self.scalars[_TLS] = 0.0
        if (len(self.failures), _TLS in self.scalars) != before:
            self.version += 1

    def numbers(self) -> _PairNumbers:
        """Return a copy of the pair's numbers."""
        histograms = ((_DELIVERY, (), tuple(self.delivery.counts), self.delivery.total),
                      *((_STAGE, (stage,), tuple(h.counts), h.total) for stage, h in self.stages.items()))
        return _PairNumbers(self.pair, self.labels, dict(self.scalars), tuple(self.failures.items()),
                            tuple(self.bounces.items()), self.slowest_hop, histograms)


def _render_pair(numbers: _PairNumbers, le: Sequence[Sequence[str]], values: Values) -> list[bytes]:
    """Return a pair's text: its lines of each family of _PAIR_HEADS (``le``: per family, the bucket bounds)."""
    rendered: list[bytes] = [b""] * len(_PAIR_HEADS)
    labels = numbers.labels
    for family, value in numbers.scalars.items():
        name = _PAIR_HEADS[family].sample_names[0]
        rendered[family] = f"{name}{{{labels}}} {values(value)}\n".encode()
    # Labels in name order, as generate_latest writes them: reason < route < smart_host < stage.
    name = _PAIR_HEADS[_FAILURES].sample_names[0]
    rendered[_FAILURES] = "".join(
        f'{name}{{reason="{label_value(reason)}",{labels},stage="{label_value(stage)}"}} {values(value)}\n'
        for (stage, reason), value in numbers.failures).encode()
    name = _PAIR_HEADS[_BOUNCED].sample_names[0]
    rendered[_BOUNCED] = "".join(f'{name}{{reason="{label_value(reason)}",{labels}}} {values(value)}\n'
                                 for reason, value in numbers.bounces).encode()
    if numbers.slowest_hop is not None:  # "hop" sorts before "route"
        name, (host, seconds) = _PAIR_HEADS[_SLOWEST_HOP].sample_names[0], numbers.slowest_hop
        rendered[_SLOWEST_HOP] = f'{name}{{hop="{label_value(host)}",{labels}}} {values(seconds)}\n'.encode()
    known = values.known
    lines: dict[int, list[str]] = {}
    for family, series, counts, sum_value in numbers.histograms:
        bucket, count, total = _PAIR_HEADS[family].sample_names
        text = f'{labels},stage="{label_value(series[0])}"' if series else labels
        out, acc = lines.setdefault(family, []), 0.0
        for bound, n in zip(le[family], counts, strict=True):  # "le" sorts before every other label
            acc += n
            out.append(f'{bucket}{{le="{bound}",{text}}} {known.get(acc) or values(acc)}\n')  # acc: never -0.0
        out += [f"{count}{{{text}}} {values(acc)}\n", f"{total}{{{text}}} {values(sum_value)}\n"]
    for family, out in lines.items():
        rendered[family] = "".join(out).encode()
    return rendered


def _pair_metrics(pairs: Iterable[_PairNumbers], le: Sequence[Sequence[str]]) -> list[Metric]:
    """Return the pair families as prometheus_client ``Metric``s (for its encoders and restricted registries)."""
    metrics = [head.metric() for head in _PAIR_HEADS]
    for numbers in pairs:
        base = {"route": numbers.pair[0], "smart_host": numbers.pair[1]}
        for family, value in numbers.scalars.items():
            metrics[family].add_sample(_PAIR_HEADS[family].sample_names[0], base, value)
        for key, value in numbers.failures:
            metrics[_FAILURES].add_sample(_PAIR_HEADS[_FAILURES].sample_names[0],
                                          {**base, **dict(numbers.labels_of(key))}, value)
        for reason, value in numbers.bounces:
            metrics[_BOUNCED].add_sample(_PAIR_HEADS[_BOUNCED].sample_names[0], {**base, "reason": reason}, value)
        if numbers.slowest_hop is not None:
            metrics[_SLOWEST_HOP].add_sample(_PAIR_HEADS[_SLOWEST_HOP].sample_names[0],
                                             {**base, "hop": numbers.slowest_hop[0]}, numbers.slowest_hop[1])
        for family, series, counts, sum_value in numbers.histograms:
            bucket, count, total = _PAIR_HEADS[family].sample_names
            labels, acc = {**base, **dict(numbers.labels_of(series))}, 0.0
            for bound, n in zip(le[family], counts, strict=True):
                acc += n
                metrics[family].add_sample(bucket, {**labels, "le": bound}, acc)
            metrics[family].add_sample(count, labels, acc)
            metrics[family].add_sample(total, labels, sum_value)
    return metrics


class _PairCollector(Collector):
    """The registry's view of the pair families: a snapshot of every pair, as ``Metric``s."""

    def __init__(self, snapshot: Callable[[], list[_PairNumbers]], le: Sequence[Sequence[str]]) -> None:
        self._snapshot, self._le = snapshot, le

    def collect(self) -> Iterable[Metric]:
        """Return the pair families with every pair's samples."""
        return _pair_metrics(self._snapshot(), self._le)

    def describe(self) -> Iterable[Metric]:
        """Return the pair families without samples."""
        return [head.metric() for head in _PAIR_HEADS]


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


def _text_style(encoder: Callable[..., bytes]) -> str | None:
    """Return "text" or "openmetrics" when ``encoder`` (from choose_encoder) writes what the cached renderer
    does, else None: the underscores and allow-utf-8 escapings leave this exposition's names (legacy ones) alone."""
    func = getattr(encoder, "func", encoder)
    escaping = getattr(encoder, "keywords", {}).get("escaping", om_exposition.UNDERSCORES)
    if escaping not in (om_exposition.UNDERSCORES, om_exposition.ALLOWUTF8):
        return None
    if func is generate_latest:
        return "text"
    return "openmetrics" if func is om_exposition.generate_latest else None


class ProbeMetrics:
    """Every metric of the daemon.

    The pair families hold plain numbers per (route, smart host) pair and render each pair's text only when the
    pair changed since the last scrape; everything else is prometheus_client metrics in a registry of their own.
    ``registry`` holds both (pairs first), for prometheus_client's own encoders.
    """

    def __init__(self, config: Config, *, version: str = __version__, process_metrics: bool = True) -> None:
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._children: dict[MetricWrapperBase, set[tuple[str, ...]]] = {}
        timeouts = [r.timeout for r in config.routes] or [config.defaults.timeout]
        host_timeouts = [h.timeout for r in config.routes for h in r.smart_hosts] or [30.0]
        host_timeouts += [r.connector.timeout for r in config.routes if r.connector is not None]
        self._delivery_bounds = (*delivery_buckets(max(timeouts)), math.inf)
        self._stage_bounds = (*stage_buckets(max(host_timeouts)), math.inf)
        le: list[tuple[str, ...]] = [() for _ in _PAIR_HEADS]
        le[_DELIVERY] = tuple(floatToGoString(b) for b in self._delivery_bounds)  # type: ignore[no-untyped-call]
        le[_STAGE] = tuple(floatToGoString(b) for b in self._stage_bounds)  # type: ignore[no-untyped-call]
        self._le: list[tuple[str, ...]] = le
        self._pairs: dict[tuple[str, str], _PairSeries] = {}
        self._health = CollectorRegistry(auto_describe=True)
        self._build_families()
        if process_metrics:
            ProcessCollector(registry=self._health)
            PlatformCollector(registry=self._health)
            GCCollector(registry=self._health)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_PairCollector(self._numbers, self._le))
        self.registry.register(_Forward(self._health))
        self.build_info.labels(version=version, python=platform.python_version()).set(1)
        self._layout = _Layout((), frozenset(), {}, frozenset(), {})
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
        self.connector_carried = self._counter(
            "connector_carried_total", "Connector probes (smart_host=\"@connector\") delivered, by the smart host "
            "the source forest's Send connector chose (read from the Received chain at the target).")

    # -- series bookkeeping ------------------------------------------------------------------------

    def _child(self, family: _M, *values: str) -> _M:
        self._children.setdefault(family, set()).add(values)
        return family.labels(*values)

    def _drop(self, family: MetricWrapperBase, keep: frozenset[tuple[str, ...]], width: int) -> None:
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
            for pair in layout.pairs:
                series = self._pairs.get(pair) or _PairSeries(pair, self._delivery_bounds, self._stage_bounds)
                series.conform(layout.failures[pair], pair in layout.tls_pairs)
                pairs[pair] = series
            self._pairs = pairs
            for mailbox in layout.mailboxes:
                self._create_mailbox(mailbox, layout.backends[mailbox])
            self._drop(self.mailbox_up, frozenset(layout.backends.items()), 2)  # a mailbox that changed backend too
            mailboxes = frozenset((m,) for m in layout.mailboxes)
            for family in (self.mailbox_errors, self.watcher_up, self.forged_tags):
                self._drop(family, mailboxes, 1)
            for carrier in layout.carriers:
                self._child(self.connector_carried, *carrier)
            self._drop(self.connector_carried, layout.carriers, 2)
            self._layout = layout

    def _create_mailbox(self, mailbox: str, backend: str) -> None:
        self._child(self.mailbox_up, mailbox, backend)
        for reason in MailboxReason:
            self._child(self.mailbox_errors, mailbox, str(reason))
        for mode in WATCH_MODES:
            self._child(self.watcher_up, mailbox, mode)
        self._child(self.forged_tags, mailbox)

    def _changing(self, route: str, smart_host: str) -> _PairSeries | None:
        """Return the pair's numbers, their version moved, or None when the pair is not configured."""
        series = self._pairs.get((route, smart_host))
        if series is not None:
            series.version += 1
        return series

    # -- observations ------------------------------------------------------------------------------

    def observe_decision(self, decision: Decision) -> None:
        """Count one verdict; move ``success`` on delivered, send_failed, lost and bounced; note the slowest hop."""
        with self._lock:
            series = self._changing(decision.route, decision.smart_host)
            if series is None:
                return
            scalars, verdict = series.scalars, decision.verdict
            if decision.slowest_hop is not None:
                series.slowest_hop = decision.slowest_hop
            if verdict is Verdict.DELIVERED:
                scalars[_DELIVERED] += 1.0
                if decision.latency is not None:
                    series.delivery.observe(decision.latency)
                scalars[_SUCCESS] = 1.0
                scalars[_LAST_SUCCESS] = float(decision.decided_at)
            elif verdict is Verdict.SEND_FAILED:
                key = (decision.stage or "unknown", decision.reason or "unknown")
                series.failures[key] = series.failures.get(key, 0.0) + 1.0
                scalars[_SUCCESS] = 0.0
            elif verdict is Verdict.LOST:
                scalars[_LOST] += 1.0
                scalars[_SUCCESS] = 0.0
            elif verdict is Verdict.BOUNCED:
                reason = decision.reason or str(BounceReason.OTHER)
                series.bounces[reason] = series.bounces.get(reason, 0.0) + 1.0
                scalars[_SUCCESS] = 0.0
            else:
                scalars[_LATE if verdict is Verdict.LATE else _UNKNOWN] += 1.0

    def observe_submit(self, route: str, smart_host: str, result: SubmitResult) -> None:
        """Count a submission and time its stages; note the certificate's expiry when TLS was used.

        Send failures are counted by ``observe_decision`` (the ledger decides them), never here.
        """
        with self._lock:
            series = self._changing(route, smart_host)
            if series is None:
                return
            series.scalars[_SENT] += 1.0
            for stage, seconds in result.stage_seconds.items():
                series.stages[str(stage)].observe(max(0.0, seconds))
            not_after = result.tls.not_after if result.tls is not None else None
            if not_after is not None and _TLS in series.scalars:
                series.scalars[_TLS] = not_after.timestamp()

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
        """Count a connector probe delivered through ``smart_host`` (a configured one of the route)."""
        with self._lock:
            if (route, smart_host) in self._layout.carriers:
                self._child(self.connector_carried, route, smart_host).inc()

    def observe_local(self, resource: LocalResource) -> None:
        """Count a failure of the probe's own host (what ran out)."""
        self.local_errors.labels(str(resource)).inc()

    def set_in_flight(self, route: str, smart_host: str, n: int) -> None:
        """Set how many probes of a pair await a verdict."""
        with self._lock:
            series = self._changing(route, smart_host)
            if series is not None:
                series.scalars[_IN_FLIGHT] = float(n)

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

    def _numbers(self) -> list[_PairNumbers]:
        """Return a copy of every pair's numbers, in config order."""
        with self._lock:
            return [series.numbers() for series in self._pairs.values()]

    def _pair_parts(self, *, openmetrics: bool, names: frozenset[str] | None, tail: bytes) -> list[bytes]:
        """Return the pair families, then ``tail``, re-rendering only the pairs that changed since the last scrape.

        The changed pairs' numbers are copied under the lock (so each shows one consistent state) and
        formatted outside it, so observers wait for copies only. A ``names`` filter that wants no pair
        family renders no pair.
        """
        if names is not None and all(names.isdisjoint(head.sample_names) for head in _PAIR_HEADS):
            return [tail]
        with self._render_lock:
            with self._lock:
                pairs = list(self._pairs.values())
                todo = [(s, s.version, s.numbers()) for s in pairs if s.rendered_version != s.version]
            values = Values()
            for series, version, numbers in todo:
                series.rendered = _render_pair(numbers, self._le, values)
                series.rendered_version = version
            return cached_parts(_PAIR_HEADS, [s.rendered for s in pairs], openmetrics=openmetrics, names=names,
                                tail=tail)

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
        style = _text_style(encoder)
        if style is None:
            registry = self.registry if wanted is None else self.registry.restricted_registry(wanted)
            return [encoder(registry)], content_type
        health = self._health if wanted is None else self._health.restricted_registry(wanted)
        rest = generate_text(health) if style == "text" else encoder(health)
        return self._pair_parts(openmetrics=style == "openmetrics", names=wanted, tail=rest), content_type
