"""The metric families of the (route, smart host) pairs: one row each, the one place they are declared.

A row gives a family's type, help, labels (besides ``route`` and ``smart_host``), the series each pair has
from start-up, and a histogram's buckets; the member's name, lower-cased, is the metric's name after the
``mailflow_probe_`` prefix (and before a counter's ``_total``). Everything else reads this table: the fast
renderer (probe.pair_series with probe.exposition), the prometheus_client mirror of the same numbers, the
series created at start-up and on reload, and the tests. A new per-pair metric is one row here, plus the line
in probe.metrics that observes it.

The members' order is the order of the families on /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from probe.vocabulary import Stage

PREFIX: Final = "mailflow_probe"
PAIR_LABELS: Final = ("route", "smart_host")

LabelValues = tuple[str, ...]  # one series' values of its family's labels, in the row's order


class Kind(StrEnum):
    """A family's Prometheus type."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Limit(StrEnum):
    """The timeout of the configuration a histogram's buckets end at: the longest one configured."""

    ROUTE_TIMEOUT = "route_timeout"  # how long a probe may take to arrive
    SMART_HOST_TIMEOUT = "smart_host_timeout"  # how long one SMTP operation may take


@dataclass(frozen=True)
class Buckets:
    """A histogram's upper bounds: the ``ladder``'s steps below a timeout of the config (and that timeout, if
    ``end_at_limit``), then +Inf."""

    ladder: tuple[float, ...]
    limit: Limit
    end_at_limit: bool = True

    def bounds(self, limit: float) -> tuple[float, ...]:
        """Return the finite bounds for a longest timeout of ``limit`` seconds (+Inf is implied)."""
        bounds = [b for b in self.ladder if b < limit]
        if self.end_at_limit and limit > 0 and (not bounds or bounds[-1] < limit):
            bounds.append(float(limit))
        return tuple(bounds)


@dataclass(frozen=True, kw_only=True)
class PairShape:
    """What the rows need to know of one pair to say which series it has from start-up."""

    route: str
    smart_host: str
    tls: bool  # the smart host is spoken to over TLS (tls: starttls or implicit)
    auth: bool  # the probe authenticates (a username is configured)
    carriers: tuple[str, ...] = ()  # a connector pair's: the route's smart hosts, one of which carries each probe


# -- which series a pair has from start-up ---------------------------------------------------------------

def one_series(_pair: PairShape) -> tuple[LabelValues, ...]:
    """Return the one series of a family without labels of its own."""
    return ((),)


def no_series(_pair: PairShape) -> tuple[LabelValues, ...]:
    """Return no series: the family's series appear when first observed (each then stays until a reload drops
    its pair)."""
    return ()


def one_if_tls(pair: PairShape) -> tuple[LabelValues, ...]:
    """Return one series when the pair speaks TLS (there is a certificate), else none."""
    return ((),) if pair.tls else ()


def one_unnamed(_pair: PairShape) -> tuple[LabelValues, ...]:
    """Return the one series of a family with one label, its value empty until an observation names it."""
    return (("",),)


def each_carrier(pair: PairShape) -> tuple[LabelValues, ...]:
    """Return a series per smart host that may carry the pair's probes (a connector pair's; none for the others)."""
    return tuple((host,) for host in pair.carriers)


def every_stage(_pair: PairShape) -> tuple[LabelValues, ...]:
    """Return a series per SMTP stage."""
    return tuple((str(stage),) for stage in Stage)


# -- the table --------------------------------------------------------------------------------------------

# Delivery latency, a few fixed bounds below the longest route timeout, then +Inf (everything delivered arrived
# within a timeout): 8 buckets at the default 5m timeout, 10 series with _count and _sum. 120 is the
# MailflowDeliverySlow threshold, so its p95 > 120 s is exact. Being few and the same for every pair, they are
# what Prometheus 3's convert_classic_histograms_to_nhcb turns into one native histogram (custom buckets).
DELIVERY_LADDER: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                          21600.0, 86400.0)
STAGE_LADDER: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, kw_only=True)
class Row:
    """One family of the pairs.

    ``labels``: the family's own, besides the pair's; one named as a pair label stands instead of the pair's
    (the connector pair's carried count names the smart host that carried a probe, not "@connector");
    ``created``: the label values of the series a pair has from start-up (at 0), so absence never hides a
    pair; ``grows``: an observation with other label values adds its series (else it is ignored, as a
    certificate's expiry for a pair without TLS is); ``replaces``: a pair has one series of the family, and
    an observation with other label values replaces it (the slowest hop, named by its host);
    ``optional_pair_labels``: by default one set of series for all the instance's pairs together, without
    ``route`` and ``smart_host`` (each pair's own set when the config's ``metrics: {per_pair: [...]}`` names
    the family).

    Budget: a Prometheus pays for every series on every scrape, so a pair has few (DESIGN.md: about 30 by
    default; tests/test_series_budget.py counts them). A breakdown by a label with many values (a stage, a
    reason) is created at its first observation (``no_series``, ``grows``), or summed over the pairs
    (``optional_pair_labels``), not created for every pair up front.
    """

    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    created: Callable[[PairShape], Iterable[LabelValues]] = one_series
    grows: bool = False
    buckets: Buckets | None = None
    replaces: bool = False
    optional_pair_labels: bool = False


class PairFamily(Enum):
    """The families of the pairs, in their order on /metrics; ``row`` describes each."""

    SENT = Row(kind=Kind.COUNTER, help="Probes submitted to a smart host (accepted or not).")
    SEND_FAILURES = Row(kind=Kind.COUNTER, help="Probes the smart host did not accept, by SMTP stage and reason.",
                        labels=("stage", "reason"), created=no_series, grows=True)
    DELIVERED = Row(kind=Kind.COUNTER, help="Probes found in the target mailbox within the timeout.")
    LOST = Row(kind=Kind.COUNTER, help="Probes accepted but not found by the timeout while observable.")
    LATE = Row(kind=Kind.COUNTER, help="Probes found after they had been declared lost.")
    UNKNOWN = Row(kind=Kind.COUNTER, help="Probes whose mailbox could not be observed long enough to tell (never "
                  "counted as lost).")
    DELIVERY_SECONDS = Row(kind=Kind.HISTOGRAM, help="Delivery latency of delivered probes: the smart host's final "
                           "250 to the mailbox's receipt.",
                           buckets=Buckets(DELIVERY_LADDER, Limit.ROUTE_TIMEOUT, end_at_limit=False))
    SMTP_STAGE_SECONDS = Row(kind=Kind.HISTOGRAM, help="Time spent in each SMTP submission stage (of every smart "
                             "host together, unless the config's metrics.per_pair names this family).",
                             labels=("stage",), created=every_stage, optional_pair_labels=True,
                             buckets=Buckets(STAGE_LADDER, Limit.SMART_HOST_TIMEOUT))
    SUCCESS = Row(kind=Kind.GAUGE, help="1 when the last finished probe was delivered, 0 when it failed to send or "
                  "was lost.")
    LAST_SUCCESS_TIMESTAMP_SECONDS = Row(kind=Kind.GAUGE, help="Unix time of the last delivered probe (0: none yet).")
    IN_FLIGHT = Row(kind=Kind.GAUGE, help="Probes accepted or being submitted, awaiting a verdict.")
    TLS_CERT_EXPIRY_TIMESTAMP_SECONDS = Row(kind=Kind.GAUGE, help="Unix time the smart host's certificate expires "
                                            "(0: not seen yet).", created=one_if_tls)
    BOUNCED = Row(kind=Kind.COUNTER, help="Probes accepted, then refused further on: an NDR carrying the probe's "
                  "verified tag came back, by reason (the class of its enhanced status code).",
                  labels=("reason",), created=no_series, grows=True)
    SLOWEST_HOP_SECONDS = Row(kind=Kind.GAUGE, help="Delay of the slowest hop of the last delivered probe's Received "
                              "chain, labelled by the hop's receiving host (one series per pair; hop=\"\" and 0 "
                              "until a delivered probe's chain has a timed hop).", labels=("hop",),
                              created=one_unnamed, replaces=True)
    CONNECTOR_CARRIED = Row(kind=Kind.COUNTER, help="Connector probes (smart_host=\"@connector\") delivered, by the "
                            "smart host the source forest's Send connector chose (read from the Received chain at the "
                            "target).", labels=("smart_host",), created=each_carrier)

    # Members are dict keys on every observation and in every render; Enum's own __hash__ is a Python function
    # (hash of the name), object's is C: a member is equal only to itself either way.
    __hash__ = object.__hash__

    @property
    def row(self) -> Row:
        """Return the family's row."""
        value: Row = self.value
        return value

    @property
    def key(self) -> str:
        """Return the family's name in the config (``metrics.per_pair``): its metric name without the prefix."""
        return self.name.lower()

    @property
    def metric_name(self) -> str:
        """Return the family's name as prometheus_client's ``Metric`` takes it (a counter's without ``_total``)."""
        return f"{PREFIX}_{self.key}"


OPTIONAL_PAIR_LABELS: Final = tuple(family.key for family in PairFamily if family.row.optional_pair_labels)
"""The families the config's ``metrics.per_pair`` may name."""
