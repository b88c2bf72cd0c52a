"""Every part of prometheus_client the fast /metrics renderer relies on beyond its documented API, in one module.

The renderer (probe.exposition, probe.pair_series) writes the bytes prometheus_client's own encoders would,
without going through them, so it leans on things prometheus_client does not promise: how it formats a float
(``utils.floatToGoString``), how it escapes names (``openmetrics.exposition``'s escape functions), what
``choose_encoder`` returns (a ``functools.partial`` whose function and ``escaping`` tell which format a
client asked for) and the escaping names it uses. ``INTERNALS`` lists each with why; tests/
test_prometheus_internals.py checks every one against the installed version, so an upgrade that renames or
reshapes one fails there, by name, instead of quietly serving different bytes than prometheus_client would.
(The byte-for-byte tests in tests/test_exposition.py catch a change of behaviour; these catch a removal.)

Private names are looked up when used, never at import: a removed one breaks the scrape that needs it (the
listener answers 500 and logs why), not the daemon's start-up.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from prometheus_client.exposition import generate_latest

Style = Literal["text", "openmetrics"]

_UTILS: Final = "prometheus_client.utils"
_OPENMETRICS: Final = "prometheus_client.openmetrics.exposition"


def _get(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def float_text(value: float) -> str:
    """Return ``value`` as prometheus_client writes a sample value or a bucket bound."""
    text: str = _get(_UTILS, "floatToGoString")(value)
    return text


def escape_metric_name(name: str) -> str:
    """Return a metric name escaped as the text formats write it (legacy names come back unchanged)."""
    text: str = _get(_OPENMETRICS, "escape_metric_name")(name)
    return text


def escape_label_name(name: str) -> str:
    """Return a label name escaped as the text formats write it."""
    text: str = _get(_OPENMETRICS, "escape_label_name")(name)
    return text


def encoder_style(encoder: Callable[..., bytes]) -> Style | None:
    """Return the format ``encoder`` (from ``choose_encoder``) writes when the fast renderer writes the same bytes.

    "text" (0.0.4) or "openmetrics" in the underscores or allow-utf-8 escapings, which leave legacy names (this
    exporter's) alone; None for anything else, which prometheus_client's own encoder then writes.
    """
    func = encoder.func if isinstance(encoder, functools.partial) else encoder
    keywords = encoder.keywords if isinstance(encoder, functools.partial) else {}
    underscores, allow_utf8 = _get(_OPENMETRICS, "UNDERSCORES"), _get(_OPENMETRICS, "ALLOWUTF8")
    if keywords.get("escaping", underscores) not in (underscores, allow_utf8):
        return None
    if func is generate_latest:
        return "text"
    return "openmetrics" if func is _get(_OPENMETRICS, "generate_latest") else None


# -- the list of every internal relied on, checked by tests/test_prometheus_internals.py ---------------------

@dataclass(frozen=True, kw_only=True)
class Internal:
    """One part of prometheus_client beyond its documented API, and how to see it is still as relied on."""

    path: str  # module:name
    why: str
    check: Callable[[Any], str | None]  # given the object: what is wrong with it, or None

    def problem(self) -> str | None:
        """Return what is wrong with this internal in the installed version, or None when it is as expected."""
        module, _, name = self.path.partition(":")
        try:
            found = _get(module, name)
        except (ImportError, AttributeError) as exc:
            return f"not found ({type(exc).__name__}: {exc})"
        return self.check(found)


def _formats_floats(func: Any) -> str | None:
    expected = {1.0: "1.0", 0.25: "0.25", float("inf"): "+Inf", float("-inf"): "-Inf", 1e300: "1e+300",
                1700000000.0: "1.7e+09"}
    wrong = {value: func(value) for value, text in expected.items() if func(value) != text}
    return None if not wrong else f"writes {wrong} (expected Go's float formatting: {expected})"


def _escapes(func: Any) -> str | None:
    return None if func("mailflow_probe_sent") == "mailflow_probe_sent" else "changes a legacy name"


def _is_escaping(value: str) -> Callable[[Any], str | None]:
    return lambda found: None if found == value else f"is {found!r}, expected {value!r}"


def _partial_of_generate_latest(choose_encoder: Any) -> str | None:
    encoder, _ = choose_encoder("application/openmetrics-text;version=1.0.0")
    if not isinstance(encoder, functools.partial) or encoder.func is not _get(_OPENMETRICS, "generate_latest"):
        return f"returns {encoder!r} for OpenMetrics (expected a partial of openmetrics' generate_latest)"
    if "escaping" not in encoder.keywords:
        return f"returns {encoder!r}: no escaping keyword"
    plain, _ = choose_encoder("")
    return None if plain is generate_latest else f"returns {plain!r} for no Accept header (expected generate_latest)"


INTERNALS: Final[tuple[Internal, ...]] = (
    Internal(path=f"{_UTILS}:floatToGoString", check=_formats_floats,
             why="values and bucket bounds are written as prometheus_client writes them"),
    Internal(path=f"{_OPENMETRICS}:escape_metric_name", check=_escapes,
             why="family headers carry the name as the encoders escape it"),
    Internal(path=f"{_OPENMETRICS}:escape_label_name", check=_escapes,
             why="label names are written as the encoders escape them"),
    Internal(path=f"{_OPENMETRICS}:UNDERSCORES", check=_is_escaping("underscores"),
             why="encoder_style: the escaping that leaves legacy names alone (the default)"),
    Internal(path=f"{_OPENMETRICS}:ALLOWUTF8", check=_is_escaping("allow-utf-8"),
             why="encoder_style: the other escaping that leaves legacy names alone"),
    Internal(path="prometheus_client.exposition:choose_encoder", check=_partial_of_generate_latest,
             why="encoder_style reads which format and escaping a client asked for from what it returns"),
)
