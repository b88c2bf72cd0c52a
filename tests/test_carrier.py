"""Which smart host carried a connector probe, read from Received chains in Exchange's and Postfix's forms."""

from __future__ import annotations

from probe.carrier import carried_by
from probe.config import SmartHostConfig
from probe.mailbox.received import parse_received

EDGE_1 = SmartHostConfig(name="fc-edge-1", host="198.51.100.11")
EDGE_2 = SmartHostConfig(name="fc-edge-2", host="edge2.fourthcoffee.com")
EDGE_3 = SmartHostConfig(name="relay", host="198.51.100.13", server_name="mail.fourthcoffee.com")
HOSTS = (EDGE_1, EDGE_2, EDGE_3)
DATE = "Sat, 28 Nov 2026 09:00:0{} +0000"

SOURCE = ("from CO-MBX-1.contoso.com (203.0.113.7) by CO-MBX-1.contoso.com (203.0.113.7) with Microsoft SMTP"
          " Server id 15.2.1544.4 via Mailbox Transport; " + DATE.format(0))
TARGET_MAILBOX = ("from {} (198.51.100.11) by FC-MBX-1.fourthcoffee.com (198.51.100.20) with Microsoft SMTP Server"
                  " id 15.2.1544.4; " + DATE.format(3))


def chain(*hops: str) -> list[str]:
    """Return Received values as a message holds them: newest first."""
    return list(reversed(hops))


def exchange_hop(by: str, by_ip: str, second: int = 1) -> str:
    return (f"from CO-MBX-1.contoso.com (203.0.113.7) by {by} ({by_ip}) with Microsoft SMTP Server"
            f" (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.2.1544.4; {DATE.format(second)}")


def test_an_exchange_smart_host_is_matched_by_its_address():
    """Exchange's "by HOST (IP)" names a smart host configured by IP, whatever the host name says."""
    hops = parse_received(chain(SOURCE, exchange_hop("SRV-4711.fourthcoffee.com", "198.51.100.11"),
                                TARGET_MAILBOX.format("SRV-4711.fourthcoffee.com")))
    assert carried_by(hops, HOSTS) == "fc-edge-1"


def test_a_smart_host_configured_by_name_is_matched_by_that_name():
    """A smart host configured by host name is the hop received by that name (case and trailing dot aside)."""
    hops = parse_received(chain(SOURCE, exchange_hop("EDGE2.FourthCoffee.com.", "198.51.100.99")))
    assert carried_by(hops, HOSTS) == "fc-edge-2"


def test_a_smart_hosts_name_matches_the_first_label_and_server_name_matches_too():
    """The configured name matches the receiving host's first label; server_name matches the whole name."""
    by_label = parse_received(chain(SOURCE, exchange_hop("FC-EDGE-1.fourthcoffee.com", "192.0.2.1")))
    assert carried_by(by_label, HOSTS) == "fc-edge-1"
    by_server_name = parse_received(chain(SOURCE, exchange_hop("mail.fourthcoffee.com", "192.0.2.1")))
    assert carried_by(by_server_name, HOSTS) == "relay"


def test_postfix_forms_are_matched_by_name():
    """Postfix's "by HOST (Postfix)" carries no address: the receiving name decides."""
    postfix = ("from relay.contoso.com (relay.contoso.com [203.0.113.9]) (using TLSv1.3 with cipher"
               " TLS_AES_256_GCM_SHA384 (256/256 bits)) by fc-edge-1.fourthcoffee.com (Postfix) with ESMTPSA id"
               " 4R2aBc for <mailflow.probe@fourthcoffee.com>; " + DATE.format(1))
    assert carried_by(parse_received(chain(postfix)), HOSTS) == "fc-edge-1"


def test_the_oldest_smart_host_hop_is_where_the_message_entered():
    """When a message passed two smart hosts, the first one (oldest hop) carried it into the target forest."""
    hops = parse_received(chain(SOURCE, exchange_hop("x.fourthcoffee.com", "198.51.100.13", 1),
                                exchange_hop("y.fourthcoffee.com", "198.51.100.11", 2)))
    assert carried_by(hops, HOSTS) == "relay"


def test_an_address_match_beats_a_name_match_on_the_same_hop():
    """A hop whose name looks like one smart host but whose address is another's is the address's."""
    hops = parse_received(chain(exchange_hop("fc-edge-2.fourthcoffee.com", "198.51.100.11")))
    assert carried_by(hops, HOSTS) == "fc-edge-1"


def test_no_smart_host_on_the_path_gives_none():
    """A chain through none of the route's smart hosts (another path, or no Received headers) gives None."""
    assert carried_by(parse_received(chain(SOURCE, exchange_hop("mx.other.example", "192.0.2.77"))), HOSTS) is None
    assert carried_by(parse_received([]), HOSTS) is None
    assert carried_by(parse_received(["garbage (((", ""]), HOSTS) is None
