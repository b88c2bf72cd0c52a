"""The server clock offset, bounded by whole-second HTTP Date headers."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate

import pytest

from probe.mailbox.clock import ClockOffset, local_arrival, parse_http_date


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
