"""The lab's smart hosts behave as Exchange's transport: its words, its headers, its hops, its rules, its NDRs."""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from probe.dsn import DsnAction, read_report
from probe.lab import Lab
from probe.lab.store import StoredItem
from probe.mailbox.received import parse_received
from probe.message import build_probe_message
from tests.lab.test_smarthost import RECIPIENT, SENDER, message, secure_session

HOST = "fourthcoffee-edge-1"
KEY = b"X" * 32


def wait_for(condition: Callable[[], bool], *, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def send_raw(lab: Lab, raw: bytes, *, sender: str = SENDER, host: str = HOST) -> tuple[int, bytes]:
    """Send ``raw`` through a smart host; return the final reply."""
    with secure_session(lab, lab.smart_host(host)) as smtp:
        smtp.mail(sender)
        smtp.rcpt(RECIPIENT)
        return smtp.data(raw)


def probe_raw(probe_id: str | None = None) -> bytes:
    return build_probe_message(key=KEY, route="contoso-to-fourthcoffee", smart_host=HOST, sender=SENDER,
                               recipient=RECIPIENT, probe_id=probe_id).raw


def delivered(lab: Lab, address: str = RECIPIENT) -> list[StoredItem]:
    return lab.store.items(address, ["inbox", "junkemail"])


def test_the_banner_and_the_plain_replies_are_exchanges(lab: Lab) -> None:
    """220 ... Microsoft ESMTP MAIL Service ready at DATE; Exchange's 354, STARTTLS 220 and 221 too."""
    host = lab.smart_host(HOST)
    smtp = smtplib.SMTP(timeout=10)
    code, greeting = smtp.connect(host.host, host.port)
    assert code == 220
    head, _, when = greeting.decode().partition(" ready at ")
    assert head == f"{host.fqdn} Microsoft ESMTP MAIL Service"
    assert email.utils.parsedate_to_datetime(when).tzinfo is not None
    smtp.ehlo()
    assert smtp.docmd("STARTTLS") == (220, b"2.0.0 SMTP server ready")
    smtp.close()
    with secure_session(lab, host) as session:
        session.mail(SENDER)
        session.rcpt(RECIPIENT)
        assert session.docmd("DATA") == (354, b"Start mail input; end with <CRLF>.<CRLF>")
        session.send(b".\r\n")
        session.getreply()
        assert session.docmd("QUIT") == (221, b"2.0.0 Service closing transmission channel")


def test_ehlo_offers_exchanges_keywords_starttls_before_tls_and_auth_login_after(lab: Lab) -> None:
    """EHLO: HOST Hello [IP], SIZE 37748736 (36 MB), PIPELINING, ENHANCEDSTATUSCODES, STARTTLS | AUTH LOGIN, ..."""
    host = lab.smart_host(HOST)
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        code, before = smtp.ehlo()
        smtp.starttls(context=lab.ca.client_context())
        code_after, after = smtp.ehlo()
    assert (code, code_after) == (250, 250)
    assert before.decode().splitlines() == [
        f"{host.fqdn} Hello [127.0.0.1]", "SIZE 37748736", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS",
        "8BITMIME", "SMTPUTF8"]
    assert after.decode().splitlines() == [
        f"{host.fqdn} Hello [127.0.0.1]", "SIZE 37748736", "PIPELINING", "ENHANCEDSTATUSCODES", "AUTH LOGIN",
        "8BITMIME", "SMTPUTF8"]


def test_a_message_larger_than_the_limit_is_refused_with_5_3_4(lab: Lab) -> None:
    """A MAIL FROM that declares more than 36 MB gets Exchange's 552 5.3.4."""
    with secure_session(lab, lab.smart_host(HOST)) as smtp:
        code, reply = smtp.mail(SENDER, ["SIZE=40000000"])
    assert (code, reply) == (552, b"5.3.4 Message size exceeds fixed maximum message size")


def test_a_message_without_message_id_gets_exchanges_and_only_one(lab: Lab) -> None:
    """The smart host stamps <guid@server> on a message that has none and names it in its 250; the store, which
    stamps one itself on what arrives without, does not stamp another."""
    raw = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: no id\r\n\r\nbody\r\n".encode()
    code, reply = send_raw(lab, raw)
    assert code == 250
    stamped = reply.decode().split(" ")[1]
    assert stamped.endswith(f"@{HOST}.fourthcoffee.test>")
    [item] = delivered(lab)
    assert item.message_id == stamped
    assert item.raw.count(b"Message-ID:") == 1


def test_the_header_firewall_drops_organization_headers_from_outside(lab: Lab) -> None:
    """X-MS-Exchange-Organization-* headers a message brings are removed; the receiving organization's own are
    stamped at its mailbox hop."""
    msg = message()
    msg["X-MS-Exchange-Organization-SCL"] = "-1"
    msg["X-MS-Exchange-Organization-AuthAs"] = "Anonymous"
    msg["X-MS-Exchange-Forest-RulesExecuted"] = "nothing"
    msg["X-Kept"] = "yes"
    send_raw(lab, msg.as_bytes())
    [item] = delivered(lab)
    parsed = email.message_from_bytes(item.raw)
    assert parsed.get_all("X-MS-Exchange-Organization-SCL") is None
    assert parsed.get_all("X-MS-Exchange-Forest-RulesExecuted") is None
    assert parsed.get_all("X-MS-Exchange-Organization-AuthAs") == ["Internal"]
    assert parsed["X-MS-Exchange-Organization-AuthSource"] == f"{HOST}.fourthcoffee.test"
    assert parsed["X-Kept"] == "yes"


def test_each_hop_stamps_on_its_own_clock(lab: Lab) -> None:
    """The edge stamps on its clock, the mailbox server on the forest's: a forest clock 120 s ahead shows as a
    120 s hop in the parsed Received chain."""
    lab.add_fault(target="ews/fourthcoffee", kind="clock_offset", seconds=120)
    send_raw(lab, message().as_bytes())
    [item] = delivered(lab)
    hops = parse_received(email.message_from_bytes(item.raw).get_all("Received") or [])
    assert [h.by_host for h in hops] == [f"{HOST}.fourthcoffee.test", "FOURTHCOFFEE-MBX-1.fourthcoffee.test"]
    assert [h.with_protocol for h in hops] == ["Microsoft SMTP Server"] * 2
    assert hops[1].delay is not None
    assert 119 <= hops[1].delay <= 122


def test_transport_rules_tag_the_subject_and_append_a_disclaimer(lab: Lab) -> None:
    """subject_prefix puts "[EXTERNAL] " before the subject; disclaimer appends Exchange's caution to the body;
    the probe's tag survives both."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="subject_prefix")
    lab.add_fault(target=f"smarthost/{HOST}", kind="disclaimer")
    raw = probe_raw()
    send_raw(lab, raw)
    [item] = delivered(lab)
    sent = email.message_from_bytes(raw)
    assert " ".join(item.subject.split()) == "[EXTERNAL] " + " ".join(str(sent["Subject"]).split())
    assert item.body.rstrip().endswith("know the content is safe.")
    assert item.body.startswith(str(sent.get_payload()).rstrip("\r\n").split("\r\n")[0])


@pytest.mark.parametrize("status", ["5.1.1", "5.7.1", "5.4.1", "5.3.4"])
def test_bounce_accepts_then_returns_an_exchange_ndr_to_the_senders_mailbox(lab: Lab, status: str) -> None:
    """Under bounce, the smart host says 250, nothing reaches the recipient, and the sender's mailbox receives an
    NDR with that status that probe.dsn reads: failed, the probe's id, a diagnostic in Exchange's words."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="bounce", status=status, seconds=0.2)
    raw = probe_raw("00000000000000b1")
    code, _ = send_raw(lab, raw)
    assert code == 250
    assert wait_for(lambda: len(delivered(lab, SENDER)) == 1)
    [ndr] = delivered(lab, SENDER)
    assert delivered(lab) == []
    assert ndr.item_class == "REPORT.IPM.Note.NDR"
    assert ndr.subject.startswith("Undeliverable: [mailflow-probe] contoso-to-fourthcoffee")
    report = read_report(ndr.raw, key=KEY).report
    assert report is not None
    assert (report.probe_id, report.action, report.status) == ("00000000000000b1", DsnAction.FAILED, status)
    assert report.diagnostic is not None
    assert report.diagnostic.split(" ")[1] == status
    expected_reporter = f"{HOST}.fourthcoffee.test" if status == "5.4.1" else "FOURTHCOFFEE-MBX-1.fourthcoffee.test"
    assert report.reporting_mta == expected_reporter
    hops = parse_received(email.message_from_bytes(ndr.raw).get_all("Received") or [])
    assert hops[-1].by_host == "CONTOSO-MBX-1.contoso.test"
    assert lab.stats.smarthost(HOST, "bounced") == 1


def test_bounce_waits_its_seconds(lab: Lab) -> None:
    """The NDR comes back after the fault's seconds, not before (the 250 came at once)."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="bounce", status="5.1.1", seconds=1.0)
    sent_at = time.time()
    send_raw(lab, probe_raw())
    assert wait_for(lambda: len(delivered(lab, SENDER)) == 1)
    [ndr] = delivered(lab, SENDER)
    assert ndr.delivered_at - sent_at >= 1.0


def test_delay_delivery_with_notify_after_sends_a_delay_notification_first(lab: Lab) -> None:
    """delay_delivery with notify_after: a "Delivery delayed:" notification (4.4.7, delayed) reaches the sender, then
    the message reaches its recipient."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="delay_delivery", seconds=1.5, notify_after=0.2)
    send_raw(lab, probe_raw("00000000000000d1"))
    assert wait_for(lambda: len(delivered(lab, SENDER)) == 1)
    assert delivered(lab) == []
    [notice] = delivered(lab, SENDER)
    assert notice.item_class == "REPORT.IPM.Note.Delayed"
    report = read_report(notice.raw, key=KEY).report
    assert report is not None
    assert (report.probe_id, report.action, report.status) == ("00000000000000d1", DsnAction.DELAYED, "4.4.7")
    assert report.will_retry_until is not None
    assert report.will_retry_until > datetime.now(UTC)
    assert wait_for(lambda: len(delivered(lab)) == 1)


def test_a_report_for_a_sender_the_lab_does_not_host_is_dropped(lab: Lab) -> None:
    """An NDR to a sender outside the lab's mailboxes goes nowhere, and is counted."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="bounce", status="5.1.1")
    send_raw(lab, message().as_bytes(), sender="someone@elsewhere.test")
    assert wait_for(lambda: lab.stats.smarthost(HOST, "reports_dropped") == 1)
    assert lab.store.count() == 0


def test_auth_login_prompts_as_exchange_does(lab: Lab) -> None:
    """AUTH LOGIN's challenges are Exchange's "Username:" and "Password:" (base64), then 235 2.7.0."""
    host = lab.smart_host(HOST)
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        assert smtp.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
        assert smtp.docmd(base64.b64encode(host.username.encode()).decode()) == (334, b"UGFzc3dvcmQ6")
        code, reply = smtp.docmd(base64.b64encode(host.password.reveal().encode()).decode())
    assert (code, reply) == (235, b"2.7.0 Authentication successful")
