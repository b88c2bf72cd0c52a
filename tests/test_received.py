"""Received headers parsed into hops."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from probe.mailbox.received import parse_hop, parse_received

EDGE = (
    "from mail.contoso.com (mail.contoso.com [192.0.2.5]) by fc-edge-1.fourthcoffee.com (Postfix)"
    " with ESMTPS id 4Q1xYz (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384) for <mailflow.probe@fourthcoffee.com>;"
    " Sat, 28 Nov 2026 09:00:01 +0000"
)
MAILBOX = (
    "from fc-edge-1.fourthcoffee.com (198.51.100.7) by FC-MBX-1.fourthcoffee.com (198.51.100.9)\r\n"
    " with Microsoft SMTP Server (version=TLS1_2) id 15.2.1544.4; Sat, 28 Nov 2026 10:00:03 +0100"
)


def test_clauses_and_time_are_read():
    """Each clause's first word is kept, comments are skipped, the date is read in UTC."""
    hop = parse_hop(EDGE)
    assert hop.from_host == "mail.contoso.com"
    assert hop.by_host == "fc-edge-1.fourthcoffee.com"
    assert hop.with_protocol == "ESMTPS"
    assert hop.id == "4Q1xYz"
    assert hop.for_address == "mailflow.probe@fourthcoffee.com"
    assert hop.timestamp == datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC)


def test_hops_are_oldest_first_with_delays():
    """Headers come newest first; hops are returned oldest first with the delay from the previous hop."""
    hops = parse_received([MAILBOX, EDGE])
    assert [h.by_host for h in hops] == ["fc-edge-1.fourthcoffee.com", "FC-MBX-1.fourthcoffee.com"]
    assert hops[0].delay is None
    assert hops[1].delay == 2.0
    assert hops[1].to_json()["delay"] == 2.0


def test_a_hop_without_date_breaks_no_chain():
    """A hop with no readable date has no delay, and the next dated hop measures from the last dated one."""
    hops = parse_received([MAILBOX, "by relay.example with SMTP", EDGE])
    assert [h.delay for h in hops] == [None, None, 2.0]
    assert hops[1].timestamp is None


@given(st.lists(st.text(max_size=300), max_size=5))
def test_garbage_never_raises(values):
    """Any text at all parses into hops without raising."""
    hops = parse_received(values)
    assert len(hops) == len(values)
