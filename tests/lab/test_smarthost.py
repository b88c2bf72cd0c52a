"""The lab's smart hosts, spoken to by smtplib over real sockets and real TLS."""

from __future__ import annotations

import email
import email.utils
import ipaddress
import smtplib
import ssl
import threading
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


def test_starttls_and_login_deliver_with_a_received_header(lab: Lab) -> None:
    """A message sent with STARTTLS and AUTH lands in the inbox with a Received header naming the host."""
    host = lab.smart_host("fourthcoffee-edge-1")
    msg = message()
    with secure_session(lab, host) as smtp:
        smtp.send_message(msg)
    items = lab.store.items(RECIPIENT, ["inbox"])
    assert len(items) == 1
    item = items[0]
    assert item.message_id == msg["Message-ID"]
    received = email.message_from_bytes(item.raw)["Received"]
    assert f"by {host.fqdn}" in received
    assert "with ESMTPSA id " in received
    assert f"for <{RECIPIENT}>" in received
    assert email.utils.parsedate_to_datetime(received.rsplit(";", 1)[1].strip()) is not None
    assert item.accepted_at is not None
    assert item.accepted_at <= item.delivered_at
    stats = lab.stats
    assert [stats.smarthost(host.name, e) for e in ("accepted", "delivered", "auth_success")] == [1, 1, 1]


def test_final_reply_names_a_queue_id(lab: Lab) -> None:
    """The 250 after DATA carries a queue id, as a real MTA's does."""
    host = lab.smart_host("fourthcoffee-edge-2")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        smtp.rcpt(RECIPIENT)
        code, reply = smtp.data(message().as_bytes())
    assert code == 250
    assert reply.decode().startswith("2.0.0 Ok: queued as ")
    queue_id = reply.decode().rsplit(" ", 1)[1]
    raw = lab.store.items(RECIPIENT, ["inbox"])[0].raw
    assert f"id {queue_id}".encode() in raw


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
    """Before STARTTLS, EHLO offers STARTTLS but not AUTH, and AUTH and MAIL get 530 5.7.0."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        auth = smtp.docmd("AUTH", "PLAIN AHVzZXIAcGFzcw==")
        mail = smtp.docmd("MAIL", f"FROM:<{SENDER}>")
    refusal = (530, b"5.7.0 Must issue a STARTTLS command first")
    assert auth == refusal
    assert mail == refusal
    assert lab.stats.smarthost(host.name, "auth_attempts") == 1
    assert lab.stats.smarthost(host.name, "auth_success") == 0


def test_after_starttls_auth_is_offered(lab: Lab) -> None:
    """After STARTTLS, EHLO offers AUTH PLAIN and LOGIN and no longer STARTTLS."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert not smtp.has_extn("starttls")


def test_mail_needs_authentication_after_starttls(lab: Lab) -> None:
    """Encrypted but unauthenticated, MAIL is refused: the smart hosts are not open relays."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        smtp.ehlo()
        code, _ = smtp.docmd("MAIL", f"FROM:<{SENDER}>")
    assert code == 530


def test_wrong_password_is_refused(lab: Lab) -> None:
    """A wrong password gets 535 5.7.8."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with smtplib.SMTP(host.host, host.port, timeout=10) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            smtp.login(host.username, "not-the-password")
    assert raised.value.smtp_code == 535


def test_relay_to_another_domain_is_denied(lab: Lab) -> None:
    """A Fourth Coffee smart host refuses recipients outside fourthcoffee.test with 550 5.7.1."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        assert smtp.rcpt("mailflow.probe@contoso.test") == (550, b"5.7.1 relay denied")
        assert smtp.rcpt("someone@example.com") == (550, b"5.7.1 relay denied")
    assert lab.store.count() == 0


def test_unknown_recipient_in_its_domain_is_refused(lab: Lab) -> None:
    """A recipient of the right domain without a mailbox gets 550 5.1.1."""
    host = lab.smart_host("fourthcoffee-edge-1")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        code, reply = smtp.rcpt("nobody@fourthcoffee.test")
    assert code == 550
    assert reply.startswith(b"5.1.1")


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
