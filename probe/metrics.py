"""The daemon's Prometheus metrics: every series of DESIGN.md ("Metrics"), created up front from the config.

One ``ProbeMetrics`` owns a fresh ``CollectorRegistry``. Every configured series exists from start-up at 0,
so absence never hides a route; a reload creates the series of new routes, smart hosts and mailboxes and
removes those of the ones that are gone. News about a pair or mailbox that is not configured (an in-flight
probe of a removed route, decided after the reload) is ignored, so removed series never come back.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable
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

from probe import __version__
from probe.config import Config, SmartHostConfig
from probe.exposition import generate_text
from probe.ledger import Decision
from probe.mailbox.base import SearchResult
from probe.smtp import SubmitResult
from probe.vocabulary import MailboxReason, Stage, Verdict

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


def possible_failures(host: SmartHostConfig) -> list[tuple[str, str]]:
    """Return the (stage, reason) pairs a send through ``host`` can fail with."""
    pairs = [(str(stage), reason) for stage, reasons in _FAILURES_ALWAYS.items() for reason in reasons]
    if host.tls != "none":
        pairs += [(str(Stage.STARTTLS), reason) for reason in _FAILURES_TLS]
    if host.username is not None:
        pairs += [(str(Stage.AUTH), reason) for reason in _FAILURES_AUTH]
    return pairs


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
    """The labelled series a config calls for."""

    pairs: frozenset[tuple[str, str]]
    tls_pairs: frozenset[tuple[str, str]]
    failures: dict[tuple[str, str], list[tuple[str, str]]]
    mailboxes: frozenset[str]

    @classmethod
    def of(cls, config: Config) -> _Layout:
        pairs: set[tuple[str, str]] = set()
        tls_pairs: set[tuple[str, str]] = set()
        failures: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for route in config.routes:
            for host in route.smart_hosts:
                pair = (route.name, host.name)
                pairs.add(pair)
                failures[pair] = possible_failures(host)
                if host.tls != "none":
                    tls_pairs.add(pair)
        return cls(frozenset(pairs), frozenset(tls_pairs), failures, frozenset(config.mailboxes))


class ProbeMetrics:
    """Every metric of the daemon, in a registry of its own."""

    def __init__(self, config: Config, *, version: str = __version__, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.RLock()
        self._children: dict[MetricWrapperBase, set[tuple[str, ...]]] = {}
        timeouts = [r.timeout for r in config.routes] or [config.defaults.timeout]
        host_timeouts = [h.timeout for r in config.routes for h in r.smart_hosts] or [30.0]
        self._build_families(max(timeouts), max(host_timeouts))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.build_info.labels(version=version, python=platform.python_version()).set(1)
        self._layout = _Layout(frozenset(), frozenset(), {}, frozenset())
        self.apply_config(config)

    # -- families --------------------------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: Iterable[str] = PAIR) -> Counter:
        return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Iterable[str] = PAIR) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=self.registry)

    def _build_families(self, timeout: float, host_timeout: float) -> None:
        self.sent = self._counter("sent_total", "Probes submitted to a smart host (accepted or not).")
        self.send_failures = self._counter(
            "send_failures_total", "Probes the smart host did not accept, by SMTP stage and reason.",
            (*PAIR, "stage", "reason"))
        self.delivered = self._counter("delivered_total", "Probes found in the target mailbox within the timeout.")
        self.lost = self._counter("lost_total", "Probes accepted but not found by the timeout while observable.")
        self.late = self._counter("late_total", "Probes found after they had been declared lost.")
        self.unknown = self._counter(
            "unknown_total", "Probes whose mailbox could not be observed long enough to tell (never counted as "
            "lost). An addition to the DESIGN.md list.")
        self.delivery_seconds = Histogram(
            f"{PREFIX}_delivery_seconds", "Delivery latency of delivered probes: the smart host's final 250 to "
            "the mailbox's receipt.", list(PAIR), registry=self.registry, buckets=delivery_buckets(timeout))
        self.stage_seconds = Histogram(
            f"{PREFIX}_smtp_stage_seconds", "Time spent in each SMTP submission stage.", [*PAIR, "stage"],
            registry=self.registry, buckets=stage_buckets(host_timeout))
        self.success = self._gauge("success", "1 when the last finished probe was delivered, 0 when it failed "
                                   "to send or was lost.")
        self.last_success = self._gauge("last_success_timestamp_seconds",
                                        "Unix time of the last delivered probe (0: none yet).")
        self.in_flight = self._gauge("in_flight", "Probes accepted or being submitted, awaiting a verdict.")
        self.tls_expiry = self._gauge("tls_cert_expiry_timestamp_seconds",
                                      "Unix time the smart host's certificate expires (0: not seen yet).")
        self.mailbox_up = self._gauge("mailbox_up", "1 when the last search of the mailbox worked.", ["mailbox"])
        self.mailbox_errors = self._counter("mailbox_errors_total", "Failed searches of a mailbox, by reason.",
                                            ["mailbox", "reason"])
        self._build_health()

    def _build_health(self) -> None:
        self.build_info = self._gauge("build_info", "Always 1; the labels give the version.", ["version", "python"])
        self.reload_ok = self._gauge("config_last_reload_successful",
                                     "1 when the last configuration (re)load worked.", ())
        self.reload_time = self._gauge("config_last_reload_success_timestamp_seconds",
                                       "Unix time of the last successful configuration (re)load.", ())
        self.lag = Histogram(f"{PREFIX}_scheduler_lag_seconds", "How late scheduled jobs started.",
                             registry=self.registry, buckets=_LAG_BUCKETS)
        self.watcher_up = self._gauge("mailbox_watcher_up", "1 when the mailbox's watcher in this mode runs.",
                                      ["mailbox", "mode"])

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
            for pair in layout.pairs:
                self._create_pair(pair, layout)
            for mailbox in layout.mailboxes:
                self._create_mailbox(mailbox)
            self._remove_stale(layout)
            self._layout = layout

    def _create_pair(self, pair: tuple[str, str], layout: _Layout) -> None:
        for family in (self.sent, self.delivered, self.lost, self.late, self.unknown, self.success,
                       self.last_success, self.in_flight, self.delivery_seconds):
            self._child(family, *pair)
        for each in Stage:
            self._child(self.stage_seconds, *pair, str(each))
        for stage, reason in layout.failures[pair]:
            self._child(self.send_failures, *pair, stage, reason)
        if pair in layout.tls_pairs:
            self._child(self.tls_expiry, *pair)

    def _create_mailbox(self, mailbox: str) -> None:
        self._child(self.mailbox_up, mailbox)
        for reason in MailboxReason:
            self._child(self.mailbox_errors, mailbox, str(reason))
        for mode in WATCH_MODES:
            self._child(self.watcher_up, mailbox, mode)

    def _remove_stale(self, layout: _Layout) -> None:
        for family in (self.sent, self.delivered, self.lost, self.late, self.unknown, self.success,
                       self.last_success, self.in_flight, self.delivery_seconds, self.stage_seconds,
                       self.send_failures):
            self._drop(family, layout.pairs, 2)
        self._drop(self.tls_expiry, layout.tls_pairs, 2)
        mailboxes = frozenset((m,) for m in layout.mailboxes)
        for family in (self.mailbox_up, self.mailbox_errors, self.watcher_up):
            self._drop(family, mailboxes, 1)

    def _has_pair(self, route: str, smart_host: str) -> bool:
        return (route, smart_host) in self._layout.pairs

    # -- observations ------------------------------------------------------------------------------

    def observe_decision(self, decision: Decision) -> None:
        """Count one verdict; move ``success`` on delivered, send_failed and lost."""
        pair = (decision.route, decision.smart_host)
        with self._lock:
            if not self._has_pair(*pair):
                return
            verdict = decision.verdict
            if verdict is Verdict.DELIVERED:
                self._child(self.delivered, *pair).inc()
                if decision.latency is not None:
                    self._child(self.delivery_seconds, *pair).observe(decision.latency)
                self._child(self.success, *pair).set(1)
                self._child(self.last_success, *pair).set(decision.decided_at)
            elif verdict is Verdict.SEND_FAILED:
                stage, reason = decision.stage or "unknown", decision.reason or "unknown"
                self._child(self.send_failures, *pair, stage, reason).inc()
                self._child(self.success, *pair).set(0)
            elif verdict is Verdict.LOST:
                self._child(self.lost, *pair).inc()
                self._child(self.success, *pair).set(0)
            elif verdict is Verdict.LATE:
                self._child(self.late, *pair).inc()
            else:
                self._child(self.unknown, *pair).inc()

    def observe_submit(self, route: str, smart_host: str, result: SubmitResult) -> None:
        """Count a submission and time its stages; note the certificate's expiry when TLS was used.

        Send failures are counted by ``observe_decision`` (the ledger decides them), never here.
        """
        pair = (route, smart_host)
        with self._lock:
            if not self._has_pair(*pair):
                return
            self._child(self.sent, *pair).inc()
            for stage, seconds in result.stage_seconds.items():
                self._child(self.stage_seconds, *pair, str(stage)).observe(max(0.0, seconds))
            not_after = result.tls.not_after if result.tls is not None else None
            if not_after is not None and pair in self._layout.tls_pairs:
                self._child(self.tls_expiry, *pair).set(not_after.timestamp())

    def observe_search(self, mailbox: str, result: SearchResult) -> None:
        """Set ``mailbox_up`` from a search; count its error by reason."""
        with self._lock:
            if mailbox not in self._layout.mailboxes:
                return
            self._child(self.mailbox_up, mailbox).set(1 if result.ok else 0)
            if not result.ok:
                reason = str(result.error_reason) if result.error_reason is not None else "unknown"
                self._child(self.mailbox_errors, mailbox, reason).inc()

    def set_in_flight(self, route: str, smart_host: str, n: int) -> None:
        """Set how many probes of a pair await a verdict."""
        with self._lock:
            if self._has_pair(route, smart_host):
                self._child(self.in_flight, route, smart_host).set(n)

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

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every series."""
        return generate_text(self.registry)

    def render_for(self, accept: str | None, names: Iterable[str] | None = None) -> tuple[bytes, str]:
        """Return the exposition in the format an ``Accept`` header asks for, and its content type.

        ``names`` (the ``name[]`` query parameters, as prometheus_client's own handler takes them) keeps only
        the samples of those names: a cheap read of one series at thousands of pairs.
        """
        encoder, content_type = choose_encoder(accept or "")
        registry = self.registry if names is None else self.registry.restricted_registry(names)
        if encoder is generate_latest:
            return generate_text(registry), CONTENT_TYPE
        return encoder(registry), content_type
