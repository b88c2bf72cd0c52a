"""Received headers parsed into hops."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from probe.hops import slowest_hop
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


# Exchange's forms (the source forest's own hops and an Exchange smart host) and Postfix's, as they arrive.
EXCHANGE_SUBMISSION = (
    "from CO-MBX-1.contoso.com (2001:db8::7) by CO-MBX-1.contoso.com (2001:db8::7) with Microsoft SMTP Server\r\n"
    " (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1544.4 via Mailbox Transport;\r\n"
    " Sat, 28 Nov 2026 09:00:00 +0000"
)
EXCHANGE_SMART_HOST = (
    "from CO-MBX-1.contoso.com (203.0.113.7) by FC-EDGE-2.fourthcoffee.com (198.51.100.12) with Microsoft SMTP"
    " Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1544.4; Sat, 28 Nov 2026"
    " 09:00:01 +0000"
)
POSTFIX_SOURCE = (
    "from probe.contoso.com (probe.contoso.com [192.0.2.44])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"
    " (256/256 bits))\r\n\tby relay.contoso.com (Postfix) with ESMTPSA id 4R2aBc\r\n\tfor"
    " <mailflow.probe@fourthcoffee.com>; Sat, 28 Nov 2026 09:00:00 +0000"
)
LITERALS = "from [192.0.2.9] ([192.0.2.9]) by [IPv6:2001:db8::25] with ESMTP id x1; Sat, 28 Nov 2026 09:00:02 +0000"


def test_exchange_forms_give_both_hosts_and_their_addresses():
    """Exchange's "from HOST (IP) by HOST (IP) with Microsoft SMTP Server (...) id 15.x" gives names and addresses."""
    hop = parse_hop(EXCHANGE_SMART_HOST)
    assert (hop.from_host, hop.from_address) == ("CO-MBX-1.contoso.com", "203.0.113.7")
    assert (hop.by_host, hop.by_address) == ("FC-EDGE-2.fourthcoffee.com", "198.51.100.12")
    assert hop.id == "15.2.1544.4"
    submission = parse_hop(EXCHANGE_SUBMISSION)
    assert submission.by_address == "2001:db8::7"
    assert submission.timestamp == datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)


def test_postfix_forms_give_the_client_address_and_no_receiving_address():
    """Postfix's "from HELO (RDNS [IP]) (using TLS...) by HOST (Postfix)" gives the client's address only."""
    hop = parse_hop(POSTFIX_SOURCE)
    assert (hop.from_host, hop.from_address) == ("probe.contoso.com", "192.0.2.44")
    assert (hop.by_host, hop.by_address) == ("relay.contoso.com", None)
    assert hop.for_address == "mailflow.probe@fourthcoffee.com"


def test_address_literals_are_their_own_addresses():
    """A host written as an address literal ([IP], [IPv6:IP]) is its own address."""
    hop = parse_hop(LITERALS)
    assert (hop.from_address, hop.by_address) == ("192.0.2.9", "2001:db8::25")
    assert hop.to_json()["by_address"] == "2001:db8::25"


def test_a_comment_without_an_address_gives_none():
    """Comments that hold no IP address (a product name, TLS facts, a hex-looking word) give no address."""
    hop = parse_hop("from cafe (deadbeef) by beef.example (ESMTP cafe) with SMTP; Sat, 28 Nov 2026 09:00:02 +0000")
    assert (hop.from_address, hop.by_address) == (None, None)


# Exchange's forms (on-premises and Exchange Online), as Exchange writes them: the build number as the id, the
# server addresses in comments, "with Microsoft SMTP Server (version=..., cipher=...)", a local time zone.
EXCHANGE_EDGE = (
    "from mail.contoso.com (192.0.2.5) by FC-EDGE-1.fourthcoffee.com (198.51.100.7) with Microsoft SMTP Server\r\n"
    " (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1544.4; Wed, 1 Dec 2021\r\n"
    " 08:04:27 -0800"
)
EXCHANGE_MAILBOX = (
    "from FC-EDGE-1.fourthcoffee.com (198.51.100.7) by FC-MBX-1.fourthcoffee.com (198.51.100.9) with\r\n"
    " Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id\r\n"
    " 15.2.1544.4; Wed, 1 Dec 2021 16:04:31 +0000"
)
EXCHANGE_FRONTEND = (
    "from localhost (2001:db8:5:100f::320:4a05) by BL1P223CA0025.NAMP223.PROD.OUTLOOK.COM (2603:10b6:208:2c4::30)"
    " with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.4734.23"
    " via Frontend Transport; Wed, 1 Dec 2021 08:04:26 +0000"
)
EXCHANGE_MAPI = (
    "from BY5PR09MB5090.namprd09.prod.outlook.com ([fe80::3ca3:b9c4:5e3d:58f6]) by"
    " BY5PR09MB5090.namprd09.prod.outlook.com ([fe80::3ca3:b9c4:5e3d:58f6%3]) with mapi id 15.20.4755.014; Wed, 1 Dec"
    " 2021 08:04:27 +0000"
)


def test_exchanges_hops_read_host_protocol_build_and_time() -> None:
    """Exchange's Received: the hosts, "Microsoft SMTP Server" as the protocol (not its first word), the build as
    the id, a local zone read in UTC; the delay between hops across zones."""
    hops = parse_received([EXCHANGE_MAILBOX, EXCHANGE_EDGE])
    assert [(h.from_host, h.by_host) for h in hops] == [
        ("mail.contoso.com", "FC-EDGE-1.fourthcoffee.com"), ("FC-EDGE-1.fourthcoffee.com", "FC-MBX-1.fourthcoffee.com")]
    assert [h.with_protocol for h in hops] == ["Microsoft SMTP Server"] * 2
    assert [h.id for h in hops] == ["15.2.1544.4"] * 2
    assert hops[0].timestamp == datetime(2021, 12, 1, 16, 4, 27, tzinfo=UTC)
    assert hops[1].delay == 4.0


def test_exchange_onlines_frontend_and_mapi_hops() -> None:
    """IPv6 addresses in comments, "via Frontend Transport", and a mapi submission hop read as Exchange Online writes
    them."""
    frontend, mapi = parse_hop(EXCHANGE_FRONTEND), parse_hop(EXCHANGE_MAPI)
    assert (frontend.from_host, frontend.by_host, frontend.with_protocol, frontend.id) == (
        "localhost", "BL1P223CA0025.NAMP223.PROD.OUTLOOK.COM", "Microsoft SMTP Server", "15.20.4734.23")
    assert "via Frontend Transport" in frontend.raw
    assert (mapi.with_protocol, mapi.id) == ("mapi", "15.20.4755.014")
    assert mapi.timestamp == datetime(2021, 12, 1, 8, 4, 27, tzinfo=UTC)


def test_postfixs_forms_still_read_one_word_protocols() -> None:
    """Postfix's "with ESMTPS id ..." keeps a one-word protocol and its queue id."""
    hop = parse_hop(EDGE)
    assert (hop.with_protocol, hop.id) == ("ESMTPS", "4Q1xYz")


def test_the_slowest_hop_is_the_longest_delay_by_its_receiving_host() -> None:
    """The slowest hop of a chain: its receiving host and delay; hops without a delay are skipped."""
    hops = [h.to_json() for h in parse_received([EXCHANGE_MAILBOX, EXCHANGE_EDGE])]
    assert slowest_hop(hops) == ("FC-MBX-1.fourthcoffee.com", 4.0)
    assert slowest_hop([hops[0]]) is None
    assert slowest_hop([{"by_host": None, "delay": 2.5}, {"by_host": "a", "delay": float("nan")}]) == ("unknown", 2.5)
    assert slowest_hop([{"by_host": "a", "delay": "3"}, "not a hop"]) is None  # type: ignore[list-item]
