"""Each smart host fault, seen from the client's side of a real SMTP session."""

from __future__ import annotations

import email
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest

from probe.lab import Lab
from probe.lab.smarthost import LabSmartHost
from tests.lab.test_smarthost import RECIPIENT, SENDER, message, secure_session

HOST = "fourthcoffee-edge-1"


def send(lab: Lab, host: LabSmartHost) -> tuple[int, bytes]:
    """Send one message and return the final reply to DATA."""
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        smtp.rcpt(RECIPIENT)
        return smtp.data(message().as_bytes())


def wait_until(condition: Callable[[], bool], *, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_refuse_connections_resets_the_connection(lab: Lab) -> None:
    """Under refuse_connections, the client's connection is reset before any banner."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="refuse_connections")
    with pytest.raises((ConnectionResetError, smtplib.SMTPServerDisconnected)):
        smtplib.SMTP(host.host, host.port, timeout=5)
    assert lab.stats.smarthost(host.name, "refused") == 1
    lab.clear_faults()
    assert send(lab, host)[0] == 250


def test_no_starttls_is_neither_offered_nor_accepted(lab: Lab) -> None:
    """Under no_starttls, EHLO lacks STARTTLS and the command gets 454; no AUTH either."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="no_starttls")
    with smtplib.SMTP(host.host, host.port, timeout=5) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.starttls(context=lab.ca.client_context())
        assert smtp.docmd("STARTTLS")[0] == 454


def test_a_client_that_requires_starttls_sends_no_credentials(lab: Lab) -> None:
    """A smart host that does not offer STARTTLS is never sent credentials by a careful client."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="no_starttls")
    with smtplib.SMTP(host.host, host.port, timeout=5) as smtp:
        smtp.ehlo()
        offered = smtp.has_extn("starttls")
    assert not offered
    assert lab.stats.smarthost(host.name, "auth_attempts") == 0
    assert lab.stats.smarthost(host.name, "ehlo") == 1


def test_untrusted_cert_fails_verification(lab: Lab) -> None:
    """Under untrusted_cert, the certificate comes from a CA the client does not trust."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="untrusted_cert")
    untrusted = r"self-signed certificate in certificate chain|unable to get local issuer"
    with smtplib.SMTP(host.host, host.port, timeout=5) as smtp, \
            pytest.raises(ssl.SSLCertVerificationError, match=untrusted):
        smtp.starttls(context=lab.ca.client_context())


def test_expired_cert_fails_verification_until_the_fault_is_lifted(lab: Lab) -> None:
    """Under expired_cert, verification fails as expired; lifted, the next STARTTLS succeeds."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="expired_cert")
    with smtplib.SMTP(host.host, host.port, timeout=5) as smtp, \
            pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        smtp.starttls(context=lab.ca.client_context())
    lab.clear_faults(host.target)
    assert send(lab, host)[0] == 250


def test_auth_reject_refuses_good_credentials(lab: Lab) -> None:
    """Under auth_reject, even the right password gets Exchange's 535 5.7.3."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="auth_reject")
    with smtplib.SMTP(host.host, host.port, timeout=5) as smtp:
        smtp.starttls(context=lab.ca.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            smtp.login(host.username, host.password.reveal())
    assert raised.value.smtp_code == 535
    assert "5.7.3 Authentication unsuccessful" in str(raised.value)


def test_tempfail_at_rcpt_gives_451(lab: Lab) -> None:
    """A tempfail at rcpt answers RCPT with Exchange's 451 4.7.0."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="tempfail", stage="rcpt")
    with secure_session(lab, host) as smtp:
        smtp.mail(SENDER)
        code, reply = smtp.rcpt(RECIPIENT)
    assert code == 451
    assert reply == b"4.7.0 Temporary server error. Please try again later. PRX5"
    assert lab.store.count() == 0


def test_reject_at_data_gives_554_after_the_message(lab: Lab) -> None:
    """A reject at data answers the end of the message with 554 and delivers nothing."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="reject", stage="data")
    with secure_session(lab, host) as smtp, pytest.raises(smtplib.SMTPDataError) as raised:
        smtp.sendmail(SENDER, [RECIPIENT], message().as_bytes())
    assert raised.value.smtp_code == 554
    assert lab.store.count() == 0
    assert lab.stats.smarthost(host.name, "accepted") == 0


def test_reject_at_mail_with_a_code(lab: Lab) -> None:
    """A reject at mail with code 550 refuses the sender with 550."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="reject", stage="mail", code=550)
    with secure_session(lab, host) as smtp:
        assert smtp.mail(SENDER)[0] == 550


def test_tempfail_at_connect_replaces_the_banner(lab: Lab) -> None:
    """A tempfail at connect with code 421 greets with 421 and closes."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="tempfail", stage="connect", code=421)
    with pytest.raises(smtplib.SMTPConnectError) as raised:
        smtplib.SMTP(host.host, host.port, timeout=5)
    assert raised.value.smtp_code == 421


def test_slow_banner_outlasts_a_short_client_timeout(lab: Lab) -> None:
    """A smart host slow at the banner keeps a client with a shorter timeout waiting until it gives up."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="slow", stage="banner", seconds=3)
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        smtplib.SMTP(host.host, host.port, timeout=0.3)


def test_slow_at_ehlo_does_not_hold_up_other_smart_hosts(lab: Lab) -> None:
    """While one smart host sleeps at EHLO, another one delivers."""
    slow, other = lab.smart_host(HOST), lab.smart_host("fourthcoffee-edge-2")
    lab.add_fault(target=slow.target, kind="slow", stage="ehlo", seconds=60)
    stalled = smtplib.SMTP(slow.host, slow.port, timeout=120)
    outcome: list[object] = []

    def stalled_ehlo() -> None:
        try:
            outcome.append(stalled.ehlo()[0])
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=stalled_ehlo)
    thread.start()
    try:
        assert wait_until(lambda: lab.stats.smarthost(slow.name, "ehlo") == 1)
        assert send(lab, other)[0] == 250
        assert outcome == []  # the slow one is still asleep
    finally:
        assert stalled.sock is not None
        stalled.sock.shutdown(socket.SHUT_RDWR)
        thread.join(10)
        stalled.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)


def test_delay_delivery_delivers_later(lab: Lab) -> None:
    """Under delay_delivery, the 250 comes at once and the message reaches the store seconds later."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="delay_delivery", seconds=2.5)
    assert send(lab, host)[0] == 250
    assert lab.store.count(RECIPIENT) == 0
    assert wait_until(lambda: lab.store.count(RECIPIENT) == 1)
    item = lab.store.items(RECIPIENT, ["inbox"])[0]
    assert item.accepted_at is not None
    assert item.delivered_at - item.accepted_at >= 2.5


def test_drop_accepts_and_never_delivers(lab: Lab) -> None:
    """Under drop, the smart host says 250 and the message never arrives."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="drop")
    code, reply = send(lab, host)
    assert code == 250
    assert b"Queued mail for delivery" in reply
    assert lab.store.count() == 0
    assert lab.stats.smarthost(host.name, "dropped") == 1
    assert lab.stats.smarthost(host.name, "accepted") == 1


def test_duplicate_delivers_twice(lab: Lab) -> None:
    """Under duplicate, one accepted message arrives twice, with the same Message-ID."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="duplicate")
    send(lab, host)
    items = lab.store.items(RECIPIENT, ["inbox"])
    assert len(items) == 2
    assert items[0].message_id == items[1].message_id
    assert items[0].item_id != items[1].item_id


def test_to_junk_delivers_into_junk_email(lab: Lab) -> None:
    """Under to_junk, the message lands in junkemail, not the inbox."""
    host = lab.smart_host(HOST)
    lab.add_fault(target=host.target, kind="to_junk")
    send(lab, host)
    assert lab.store.items(RECIPIENT, ["inbox"]) == []
    junk = lab.store.items(RECIPIENT, ["junkemail"])
    assert len(junk) == 1
    assert "Received" in email.message_from_bytes(junk[0].raw)


def test_a_fault_on_one_smart_host_leaves_the_others_alone(lab: Lab) -> None:
    """A fault targets one smart host only."""
    lab.add_fault(target=f"smarthost/{HOST}", kind="reject", stage="rcpt")
    assert send(lab, lab.smart_host("fourthcoffee-edge-2"))[0] == 250
