"""The offset of a mailbox server's clock from the probe's, from the HTTP Date of its responses.

A response whose Date header reads D (whole seconds, server clock) was stamped at some moment m between
the request being sent (t_send) and the response arriving (t_recv), both on the probe's clock; at m the
server's clock read some s in [D, D + 1). So offset = s - m lies in [D - t_recv, D + 1 - t_send].
Intersecting these bounds over recent responses narrows the offset; the midpoint is the estimate.
"""

from __future__ import annotations

import email.utils
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_AGE: Final = 900.0  # seconds after which a response no longer bounds the offset (drift)
DEFAULT_MAX_SAMPLES: Final = 64


@dataclass(frozen=True, kw_only=True)
class OffsetEstimate:
    """The server clock minus the probe's clock, in seconds: bounds, midpoint and half-width."""

    low: float
    high: float
    samples: int

    @property
    def offset(self) -> float:
        """Return the midpoint of the bounds."""
        return (self.low + self.high) / 2

    @property
    def uncertainty(self) -> float:
        """Return the half-width of the bounds: the estimate is within this of the truth."""
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class _Bound:
    low: float
    high: float
    at: float


def parse_http_date(value: str | None) -> float | None:
    """Return an HTTP Date header as a Unix time, or None when it is absent or unreadable."""
    if not value:
        return None
    try:
        stamp = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        return stamp.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


class ClockOffset:
    """Bound a server's clock offset from its responses' Date headers; thread-safe."""

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self._max_age = max_age
        self._bounds: deque[_Bound] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self._resets = 0

    @property
    def resets(self) -> int:
        """Return how often the bounds disagreed and were started afresh (the server clock moved)."""
        return self._resets

    def observe(self, *, sent_at: float, received_at: float, date_header: str | None) -> None:
        """Take one response: its request was sent at ``sent_at`` and it arrived at ``received_at`` (local)."""
        server = parse_http_date(date_header)
        if server is None or received_at < sent_at:
            return
        bound = _Bound(low=server - received_at, high=server + 1.0 - sent_at, at=received_at)
        with self._lock:
            self._drop_stale(now=received_at)
            self._bounds.append(bound)
            if _intersect(self._bounds) is None:
                self._bounds.clear()
                self._bounds.append(bound)
                self._resets += 1

    def estimate(self, *, now: float | None = None) -> OffsetEstimate | None:
        """Return the current estimate, or None when no recent response bounds it."""
        with self._lock:
            if now is not None:
                self._drop_stale(now=now)
            bounds = _intersect(self._bounds)
            if bounds is None:
                return None
            return OffsetEstimate(low=bounds[0], high=bounds[1], samples=len(self._bounds))

    def _drop_stale(self, *, now: float) -> None:
        while self._bounds and now - self._bounds[0].at > self._max_age:
            self._bounds.popleft()


def _intersect(bounds: deque[_Bound]) -> tuple[float, float] | None:
    if not bounds:
        return None
    low = max(b.low for b in bounds)
    high = min(b.high for b in bounds)
    return (low, high) if low <= high else None


@dataclass(frozen=True, kw_only=True)
class LocalArrival:
    """When a message arrived, on the probe's clock: a best value and the interval it lies in."""

    at: float
    earliest: float
    latest: float


def local_arrival(*, received_server: float, precise: bool, first_seen_local: float,
                  offset: OffsetEstimate | None) -> LocalArrival:
    """Map a server receipt stamp to the probe's clock, narrowed by the moment the probe first saw it.

    A whole-second stamp S means the arrival was in [S, S + 1) on the server clock. With no offset
    known, the server clock is taken as the probe's.
    """
    low_off, high_off = (offset.low, offset.high) if offset is not None else (0.0, 0.0)
    width = 0.0 if precise else 1.0
    earliest = received_server - high_off
    latest = min(received_server + width - low_off, first_seen_local)
    if latest < earliest:  # the bounds disagree (clock moved since): trust the stamp over the sighting
        latest = received_server + width - low_off
    return LocalArrival(at=(earliest + latest) / 2, earliest=earliest, latest=latest)
