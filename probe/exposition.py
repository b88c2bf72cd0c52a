"""The Prometheus text format (0.0.4) of a registry, the same bytes as prometheus_client's, faster.

At thousands of (route, smart host) pairs /metrics holds hundreds of thousands of samples, and
``generate_latest`` spends most of its time validating and escaping the same few label names on every
sample. This renderer escapes each metric name and each (label, value) pair once per scrape, and formats
the common float values once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from probe.prometheus_internals import escape_label_name, escape_metric_name, float_text

_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_NAME_SUFFIX = {"counter": "_total", "info": "_info"}


class Collecting(Protocol):
    """A registry (or a restricted one): something that yields metric families."""

    def collect(self) -> Iterable[Metric]:
        """Yield the metric families."""
        ...


class _Names:
    """Escaped metric and label names, each worked out once per scrape."""

    def __init__(self) -> None:
        self.metric: dict[str, str] = {}
        self.label: dict[str, str] = {}
        self.value: dict[float, str] = {}
        self.pair: dict[tuple[str, str], str] = {}  # (label, value) -> 'label="escaped value"'

    def of_metric(self, name: str) -> str:
        escaped = self.metric.get(name)
        if escaped is None:
            escaped = self.metric[name] = escape_metric_name(name)
        return escaped

    def of_label(self, name: str) -> str:
        escaped = self.label.get(name)
        if escaped is None:
            escaped = self.label[name] = escape_label_name(name)
        return escaped

    def of_value(self, value: float) -> str:
        if value == 0 and math.copysign(1.0, value) < 0:  # -0.0 == 0.0 as a key, but is written "-0.0"
            return "-0.0"
        text = self.value.get(value)
        if text is None:
            text = self.value[value] = float_text(value)
        return text


def _label_text(labels: Mapping[str, str], names: _Names) -> str:
    pairs = names.pair
    parts = []
    for key in sorted(labels):
        value = labels[key]
        part = pairs.get((key, value))
        if part is None:
            escaped = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            part = pairs[(key, value)] = f'{names.of_label(key)}="{escaped}"'
        parts.append(part)
    return "{" + ",".join(parts) + "}"


def _sample_line(sample: Sample, names: _Names) -> str:
    labels = _label_text(sample.labels, names) if sample.labels else ""
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    return f"{names.of_metric(sample.name)}{labels} {names.of_value(sample.value)}{stamp}\n"


def _family(metric: Metric, names: _Names, output: list[str]) -> None:
    name = metric.name + _NAME_SUFFIX.get(metric.type, "")
    kind = _TYPES.get(metric.type, metric.type)
    escaped = names.of_metric(name)
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    output.append(f"# HELP {escaped} {doc}\n# TYPE {escaped} {kind}\n")
    extra: dict[str, list[str]] = {}
    base = metric.name
    for sample in metric.samples:
        suffix = sample.name[len(base):] if sample.name.startswith(base) else ""
        if suffix in _OM_SUFFIXES:
            extra.setdefault(suffix, []).append(_sample_line(sample, names))
        else:
            output.append(_sample_line(sample, names))
    for suffix, lines in sorted(extra.items()):
        extra_name = names.of_metric(base + suffix)
        output.append(f"# HELP {extra_name} {doc}\n# TYPE {extra_name} gauge\n")
        output.extend(lines)


def generate_text(registry: Collecting) -> bytes:
    """Return the Prometheus text exposition (0.0.4) of ``registry``: generate_latest's bytes, faster."""
    names = _Names()
    output: list[str] = []
    for metric in registry.collect():
        try:
            _family(metric, names, output)
        except Exception as exc:
            exc.args = (*(exc.args or ("",)), metric)
            raise
    return "".join(output).encode("utf-8")


# -- cached families ------------------------------------------------------------------------------------
#
# The families of the (route, smart host) pairs are rendered a pair at a time and the pair's text kept until
# the pair changes; a scrape joins the kept text under each family's header. A pair's text in one family is
# one bytes object (at thousands of pairs, fewer and larger objects are most of the memory saved); a
# ``name[]`` filter that wants only some of a family's sample names picks their lines out of it.

_SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


class Values:
    """Float values written as prometheus_client writes them, each distinct value worked out once."""

    def __init__(self) -> None:
        self.known: dict[float, str] = {0.0: "0.0"}  # by value; a -0.0 must not be looked up here

    def __call__(self, value: float) -> str:
        """Return ``value`` as the exposition writes it."""
        if value == 0:  # -0.0 == 0.0 as a key, but is written "-0.0"
            return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
        text = self.known.get(value)
        if text is None:
            text = self.known[value] = float_text(value)
        return text


def label_value(value: str) -> str:
    """Return a label value escaped as the text format writes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class FamilyHead:
    """A metric family's name (as ``Metric`` takes it: counters without ``_total``), help and type."""

    def __init__(self, name: str, doc: str, kind: str) -> None:
        self.name, self.doc, self.kind = name, doc, kind
        self.sample_names = tuple(name + suffix for suffix in _SAMPLE_SUFFIXES[kind])
        text_name = escape_metric_name(name + _NAME_SUFFIX.get(kind, ""))
        text_doc = doc.replace("\\", r"\\").replace("\n", r"\n")
        self.text_header = f"# HELP {text_name} {text_doc}\n# TYPE {text_name} {kind}\n".encode()
        om_name = escape_metric_name(name)
        self.om_header = f"# HELP {om_name} {label_value(doc)}\n# TYPE {om_name} {kind}\n".encode()

    def metric(self) -> Metric:
        """Return an empty ``Metric`` of this family."""
        return Metric(self.name, self.doc, self.kind)


def cached_parts(heads: Sequence[FamilyHead], items: Iterable[Sequence[bytes]], *,
                 openmetrics: bool = False, names: frozenset[str] | None = None, tail: bytes = b"") -> list[bytes]:
    """Return the kept text of ``items`` (per item: its lines of each family of ``heads``) in order, in pieces.

    Each family's header comes first, then every item's samples in item order, as generate_latest writes a
    registry's family. With ``names``, keep only those samples and leave out families without any, as a
    restricted registry does. ``tail`` (the other families) is appended.
    """
    rows = list(items)
    output: list[bytes] = []
    for index, head in enumerate(heads):
        if names is not None and names.isdisjoint(head.sample_names):
            continue
        kept = [row[index] for row in rows]
        if names is not None and not names.issuperset(head.sample_names):
            wanted = {name.encode() for name in names}
            kept = [_lines_named(text, wanted) for text in kept]
        if names is not None and not any(kept):
            continue
        output.append(head.om_header if openmetrics else head.text_header)
        output.extend(kept)
    output.append(tail)
    return output


def _lines_named(text: bytes, wanted: set[bytes]) -> bytes:
    """Return the lines of ``text`` whose sample name is in ``wanted``."""
    return b"".join(line for line in text.splitlines(keepends=True)
                    if line.split(b"{", 1)[0].split(b" ", 1)[0] in wanted)
