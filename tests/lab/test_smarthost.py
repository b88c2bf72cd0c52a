"""The lab's smart hosts, spoken to by smtplib over real sockets and real TLS."""

from __future__ import annotations

import email
import email.utils
import inspect
import ipaddress
import re
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage

import pytest

from probe.lab import Lab
from probe.lab.smarthost import MAX_SMART_HOSTS_PER_FOREST, LabSmartHost, smart_host_address

SENDER = "mailflow.probe@contoso.test"
RECIPIENT = "mailflow.probe@fourthcoffee.test"


def message(subject: str = "lab probe", recipient: str = RECIPIENT) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, recipient, subject
    msg["Message-ID"] = email.utils.make_msgid(domain="contoso.test")
    msg["Date"] = email.utils.formatdate()
    msg.set_content("A probe through the lab.\n")
    return msg


def secure_session(lab: Lab, host: LabSmartHost) -> smtplib.SMTP:
    smtp = smtplib.SMTP(host.host, host.port, timeout=10)
    smtp.starttls(context=lab.ca.client_context())
    smtp.login(host.username, host.password.reveal())
    return smtp


def test_starttls_and_login_deliver_with_a_received_header_per_hop(lab: Lab) -> None:
    """A message sent with STARTTLS and AUTH lands in the inbox with Exchange's Received header for each hop: the
    smart host (edge) then the forest's mailbox server, newest first."""
    host = lab.smart_host("fourthcoffee-edge-1")
    msg = message()
    with secure_session(lab, host) as smtp:
        smtp.send_message(msg)
    items = lab.store.items(RECIPIENT, ["inbox"])
    assert len(items) == 1
    item = items[0]
    assert item.message_id == msg["Message-ID"]
    mailbox_hop, edge_hop = [" ".join(r.split()) for r in email.message_from_bytes(item.raw).get_all("Received") or []]
    assert re.match(rf"from \S+ \(127\.0\.0\.1\) by {re.escape(host.fqdn)} \({re.escape(host.host)}\) with Microsoft "
                    r"SMTP Server \(version=TLS1_3, cipher=TLS_AES_256_GCM_SHA384\) id 15\.2\.1544\.4; ", edge_hop)
    assert mailbox_hop.startswith(f"from {host.fqdn} ({host.host}) by FOURTHCOFFEE-MBX-1.fourthcoffee.test "
                                  "(127.0.0.1) with Microsoft SMTP Server (version=TLS1_2, cipher=")
    for hop in (edge_hop, mailbox_hop):
        assert email.utils.parsedate_to_datetime(hop.rsplit(";", 1)[1].strip()) is not None
    assert item.accepted_at is not None
    assert item.accepted_at <= item.delivered_at
    stats = lab.stats
    assert [stats.smarthost(host.name, e) for e in ("accepted", "delivered", "auth_success")] == [1, 1, 1]


def test_final_reply_is_exchanges_queued_reply(lab: Lab) -> None:
    """The 250 after DATA is Exchange's: 2.6.0, the Message-ID, the InternalId and the server, size and rate."""
    host = lab.smart_host("fourthcoffee-edge-2")
    msg = message()
    with secure_session(lab, host) as smtp:
        assert smtp.mail(SENDER) == (250, b"2.1.0 Sender OK")
        assert smtp.rcpt(RECIPIENT) == (250, b"2.1.5 Recipient OK")
        code, reply = smtp.data(msg.as_bytes())
    assert code == 250
    pattern = (rf"2\.6\.0 {re.escape(msg['Message-ID'])} \[InternalId=\d{{14}}, Hostname={re.escape(host.fqdn)}\] "
               r"\d+ bytes in \d+\.\d{3}, \d+\.\d{3} KB/sec Queued mail for delivery")
    assert re.fullmatch(pattern, reply.decode()), reply


def test_auth_login_is_accepted_after_starttls(lab: Lab) -> None:
    """AUTH LOGIN works as well as AUTH PLAIN."""
    host = lab.smart_host("contoso-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        smtp.user, smtp.password = host.username, host.password.reveal()
        code, _ = smtp.auth("LOGIN", smtp.auth_login)
    assert code == 235


def test_before_starttls_auth_is_neither_offered_nor_accepted(lab: Lab) -> None:
    """Before STARTTLS, EHLO offers STARTTLS but not AUTH; AUTH is an unrecognized type and MAIL is refused as
    not authenticated, in Exchange's words."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        auth = smtp.docmd("AUTH", "LOGIN")
        mail = smtp.docmd("MAIL", f"FROM:<{SENDER}>")
    assert auth == (504, b"5.7.4 Unrecognized authentication type")
    assert mail == (530, b"5.7.1 Client was not authenticated")
    assert lab.stats.smarthost(host.name, "auth_attempts") == 1
    assert lab.stats.smarthost(host.name, "auth_success") == 0


def test_after_starttls_auth_is_offered(lab: Lab) -> None:
    """After STARTTLS, EHLO offers AUTH LOGIN (Basic authentication: no PLAIN on Exchange) and no STARTTLS."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["LOGIN"]
        assert not smtp.has_extn("starttls")


def test_mail_needs_authentication_after_starttls(lab: Lab) -> None:
    """Encrypted but unauthenticated, MAIL is refused: the smart hosts are not open relays."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        code, _ = smtp.docmd("MAIL", f"FROM:<{SENDER}>")
    assert code == 530


def test_wrong_password_is_refused_after_the_tarpit(lab: Lab) -> None:
    """A wrong password gets Exchange's 535 5.7.3, and only after the tarpit (the lab's setting; Exchange's 5 s by
    default)."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            smtp.login(host.username, "not-the-password")
        waited = time.monotonic() - started
    assert (raised.value.smtp_code, raised.value.smtp_error) == (535, b"5.7.3 Authentication unsuccessful")
    assert waited >= lab.tarpit_seconds
    assert inspect.signature(Lab.start).parameters["tarpit_seconds"].default == 5.0


def test_relay_to_another_domain_is_denied(lab: Lab) -> None:
    """A Fourth Coffee smart host refuses recipients outside fourthcoffee.test with Exchange's 550 5.7.54."""
    host = lab.smart_host("fourthcoffee-edge-1")
    denied = (550, b"5.7.54 SMTP; Unable to relay recipient in non-accepted domain")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        assert smtp.rcpt("mailflow.probe@contoso.test") == denied
        assert smtp.rcpt("someone@example.com") == denied
    assert lab.store.count() == 0


def test_unknown_recipient_in_its_domain_is_refused(lab: Lab) -> None:
    """A recipient of the right domain without a mailbox gets Exchange's recipient filtering 550 5.1.10."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        code, reply = smtp.rcpt("nobody@fourthcoffee.test")
    assert (code, reply) == (550, b"5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")


def test_certificate_names_the_address_and_the_dns_name(lab: Lab) -> None:
    """The certificate verifies for the smart host's IP address and for its DNS name."""
    host = lab.smart_host("contoso-edge-2")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        cert = sock.getpeercert()
    assert cert is not None
    sans = {str(entry[1]) for entry in cert["subjectAltName"]}
    assert {host.host, host.fqdn} <= sans


def test_counts_connections_ehlo_and_starttls(lab: Lab) -> None:
    """Stats count each connection, EHLO and STARTTLS at the smart host that saw it."""
    host = lab.smart_host("contoso-edge-1")
    for _ in range(2):
        with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
            smtp.starttls(context=lab.ca.client_context())
            smtp.ehlo()
    counts = lab.stats.to_json()["smarthosts"][host.name]
    assert counts["connections"] == 2
    assert counts["ehlo"] == 4
    assert counts["starttls"] == 2
    assert "fourthcoffee-edge-1" not in lab.stats.to_json()["smarthosts"]


def threads_of_a_lab(tmp_path, smart_hosts_per_forest: int) -> int:
    before = threading.active_count()
    with Lab.start(tmp_path / str(smart_hosts_per_forest), smart_hosts_per_forest=smart_hosts_per_forest) as lab:
        during = threading.active_count()
        last = lab.smart_hosts[-1]
        with secure_session(lab, last) as smtp:
            smtp.send_message(message(recipient=lab.forests[last.forest].mailboxes[0]))
        assert lab.stats.smarthost(last.name, "delivered") == 1
    return during - before


def test_many_smart_hosts_share_one_thread(tmp_path) -> None:
    """A lab of a hundred smart hosts runs on as many threads as a lab of two."""
    assert threads_of_a_lab(tmp_path, 50) == threads_of_a_lab(tmp_path, 1)


def test_addresses_stay_in_loopback_and_never_collide() -> None:
    """Smart host addresses are distinct and inside 127.0.0.0/8, even for the largest lab."""
    loopback = ipaddress.ip_network("127.0.0.0/8")
    addresses = {smart_host_address(f, n) for f in (0, 1, 238) for n in range(0, MAX_SMART_HOSTS_PER_FOREST, 97)}
    addresses |= {smart_host_address(1, MAX_SMART_HOSTS_PER_FOREST - 1)}
    assert all(ipaddress.ip_address(a) in loopback for a in addresses)
    assert len(addresses) == 3 * len(range(0, MAX_SMART_HOSTS_PER_FOREST, 97)) + 1
    with pytest.raises(ValueError, match="at most"):
        smart_host_address(0, MAX_SMART_HOSTS_PER_FOREST)
