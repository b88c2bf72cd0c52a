"""Durations as people write them in the config: ``30s``, ``5m``, ``1h30m``, ``250ms``, or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Final

# Largest first; each unit at most once, in this order (as Prometheus writes durations).
_UNITS: Final = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_NUMBER: Final = r"\d+(?:\.\d+)?"
DURATION_PATTERN: Final = (
    rf"^(?:{_NUMBER})$|^(?=\d)(?:({_NUMBER})d)?(?:({_NUMBER})h)?(?:({_NUMBER})m(?!s))?"
    rf"(?:({_NUMBER})s)?(?:({_NUMBER})ms)?$"
)
_DURATION_RE: Final = re.compile(DURATION_PATTERN)
DURATION_EXAMPLES: Final = "30s, 5m, 1h30m or 250ms"


class DurationError(ValueError):
    """A text that is not a duration."""


def parse_duration(text: str) -> float:
    """Return the seconds that ``text`` (``30s``, ``1h30m``, ``250ms``, ``90``) stands for."""
    stripped = text.strip()
    match = _DURATION_RE.fullmatch(stripped)
    if not stripped or match is None:
        raise DurationError(f"expected a duration like {DURATION_EXAMPLES}, got {text!r}")
    if not any(match.groups()):
        return float(stripped)
    total = 0.0
    for part, (_, scale) in zip(match.groups(), _UNITS, strict=True):
        if part is not None:
            total += float(part) * scale
    return total


def format_duration(seconds: float) -> str:
    """Return ``seconds`` written the way the config writes it (``1h30m``, ``250ms``), to the millisecond."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, scale in _UNITS:
        unit_millis = round(scale * 1000)
        count, millis = divmod(millis, unit_millis)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
