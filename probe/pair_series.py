"""The numbers of the pair families (probe.metric_families) as plain numbers, and their text, a pair at a time.

A ``SeriesSet`` holds one pair's series of every family: counters and gauges as floats, histograms as counts
per bucket. Its owner (probe.metrics.ProbeMetrics) changes it under a lock and moves its ``version``; a scrape
copies the changed sets (``snapshot``) and renders each copy to its lines of each family (``render``), which
are kept until the set changes again. ``to_metrics`` turns the same copies into prometheus_client ``Metric``s
(the mirror its own encoders and restricted registries read), so both views come from one set of numbers and
one table.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.metrics_core import Metric

from probe.exposition import FamilyHead, Values, label_value
from probe.metric_families import PAIR_LABELS, Kind, LabelValues, PairFamily
from probe.prometheus_internals import float_text

FAMILIES: tuple[PairFamily, ...] = tuple(PairFamily)
HEADS: tuple[FamilyHead, ...] = tuple(FamilyHead(f.metric_name, f.row.help, str(f.row.kind)) for f in FAMILIES)
_INDEX: dict[PairFamily, int] = {family: i for i, family in enumerate(FAMILIES)}

Wanted = Mapping[PairFamily, Sequence[LabelValues]]  # family -> the label values of the series to have
LabelTexts = dict[tuple[PairFamily, LabelValues], tuple[str, str]]  # a series' labels as text: before/after "le"


def head_of(family: PairFamily) -> FamilyHead:
    """Return a family's head (name, help, type; header lines)."""
    return HEADS[_INDEX[family]]


class Histogram:
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
class Snapshot:
    """A copy of one set's numbers, taken under the owner's lock: what one scrape shows of it."""

    pair: tuple[str, str] | None
    scalars: tuple[tuple[PairFamily, tuple[tuple[LabelValues, float], ...]], ...]
    histograms: tuple[tuple[PairFamily, tuple[tuple[LabelValues, tuple[float, ...], float], ...]], ...]

    def labels_of(self, family: PairFamily, values: LabelValues) -> dict[str, str]:
        """Return a series' labels (the pair's and the family's own; an own label of a pair label's name stands
        instead of the pair's) as a dict."""
        labels = dict(zip(family.row.labels, values, strict=True))
        if self.pair is not None:
            for name, value in zip(PAIR_LABELS, self.pair, strict=True):
                labels.setdefault(name, value)
        return labels


_V = TypeVar("_V")


def _keep_only(series: dict[LabelValues, _V], family: PairFamily,
               created: Sequence[LabelValues]) -> dict[LabelValues, _V]:
    """Drop the series not in ``created``, unless the family grows series of its own; return ``series``."""
    if not family.row.grows:
        for values in [v for v in series if v not in created]:
            del series[values]
    return series


def _differs(old: float, new: float) -> bool:
    """Say whether a gauge's new value would be written differently (NaN is NaN; 0.0 and -0.0 are not alike)."""
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    return old != new or math.copysign(1.0, old) != math.copysign(1.0, new)


class SeriesSet:
    """The series of one (route, smart host) pair, of every family the owner wants it to have.

    Changed only under the owner's lock. ``version`` moves on every change; ``rendered`` is the set's text as
    of ``rendered_version``, kept (and touched only) by the renderer.
    """

    def __init__(self, pair: tuple[str, str] | None, bounds: Mapping[PairFamily, tuple[float, ...]]) -> None:
        self.pair = pair
        self.version = 0
        self.scalars: dict[PairFamily, dict[LabelValues, float]] = {}
        self.histograms: dict[PairFamily, dict[LabelValues, Histogram]] = {}
        self.rendered: list[bytes] = []
        self.rendered_version = -1
        self.label_texts: LabelTexts = {}  # kept (and touched only) by the renderer
        self._bounds = bounds  # each histogram family's bounds, ending with +Inf

    def conform(self, wanted: Wanted) -> None:
        """Have the series ``wanted`` names (at 0 when new); drop the families it leaves out.

        A family that grows keeps the series its observations added; any other keeps exactly those named.
        """
        before = self._shape()
        for family in [f for f in (*self.scalars, *self.histograms) if f not in wanted]:
            self.scalars.pop(family, None)
            self.histograms.pop(family, None)
        for family, created in wanted.items():
            if family.row.kind is Kind.HISTOGRAM:
                histograms = _keep_only(self.histograms.setdefault(family, {}), family, created)
                for values in created:
                    if values not in histograms:
                        histograms[values] = self._new_histogram(family)
            elif family.row.replaces and self.scalars.get(family):
                pass  # its one series stays, under the label values its last observation gave
            else:
                scalars = _keep_only(self.scalars.setdefault(family, {}), family, created)
                for values in created:
                    scalars.setdefault(values, 0.0)
        if self._shape() != before:
            self.version += 1

    def _new_histogram(self, family: PairFamily) -> Histogram:
        return Histogram(self._bounds[family])

    def _shape(self) -> tuple[tuple[PairFamily, int], ...]:
        return (*((f, len(series)) for f, series in self.scalars.items()),
                *((f, len(series)) for f, series in self.histograms.items()))

    def _scalar(self, family: PairFamily, values: LabelValues) -> dict[LabelValues, float] | None:
        series = self.scalars.get(family)
        if series is None or (values not in series and not family.row.grows):
            return None
        return series

    def inc(self, family: PairFamily, values: LabelValues = (), amount: float = 1.0) -> None:
        """Add ``amount`` to a counter series (ignored when the set has no such series and cannot grow one)."""
        series = self._scalar(family, values)
        if series is not None:
            series[values] = series.get(values, 0.0) + amount
            self.version += 1

    def set(self, family: PairFamily, value: float, values: LabelValues = ()) -> None:
        """Set a gauge series (ignored as ``inc`` is); setting the value it has changes nothing (nor ``version``:
        the daemon sets every pair's in_flight every few seconds, and only a change should cost a re-render)."""
        if family.row.replaces and family in self.scalars and values not in self.scalars[family]:
            self.scalars[family] = {values: value}  # the family's one series, now under these label values
            self.version += 1
            return
        series = self._scalar(family, values)
        if series is not None and (values not in series or _differs(series[values], value)):
            series[values] = value
            self.version += 1

    def observe(self, family: PairFamily, value: float, values: LabelValues = ()) -> None:
        """Observe ``value`` in a histogram series (ignored as ``inc`` is)."""
        series = self.histograms.get(family)
        if series is None:
            return
        histogram = series.get(values)
        if histogram is None:
            if not family.row.grows:
                return
            histogram = series[values] = self._new_histogram(family)
        histogram.observe(value)
        self.version += 1

    def snapshot(self) -> Snapshot:
        """Return a copy of the set's numbers, families in table order."""
        scalars = tuple((f, tuple(self.scalars[f].items())) for f in FAMILIES if f in self.scalars)
        histograms = tuple((f, tuple((values, tuple(h.counts), h.total) for values, h in self.histograms[f].items()))
                           for f in FAMILIES if f in self.histograms)
        return Snapshot(self.pair, scalars, histograms)


# -- text ---------------------------------------------------------------------------------------------------

def _label_text(labels: Mapping[str, str]) -> tuple[str, str]:
    """Return a series' labels as text, in name order as prometheus_client writes them: before and after "le"."""
    before: list[str] = []
    after: list[str] = []
    for name in sorted(labels):
        (before if name < "le" else after).append(f'{name}="{label_value(labels[name])}"')
    return ",".join(before), ",".join(after)


def render(snapshot: Snapshot, le: Mapping[PairFamily, Sequence[str]], values: Values,
           texts: LabelTexts | None = None) -> list[bytes]:
    """Return a set's lines of each family, in table order (``le``: each histogram family's bucket bounds).

    ``texts`` keeps each series' label text from one render to the next (a series' labels never change).
    """
    texts = {} if texts is None else texts

    def labels(family: PairFamily, label_values: LabelValues) -> tuple[str, str]:
        text = texts.get((family, label_values))
        if text is None:
            text = texts[(family, label_values)] = _label_text(snapshot.labels_of(family, label_values))
        return text

    rendered: list[bytes] = [b""] * len(FAMILIES)
    for family, series in snapshot.scalars:
        name = head_of(family).sample_names[0]
        lines = []
        for label_values, value in series:
            before, after = labels(family, label_values)
            text = f"{before},{after}" if before and after else before or after
            lines.append(f"{name}{{{text}}} {values(value)}\n" if text else f"{name} {values(value)}\n")
        rendered[_INDEX[family]] = "".join(lines).encode()
    known = values.known
    for family, histograms in snapshot.histograms:
        bucket, count, total = head_of(family).sample_names
        lines = []
        for label_values, counts, sum_value in histograms:
            before, after = labels(family, label_values)
            opening, closing = f"{bucket}{{{before}," if before else f"{bucket}{{", f",{after}}}" if after else "}"
            acc = 0.0
            for bound, n in zip(le[family], counts, strict=True):
                acc += n
                lines.append(f'{opening}le="{bound}"{closing} {known.get(acc) or values(acc)}\n')  # never -0.0
            text = f"{before},{after}" if before and after else before or after
            braced = f"{{{text}}}" if text else ""
            lines += [f"{count}{braced} {values(acc)}\n", f"{total}{braced} {values(sum_value)}\n"]
        rendered[_INDEX[family]] = "".join(lines).encode()
    return rendered


def bucket_texts(bounds: Mapping[PairFamily, tuple[float, ...]]) -> dict[PairFamily, tuple[str, ...]]:
    """Return each histogram family's bucket bounds as the exposition writes them."""
    return {family: tuple(float_text(b) for b in family_bounds) for family, family_bounds in bounds.items()}


# -- the prometheus_client mirror ---------------------------------------------------------------------------

def to_metrics(snapshots: Iterable[Snapshot], le: Mapping[PairFamily, Sequence[str]]) -> list[Metric]:
    """Return the families as prometheus_client ``Metric``s with every set's samples (for its encoders)."""
    metrics = [head.metric() for head in HEADS]
    for snapshot in snapshots:
        for family, series in snapshot.scalars:
            name = head_of(family).sample_names[0]
            for label_values, value in series:
                metrics[_INDEX[family]].add_sample(name, snapshot.labels_of(family, label_values), value)
        for family, histograms in snapshot.histograms:
            bucket, count, total = head_of(family).sample_names
            metric = metrics[_INDEX[family]]
            for label_values, counts, sum_value in histograms:
                labels, acc = snapshot.labels_of(family, label_values), 0.0
                for bound, n in zip(le[family], counts, strict=True):
                    acc += n
                    metric.add_sample(bucket, {**labels, "le": bound}, acc)
                metric.add_sample(count, labels, acc)
                metric.add_sample(total, labels, sum_value)
    return metrics
