"""The offset of a mailbox server's clock from the probe's, from the HTTP Date of its responses (or any stamp).

A response whose Date header reads D (whole seconds, server clock) was stamped at some moment m between
the request being sent (t_send) and the response arriving (t_recv), both on the probe's clock; at m the
server's clock read some s in [D, D + 1). So offset = s - m lies in [D - t_recv, D + 1 - t_send].
Intersecting these bounds over recent responses narrows the offset; the midpoint is the estimate.

Responses at random moments narrow it slowly; a request timed to be stamped just when the midpoint says
the server clock turns a whole second halves it (the Date tells on which side of the boundary the truth
lies). ``calibrate`` sends such requests until the estimate is as narrow as asked: about five of them
take +-0.5 s to +-0.03 s plus the round trip.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_AGE: Final = 900.0  # seconds after which a response no longer bounds the offset (drift)
DEFAULT_MAX_SAMPLES: Final = 64  # bounds kept per side at most (only those that may still decide are kept)
CALIBRATION_LEAD: Final = 0.02  # seconds between planning a timed request and the earliest it may be sent
_STALLS: Final = 2  # timed requests in a row that narrow nothing much before calibration gives up
_MIN_GAIN: Final = 0.9  # a timed request "narrows" when the uncertainty falls below this fraction of before


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
class _Edge:
    value: float
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


class _Extremum:
    """The largest (or smallest) value of a sliding window of recent values, in amortised O(1).

    Only values that may still become the extremum once older ones age out are kept: the window's
    extremum is the front, and a new value drops every older one it beats.
    """

    def __init__(self, *, largest: bool, max_kept: int) -> None:
        self._largest = largest
        self._max_kept = max_kept
        self._edges: deque[_Edge] = deque()

    def add(self, edge: _Edge) -> None:
        while self._edges and not self._beats(self._edges[-1].value, edge.value):
            self._edges.pop()
        self._edges.append(edge)
        if len(self._edges) > self._max_kept:
            self._edges.popleft()

    def drop_older(self, than: float) -> None:
        while self._edges and self._edges[0].at < than:
            self._edges.popleft()

    def clear(self) -> None:
        self._edges.clear()

    def value(self) -> float | None:
        return self._edges[0].value if self._edges else None

    def _beats(self, kept: float, new: float) -> bool:
        return kept > new if self._largest else kept < new


class ClockOffset:
    """Bound a server's clock offset from its responses' Date headers; thread-safe.

    Bounds older than ``max_age`` are forgotten (clocks drift); when a response disagrees with the bounds
    (the server clock was set), they start afresh from it.
    """

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self._max_age = max_age
        self._lows = _Extremum(largest=True, max_kept=max_samples)
        self._highs = _Extremum(largest=False, max_kept=max_samples)
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self._resets = 0

    @property
    def resets(self) -> int:
        """Return how often the bounds disagreed and were started afresh (the server clock moved)."""
        return self._resets

    def observe(self, *, sent_at: float, received_at: float, date_header: str | None) -> None:
        """Take one response: its request was sent at ``sent_at`` and it arrived at ``received_at`` (local)."""
        server = parse_http_date(date_header)
        if server is not None:
            self.observe_stamp(sent_at=sent_at, received_at=received_at, server=server)

    def observe_stamp(self, *, sent_at: float, received_at: float, server: float) -> None:
        """Take one whole-second server stamp (a Unix time) made between ``sent_at`` and ``received_at`` (local).

        An HTTP Date, or the INTERNALDATE of a message the probe itself appended (IMAP).
        """
        if received_at < sent_at:
            return
        low, high = _Edge(server - received_at, received_at), _Edge(server + 1.0 - sent_at, received_at)
        with self._lock:
            self._drop_stale(now=received_at)
            known_low, known_high = self._lows.value(), self._highs.value()
            if known_low is not None and known_high is not None and (low.value > known_high
                                                                     or high.value < known_low):
                self._lows.clear()
                self._highs.clear()
                self._times.clear()
                self._resets += 1
            self._lows.add(low)
            self._highs.add(high)
            self._times.append(received_at)

    def estimate(self, *, now: float | None = None) -> OffsetEstimate | None:
        """Return the current estimate, or None when no recent response bounds it."""
        with self._lock:
            if now is not None:
                self._drop_stale(now=now)
            low, high = self._lows.value(), self._highs.value()
            if low is None or high is None:
                return None
            return OffsetEstimate(low=low, high=high, samples=len(self._times))

    def _drop_stale(self, *, now: float) -> None:
        oldest = now - self._max_age
        self._lows.drop_older(oldest)
        self._highs.drop_older(oldest)
        while self._times and self._times[0] < oldest:
            self._times.popleft()


# -- active calibration -------------------------------------------------------------------------------

Exchange = Callable[[float], float | None]
"""Send one cheap request no earlier than the given local time, its response's Date fed to the clock;
return its round trip in seconds, or None when it got no response."""


def boundary_send_time(estimate: OffsetEstimate, *, earliest: float, lag: float) -> float:
    """Return the first local time from ``earliest`` at which a request would be stamped on a whole server second.

    ``lag`` is how long after sending the server stamps the response (about half the round trip); the
    server second is reckoned with the estimate's midpoint, so the response's Date halves the bounds.
    """
    boundary = math.ceil(earliest + lag + estimate.offset)
    return boundary - estimate.offset - lag


def calibrate(clock: ClockOffset, exchange: Exchange, *, target: float, budget: float,
              now: Callable[[], float] = time.time) -> OffsetEstimate | None:
    """Send timed requests until the offset is known to within ``target`` seconds, for at most ``budget`` seconds.

    Returns the estimate then (None when the server never answered with a Date); sends nothing when it is
    already narrow enough. Stops early when the requests stop narrowing it (the round trip is the floor).
    """
    deadline = now() + budget
    rtt, stalls = 0.0, 0
    estimate = clock.estimate(now=now())
    while (estimate is None or estimate.uncertainty > target) and stalls < _STALLS:
        earliest = now() + CALIBRATION_LEAD
        send_at = earliest if estimate is None else boundary_send_time(estimate, earliest=earliest, lag=rtt / 2)
        if send_at + rtt > deadline:
            break
        measured = exchange(send_at)
        after = clock.estimate(now=now())
        if measured is None or after is None:
            return after
        rtt = measured
        narrowed = estimate is None or after.uncertainty < _MIN_GAIN * estimate.uncertainty
        stalls = 0 if narrowed else stalls + 1
        estimate = after
    return estimate


@dataclass(frozen=True, kw_only=True)
class LocalArrival:
    """When a message arrived, on the probe's clock: a best value and the interval it lies in."""

    at: float
    earliest: float
    latest: float


def local_arrival(*, received_server: float, precise: bool, first_seen_local: float,
                  offset: OffsetEstimate | None) -> LocalArrival:
    """Map a server receipt stamp to the probe's clock, narrowed by the moment the probe first saw it.

    A whole-second stamp S means the arrival was in [S, S + 1) on the server clock; the offset's bounds
    widen that on the probe's clock, and the first sighting cuts it short: the best value is the middle of
    what remains. With no offset known, the server clock is taken as the probe's. The arrival is never
    put after the first sighting: when the offset says otherwise it is wrong (the server clock moved),
    and the sighting is taken, as uncertain as the offset's interval is wide.
    """
    low_off, high_off = (offset.low, offset.high) if offset is not None else (0.0, 0.0)
    width = 0.0 if precise else 1.0
    earliest = received_server - high_off
    latest = min(received_server + width - low_off, first_seen_local)
    if latest < earliest:
        spread = width + high_off - low_off
        return LocalArrival(at=first_seen_local, earliest=first_seen_local - spread, latest=first_seen_local)
    return LocalArrival(at=(earliest + latest) / 2, earliest=earliest, latest=latest)
