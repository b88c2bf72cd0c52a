"""The server clock offset, bounded by whole-second HTTP Date headers."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.mailbox.clock import ClockOffset, calibrate, local_arrival, parse_http_date


def _exchange(clock: ClockOffset, *, local: float, offset: float, rtt: float = 0.01) -> None:
    """Record one response whose server stamped it halfway through a round trip starting at ``local``."""
    server = local + rtt / 2 + offset
    clock.observe(sent_at=local, received_at=local + rtt, date_header=formatdate(int(server), usegmt=True))


@pytest.mark.parametrize("offset", [30.0, -30.0, 0.0, 1234.567])
def test_offset_is_bounded_and_narrows(offset):
    """Responses spread over a second pin the offset well within a second, and the truth is always inside."""
    clock = ClockOffset()
    base = 1_800_000_000.0
    for i in range(12):
        _exchange(clock, local=base + i * 0.37, offset=offset)
        estimate = clock.estimate()
        assert estimate is not None
        assert estimate.low <= offset <= estimate.high
    assert estimate is not None
    assert estimate.uncertainty < 0.1
    assert abs(estimate.offset - offset) < 0.1


def test_a_clock_jump_starts_afresh():
    """When the server clock moves, the old bounds disagree and are dropped."""
    clock = ClockOffset()
    base = 1_800_000_000.0
    for i in range(5):
        _exchange(clock, local=base + i * 0.3, offset=0.0)
    _exchange(clock, local=base + 2, offset=30.0)
    estimate = clock.estimate()
    assert estimate is not None
    assert estimate.low <= 30.0 <= estimate.high
    assert clock.resets == 1


def test_stale_responses_are_forgotten():
    """Responses older than max_age no longer bound the offset."""
    clock = ClockOffset(max_age=10)
    _exchange(clock, local=1_800_000_000.0, offset=5.0)
    assert clock.estimate(now=1_800_000_005.0) is not None
    assert clock.estimate(now=1_800_000_020.0) is None


def test_unreadable_dates_are_ignored():
    """A missing or garbled Date header bounds nothing."""
    clock = ClockOffset()
    clock.observe(sent_at=1.0, received_at=2.0, date_header=None)
    clock.observe(sent_at=1.0, received_at=2.0, date_header="yesterday-ish")
    assert clock.estimate() is None
    stamp = datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC).timestamp()
    assert parse_http_date("Sat, 28 Nov 2026 09:00:01 GMT") == stamp


def test_whole_second_stamp_is_narrowed_by_first_sight():
    """A whole-second stamp spans a second; the moment the probe saw the message cuts that short."""
    clock = ClockOffset()
    for i in range(12):
        _exchange(clock, local=1_800_000_000.0 + i * 0.37, offset=30.0)
    offset = clock.estimate()
    coarse = local_arrival(received_server=1_800_000_130.0, precise=False, first_seen_local=1_800_000_100.2,
                           offset=offset)
    assert coarse.earliest == pytest.approx(1_800_000_100.0, abs=0.1)
    assert coarse.latest == 1_800_000_100.2
    precise = local_arrival(received_server=1_800_000_130.5, precise=True, first_seen_local=1_800_000_101.0,
                            offset=offset)
    assert precise.at == pytest.approx(1_800_000_100.5, abs=0.1)


def test_an_arrival_is_never_put_after_its_first_sighting():
    """When the offset puts the stamp after the probe first saw the message, the sighting wins."""
    clock = ClockOffset()
    for i in range(12):
        _exchange(clock, local=1_800_000_000.0 + i * 0.37, offset=30.0)
    offset = clock.estimate()
    late = local_arrival(received_server=1_800_000_135.0, precise=True, first_seen_local=1_800_000_100.0,
                         offset=offset)
    assert late.at == late.latest == 1_800_000_100.0
    assert late.earliest < late.latest


class _FakeServer:
    """A server whose clock runs ``offset`` ahead, answering after ``rtt`` and stamping at ``stamp_at`` of it.

    Time is simulated: ``now`` only moves when the fake waits for a send time or for a round trip.
    """

    def __init__(self, clock: ClockOffset, *, offset: float, rtt: float = 0.004, stamp_at: float = 0.5,
                 start: float = 1_800_000_000.123, answers: bool = True) -> None:
        self.clock, self.offset, self.rtt, self.stamp_at = clock, offset, rtt, stamp_at
        self.time, self.answers = start, answers
        self.sent: list[float] = []

    def now(self) -> float:
        return self.time

    def exchange(self, send_at: float) -> float | None:
        self.time = max(self.time, send_at) + 0.0003  # the client's own overhead before the bytes leave
        self.sent.append(self.time)
        if not self.answers:
            self.time += 1.0
            return None
        sent = self.time
        server = sent + self.rtt * self.stamp_at + self.offset
        self.time += self.rtt
        self.clock.observe(sent_at=sent, received_at=self.time, date_header=formatdate(int(server), usegmt=True))
        return self.rtt


def _calibrate(server: _FakeServer, *, target: float = 0.05, budget: float = 5.0):
    return calibrate(server.clock, server.exchange, target=target, budget=budget, now=server.now)


@settings(max_examples=300, deadline=None)
@given(offset=st.floats(min_value=-4000, max_value=4000), rtt=st.floats(min_value=0.0005, max_value=0.03),
       stamp_at=st.floats(min_value=0, max_value=1), start=st.floats(min_value=0, max_value=1))
def test_timed_requests_halve_the_bounds(offset, rtt, stamp_at, start):
    """From nothing, about five timed requests pin the offset to 0.05 s, always keeping the truth inside."""
    clock = ClockOffset()
    server = _FakeServer(clock, offset=offset, rtt=rtt, stamp_at=stamp_at, start=1_800_000_000 + start)
    estimate = _calibrate(server)
    assert estimate is not None
    assert estimate.low <= offset <= estimate.high
    assert estimate.uncertainty <= 0.05
    assert len(server.sent) <= 7
    assert server.time - (1_800_000_000 + start) <= 5.0


def test_a_narrow_estimate_costs_no_request():
    """Calibrating an estimate already within the target sends nothing."""
    clock = ClockOffset()
    first = _FakeServer(clock, offset=12.5)
    assert _calibrate(first, target=0.01) is not None
    again = _FakeServer(clock, offset=12.5, start=first.time + 60)
    estimate = _calibrate(again, target=0.01)
    assert again.sent == []
    assert estimate is not None
    assert estimate.uncertainty <= 0.01


def test_calibration_keeps_to_its_budget():
    """No timed request is planned to end after the budget."""
    server = _FakeServer(ClockOffset(), offset=-3.3)
    estimate = _calibrate(server, target=0.001, budget=1.5)
    assert estimate is not None
    assert estimate.low <= -3.3 <= estimate.high
    assert server.sent[-1] + server.rtt <= 1_800_000_000.123 + 1.5 + 0.001


def test_the_round_trip_is_the_floor():
    """When the round trip keeps the bounds from narrowing further, calibration stops rather than spin."""
    server = _FakeServer(ClockOffset(), offset=0.7, rtt=0.3)
    estimate = _calibrate(server, target=0.01, budget=60.0)
    assert estimate is not None
    assert estimate.low <= 0.7 <= estimate.high
    assert 0.1 <= estimate.uncertainty <= 0.25
    assert len(server.sent) <= 8


def test_a_silent_server_ends_calibration_at_once():
    """A server that does not answer ends calibration after one request, with no estimate."""
    server = _FakeServer(ClockOffset(), offset=0.0, answers=False)
    assert _calibrate(server) is None
    assert len(server.sent) == 1


def test_a_calibration_outlives_later_coarse_responses():
    """Narrow bounds stay in force while hundreds of coarse responses follow, until they age out."""
    clock = ClockOffset(max_age=900)
    server = _FakeServer(clock, offset=5.25)
    calibrated = _calibrate(server, target=0.01)
    assert calibrated is not None
    for i in range(300):  # a poll every 2.0 s, always at the same phase of the second
        _exchange(clock, local=server.time + 1 + 2.0 * i, offset=5.25)
    kept = clock.estimate()
    assert kept is not None
    assert kept.uncertainty <= calibrated.uncertainty
    aged = clock.estimate(now=server.time + 1000)
    assert aged is not None
    assert aged.uncertainty > 0.4
