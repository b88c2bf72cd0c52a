"""The lab's source transport: a Send connector through the other forest's smart hosts, over real sockets and TLS.

Mail goes in as a user sends it (EWS CreateItem SendOnly through exchangelib, or the forest's submission port
through smtplib) and comes out at the other forest's mailbox, or as a delayed DSN and an NDR owed to the sender.
"""

from __future__ import annotations

import email
import email.utils
import smtplib
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from probe.carrier import carried_by
from probe.config import Config, load_config
from probe.lab import Lab
from probe.lab.store import StoredItem
from probe.lab.transport import DeliveryNotice, TransportTiming
from probe.mailbox.received import parse_received
from probe.submit.ews import send_from_mailbox
from tests.daemon_harness import wait_for

SENDER = "mailflow.probe@contoso.test"
RECIPIENT = "mailflow.probe@fourthcoffee.test"
TIMING = TransportTiming(retry_seconds=0.3, delay_notice_seconds=1.0, expire_seconds=2.5, attempt_timeout=5.0)
ROUTE = "contoso-to-fourthcoffee"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for the module with a quick queue (retry 0.3 s, delayed DSN at 1 s, NDR at 2.5 s) and smart hosts
    that answer a failed AUTH at once (Exchange holds it back 5 s: longer than this queue's whole life)."""
    with Lab.start(tmp_path_factory.mktemp("transport") / "lab", transport_timing=TIMING,
                   tarpit_seconds=0) as started:
        yield started


@pytest.fixture(autouse=True)
def no_faults(lab: Lab) -> Iterator[None]:
    """Each test starts and ends without faults, with an empty queue."""
    lab.clear_faults()
    yield
    lab.clear_faults()
    wait_for(lambda: lab.transport("contoso").queued() == 0, timeout=10, what="the queue to drain")


@pytest.fixture(scope="module")
def config(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The lab's probe config with connector probes sent over EWS (the sender's mailbox configured)."""
    path = tmp_path_factory.mktemp("config") / "probe.yaml"
    return load_config(lab.write_probe_config(path, interval=60, timeout=30, jitter=1, connector="ews"))


def message(recipient: str = RECIPIENT, sender: str = SENDER) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, recipient, f"transport {uuid.uuid4().hex}"
    msg["Message-ID"] = email.utils.make_msgid(domain="contoso.test")
    msg.set_content("Through the Send connector.\n")
    return msg


def arrived(lab: Lab, msg: EmailMessage, address: str = RECIPIENT) -> StoredItem | None:
    return next((i for i in lab.store.items(address, ["inbox"]) if i.message_id == msg["Message-ID"]), None)


def wait_arrived(lab: Lab, msg: EmailMessage, address: str = RECIPIENT) -> StoredItem:
    wait_for(lambda: arrived(lab, msg, address) is not None, timeout=15, what=f"{msg['Subject']} in {address}")
    item = arrived(lab, msg, address)
    assert item is not None
    return item


def notices_for(lab: Lab, msg: EmailMessage) -> list[DeliveryNotice]:
    return [n for n in lab.recorded_notices.notices() if msg["Message-ID"].encode() in n.original]


def submit_smtp(lab: Lab, msg: EmailMessage, forest: str = "contoso") -> None:
    """Send ``msg`` through the forest's submission port, as the sender, after STARTTLS."""
    source = lab.forests[forest]
    with smtplib.SMTP(source.server_address, source.submission_port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.login(str(msg["From"]), source.ews_password.reveal())
        smtp.send_message(msg)


def carrier(lab: Lab, item: StoredItem, config: Config) -> str | None:
    route = next(r for r in config.routes if r.name == ROUTE)
    received = [v for k, v in item.headers if k.lower() == "received"]
    return carried_by(parse_received(received), route.smart_hosts)


def test_a_message_sent_over_ews_is_carried_by_the_first_smart_host(lab: Lab, config: Config) -> None:
    """CreateItem SendOnly from the sender's mailbox reaches the other forest through its first smart host,
    with Exchange's Received header for the submission ("via Mailbox Transport") below the smart host's."""
    msg = message()
    result = send_from_mailbox(config.mailboxes["contoso"], message=msg.as_bytes())
    assert result.ok, result.error
    item = wait_arrived(lab, msg)
    hops = parse_received([v for k, v in item.headers if k.lower() == "received"])
    assert "via Mailbox Transport" in hops[0].raw
    assert "with Microsoft SMTP Server" in hops[0].raw
    assert (hops[0].by_host, hops[0].by_address) == ("mail.contoso.test", lab.forests["contoso"].server_address)
    assert carrier(lab, item, config) == "fourthcoffee-edge-1"
    assert lab.stats.transport("contoso", "submitted_ews") >= 1


def test_the_submission_port_wants_starttls_before_auth_and_the_senders_own_address(lab: Lab) -> None:
    """Before STARTTLS nothing but EHLO and STARTTLS is taken; a wrong password is 535; a user sends only as
    itself (550 5.7.60); as itself, the message is queued and delivered."""
    source = lab.forests["contoso"]
    password = source.ews_password.reveal()
    with smtplib.SMTP(source.server_address, source.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        assert "auth" not in smtp.esmtp_features
        assert smtp.docmd("AUTH", "PLAIN")[0] == 530
        assert smtp.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 530
        smtp.starttls(context=lab.ca.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(SENDER, password + "-wrong")
        assert refused.value.smtp_code == 535
        smtp.login(SENDER, password)
        code, reply = smtp.mail("someone.else@contoso.test")
        assert (code, reply.decode()[:6]) == (550, "5.7.60")
        smtp.rset()
        msg = message()
        smtp.send_message(msg)
    item = wait_arrived(lab, msg)
    assert "via Frontend Transport" in [v for k, v in item.headers if k.lower() == "received"][-1]


def test_a_refused_first_smart_host_is_failed_over_to_the_second(lab: Lab, config: Config) -> None:
    """With the first smart host refusing connections, the connector carries the message through the second."""
    lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="refuse_connections")
    msg = message()
    submit_smtp(lab, msg)
    assert carrier(lab, wait_arrived(lab, msg), config) == "fourthcoffee-edge-2"


def test_a_pinned_connector_does_not_fail_over_and_delivers_once_its_host_recovers(lab: Lab, config: Config) -> None:
    """Pinned to a refusing smart host the message waits (a delayed DSN), and goes through it when it recovers."""
    lab.add_fault(target="connector/contoso", kind="pin", smart_host="fourthcoffee-edge-1")
    lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="refuse_connections")
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: [n.action for n in notices_for(lab, msg)] == ["delayed"], timeout=10, what="a delayed DSN")
    assert arrived(lab, msg) is None
    lab.clear_faults("smarthost/fourthcoffee-edge-1")
    assert carrier(lab, wait_arrived(lab, msg), config) == "fourthcoffee-edge-1"


def test_bad_credentials_get_535_everywhere_and_the_queue_retries_until_the_ndr(lab: Lab) -> None:
    """A wrong stored password: every smart host answers 535, the queue retries, the sender gets a delayed DSN
    and then an NDR (4.4.7, expired, naming the 535); the message is never delivered."""
    failures = {h: lab.stats.smarthost(h, "auth_failures") for h in ("fourthcoffee-edge-1", "fourthcoffee-edge-2")}
    lab.add_fault(target="connector/contoso", kind="bad_credentials")
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: any(n.action == "failed" for n in notices_for(lab, msg)), timeout=15, what="the NDR")
    delayed, failed = notices_for(lab, msg)
    assert (delayed.action, failed.action, failed.status) == ("delayed", "failed", "4.4.7")
    assert "535" in failed.diagnostic
    assert (failed.sender, failed.recipient, failed.reporting_mta) == (SENDER, RECIPIENT, "mail.contoso.test")
    assert all(lab.stats.smarthost(h, "auth_failures") >= n + 2 for h, n in failures.items())
    assert arrived(lab, msg) is None


def test_an_address_space_removed_is_an_ndr_5_4_4_at_once(lab: Lab) -> None:
    """With the connector's address space gone there is no route: an NDR 5.4.4 with no delay and no retry."""
    lab.add_fault(target="connector/contoso", kind="address_space_removed")
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: bool(notices_for(lab, msg)), timeout=5, what="the NDR")
    (notice,) = notices_for(lab, msg)
    assert (notice.action, notice.status) == ("failed", "5.4.4")
    assert "ROUTING.NoNextHop" in notice.diagnostic


def test_a_disabled_connector_holds_mail_until_it_is_enabled(lab: Lab) -> None:
    """A disabled connector routes nothing: the message waits (a delayed DSN), then goes once it is enabled."""
    lab.add_fault(target="connector/contoso", kind="disabled")
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: [n.action for n in notices_for(lab, msg)] == ["delayed"], timeout=10, what="a delayed DSN")
    assert arrived(lab, msg) is None
    lab.clear_faults()
    wait_arrived(lab, msg)


def test_tls_unavailable_but_required_sends_no_credentials_anywhere(lab: Lab) -> None:
    """With TLS required and impossible, no smart host is even asked: no AUTH, no connection, then an NDR."""
    def seen() -> dict[str, tuple[int, int]]:
        return {h: (lab.stats.smarthost(h, "connections"), lab.stats.smarthost(h, "auth_attempts"))
                for h in ("fourthcoffee-edge-1", "fourthcoffee-edge-2")}

    before = seen()
    lab.add_fault(target="connector/contoso", kind="tls_unavailable_required")
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: any(n.action == "failed" for n in notices_for(lab, msg)), timeout=15, what="the NDR")
    assert seen() == before


def test_a_5xx_at_rcpt_is_an_ndr_with_the_smart_hosts_own_status(lab: Lab) -> None:
    """A smart host's 550 at RCPT is final: an NDR at once with its enhanced status, naming it as remote MTA."""
    lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="reject", stage="rcpt", code=550)
    msg = message()
    submit_smtp(lab, msg)
    wait_for(lambda: bool(notices_for(lab, msg)), timeout=5, what="the NDR")
    (notice,) = notices_for(lab, msg)
    assert (notice.action, notice.status) == ("failed", "5.7.1")
    assert notice.remote_mta == "fourthcoffee-edge-1.fourthcoffee.test"
    assert "550 5.7.1" in notice.diagnostic


def test_a_recipient_of_the_same_forest_is_delivered_there_and_an_unknown_domain_gets_an_ndr(lab: Lab) -> None:
    """Mail to the forest's own mailbox never leaves it; mail to a domain no connector serves is an NDR 5.4.4."""
    local = message(recipient=SENDER)
    submit_smtp(lab, local)
    wait_arrived(lab, local, SENDER)
    wait_for(lambda: lab.stats.transport("contoso", "delivered_local") >= 1, timeout=5, what="the local count")
    nowhere = message(recipient="someone@example.invalid")
    submit_smtp(lab, nowhere)
    wait_for(lambda: bool(notices_for(lab, nowhere)), timeout=5, what="the NDR")
    assert notices_for(lab, nowhere)[0].status == "5.4.4"


def test_a_pin_to_a_host_outside_the_connector_is_refused(lab: Lab) -> None:
    """pin names a smart host of the forest's connectors, or the fault is refused naming the valid ones."""
    from probe.lab.faults import FaultError

    with pytest.raises(FaultError, match="'contoso-edge-1' is not a smart host of the connectors of contoso"):
        lab.add_fault(target="connector/contoso", kind="pin", smart_host="contoso-edge-1")


def test_lab_json_names_each_forests_submission_port_and_connectors(lab: Lab) -> None:
    """lab.json says where each forest takes submissions and which connectors (and fault target) it has."""
    import json

    forest = json.loads(Path(lab.json_path).read_text())["forests"]["contoso"]
    assert forest["submission"]["port"] == lab.forests["contoso"].submission_port
    assert forest["connectors"] == [{"name": "contoso-to-fourthcoffee", "address_spaces": ["fourthcoffee.test"],
                                     "smart_hosts": ["fourthcoffee-edge-1", "fourthcoffee-edge-2"],
                                     "target": "connector/contoso"}]


def test_the_notices_reach_the_senders_mailbox_as_exchange_writes_them(lab: Lab) -> None:
    """A delayed DSN and then an NDR land in the sender's mailbox: "Delivery delayed:" and "Undeliverable:" reports
    (REPORT.IPM.Note.NDR), from the sender's forest's postmaster, each returning the original's headers."""
    lab.add_fault(target="connector/contoso", kind="disabled")
    msg = message()
    submit_smtp(lab, msg)

    def reports() -> list[StoredItem]:
        return [i for i in lab.store.items(SENDER, ["inbox"]) if msg["Subject"] in i.subject]

    wait_for(lambda: len(reports()) == 2, timeout=15, what="the delay notification and the NDR")
    delayed, failed = sorted(reports(), key=lambda item: item.received)
    assert delayed.subject.startswith("Delivery delayed:")
    assert failed.subject.startswith("Undeliverable:")
    assert failed.item_class == "REPORT.IPM.Note.NDR"
    for report in (delayed, failed):
        assert "postmaster@contoso.test" in dict(report.headers)["From"]
        assert msg["Message-ID"].encode() in report.raw
    assert b"Status: 4.4.7" in failed.raw
