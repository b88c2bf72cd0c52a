"""Delivery status notifications read from raw MIME (probe.dsn): Exchange's and Postfix's, and forgeries."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.dsn import DsnAction, Refusal, bounce_reason, read_report
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.message import build_probe_message
from probe.vocabulary import BounceReason

KEY = b"D" * 32
OTHER_KEY = b"E" * 32
SENDER = "mailflow.probe@contoso.com"
RECIPIENT = "mailflow.probe@fourthcoffee.com"
WHEN = datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC)


def probe(key: bytes = KEY, probe_id: str | None = None) -> bytes:
    return build_probe_message(key=key, route="contoso-to-fourthcoffee", smart_host="fc-edge-1", sender=SENDER,
                               recipient=RECIPIENT, probe_id=probe_id, now=WHEN, hostname="probe-host").raw


def notice(status: str = "5.1.1", **changes: object) -> Notice:
    base = Notice(status=status, recipient=RECIPIENT, sender=SENDER, postmaster="postmaster@fourthcoffee.com",
                  reporting_mta="FC-MBX-1.fourthcoffee.com", arrival=WHEN, when=WHEN + timedelta(seconds=3),
                  received_from_mta="fc-edge-1.fourthcoffee.com")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "reason", "diagnostic"), [
    ("5.1.1", BounceReason.RECIPIENT, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"),
    ("5.7.1", BounceReason.POLICY,
     "550 5.7.1 TRANSPORT.RULES.RejectMessage; the message was rejected by organization policy"),
    ("5.4.1", BounceReason.ROUTING, "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)"),
    ("5.3.4", BounceReason.SIZE, "552 5.3.4 Message size exceeds fixed maximum message size"),
    ("5.4.6", BounceReason.ROUTING, "554 5.4.6 Hop count exceeded - possible mail loop"),
    ("5.2.2", BounceReason.OTHER,
     "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"),
])
def test_an_exchange_ndr_gives_status_reason_reporting_mta_and_diagnostic(
        status: str, reason: BounceReason, diagnostic: str) -> None:
    """Exchange's NDR of a probe reads as failed, with its status, reason class, generating server and the
    remote server's words; the probe it names is the one whose tag verifies."""
    original = probe(probe_id="0123456789abcdef")
    reading = read_report(non_delivery_report(original, notice(status)), key=KEY)
    report = reading.report
    assert report is not None, reading.refused
    assert (report.probe_id, report.action, report.status, report.reason) == (
        "0123456789abcdef", DsnAction.FAILED, status, reason)
    assert report.reporting_mta == "FC-MBX-1.fourthcoffee.com"
    assert report.diagnostic == diagnostic
    assert report.final_recipient == RECIPIENT
    assert report.original_arrival == WHEN
    assert report.subject.startswith("Undeliverable: [mailflow-probe] contoso-to-fourthcoffee via fc-edge-1 MFP-")
    assert report.to_json()["reason"] == str(reason)


def test_a_remote_mta_and_a_diagnostic_of_its_own_are_kept() -> None:
    """When another server refused, the report names it (Remote-MTA) and its reply."""
    raw = non_delivery_report(probe(), notice("5.1.10", remote_mta="fc-edge-2.fourthcoffee.com",
                                              diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; gone"))
    report = read_report(raw, key=KEY).report
    assert report is not None
    assert report.remote_mta == "fc-edge-2.fourthcoffee.com"
    assert report.diagnostic == "550 5.1.10 RESOLVER.ADR.RecipientNotFound; gone"
    assert report.reason is BounceReason.RECIPIENT


def test_a_delay_notification_is_delayed_with_its_end_of_retries() -> None:
    """Exchange's "Delivery delayed:" notification reads as delayed (4.4.7), never as failed."""
    until = WHEN + timedelta(days=2)
    report = read_report(delay_notification(probe(), notice("4.4.7", will_retry_until=until)), key=KEY).report
    assert report is not None
    assert (report.action, report.status, report.will_retry_until) == (DsnAction.DELAYED, "4.4.7", until)
    assert report.diagnostic == "400 4.4.7 Message delayed"
    assert report.subject.startswith("Delivery delayed:[mailflow-probe]")


def test_the_expiry_ndr_of_a_queue_is_failed_with_a_4_x_x_status() -> None:
    """Exchange's NDR when a message expires in its queue says Action failed with 4.4.7: a bounce, reason routing."""
    report = read_report(non_delivery_report(probe(), notice("4.4.7")), key=KEY).report
    assert report is not None
    assert (report.action, report.status, report.reason) == (DsnAction.FAILED, "4.4.7", BounceReason.ROUTING)
    assert report.diagnostic == "550 4.4.7 QUEUE.Expired; message expired"


# An NDR as Postfix writes it (bounce(8)): headers returned as text/rfc822-headers, "dns; " with a space.
POSTFIX_BOUNCE = """\
Return-Path: <>
From: MAILER-DAEMON@relay.fourthcoffee.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {sender}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4Q1xYz.1764320401/relay.fourthcoffee.com"
Message-Id: <20261128090001.4Q1xYz@relay.fourthcoffee.com>

This is a MIME-encapsulated message.

--4Q1xYz.1764320401/relay.fourthcoffee.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.fourthcoffee.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--4Q1xYz.1764320401/relay.fourthcoffee.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.fourthcoffee.com
X-Postfix-Queue-ID: 4Q1xYz
X-Postfix-Sender: rfc822; {sender}
Arrival-Date: Sat, 28 Nov 2026 09:00:01 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; fc-mbx-1.fourthcoffee.com
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected:
    User unknown in local recipient table

--4Q1xYz.1764320401/relay.fourthcoffee.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--4Q1xYz.1764320401/relay.fourthcoffee.com--
"""


def postfix_bounce(original: bytes) -> bytes:
    headers = original.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    return POSTFIX_BOUNCE.format(sender=SENDER, recipient=RECIPIENT, headers=headers).encode()


def test_a_postfix_bounce_reads_the_same_way() -> None:
    """Postfix's bounce (typed fields with a space, a folded diagnostic, headers only) gives the same facts."""
    report = read_report(postfix_bounce(probe(probe_id="00000000000000aa")), key=KEY).report
    assert report is not None
    assert (report.probe_id, report.status, report.reason) == ("00000000000000aa", "5.1.1", BounceReason.RECIPIENT)
    assert report.reporting_mta == "relay.fourthcoffee.com"
    assert report.remote_mta == "fc-mbx-1.fourthcoffee.com"
    assert report.diagnostic == (f"550 5.1.1 <{RECIPIENT}>: Recipient address rejected: User unknown in local "
                                 "recipient table")
    assert report.original_arrival == WHEN


def test_a_tag_signed_under_another_key_is_forged() -> None:
    """An NDR of a message tagged under another key counts for nothing, and says it was forged."""
    reading = read_report(non_delivery_report(probe(key=OTHER_KEY), notice()), key=KEY)
    assert (reading.report, reading.refused, reading.forged) == (None, Refusal.FORGED, True)


def test_an_ndr_whose_subject_names_another_probe_is_forged() -> None:
    """A genuine returned original under a subject carrying another (genuine) probe's tag counts for nothing."""
    raw = non_delivery_report(probe(probe_id="00000000000000aa"), notice())
    other = build_probe_message(key=KEY, route="r", smart_host="h", sender=SENDER, recipient=RECIPIENT,
                                probe_id="00000000000000bb").tag.text
    tampered = raw.replace(b"Subject: Undeliverable:", f"Subject: {other} Undeliverable:".encode(), 1)
    assert read_report(tampered, key=KEY).refused is Refusal.FORGED


def test_a_report_without_any_tag_counts_for_nothing() -> None:
    """An NDR of someone else's message (no tag anywhere) is no report of ours."""
    foreign = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: lunch?\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n").encode()
    assert read_report(non_delivery_report(foreign, notice()), key=KEY).refused is Refusal.NO_TAG


def test_a_probe_message_itself_is_not_a_report() -> None:
    """A genuine probe (no multipart/report) is not read as an NDR."""
    assert read_report(probe(), key=KEY).refused is Refusal.NOT_A_REPORT


def test_a_report_of_delivery_is_not_a_bounce() -> None:
    """A report whose recipient was delivered (a delivery receipt) decides nothing."""
    raw = non_delivery_report(probe(), notice("2.0.0")).replace(b"Action: failed", b"Action: delivered")
    assert read_report(raw, key=KEY).refused is Refusal.NO_ACTION


def test_encoded_words_in_the_subject_are_decoded() -> None:
    """A localised subject in encoded words (as Exchange writes non-ASCII ones) is read as text."""
    raw = non_delivery_report(probe(), notice())
    start = raw.index(b"Subject: ") + len(b"Subject: ")
    end = raw.index(b"\r\nAuto-Submitted")
    encoded = b"=?utf-8?q?Non_d=C3=A9livr=C3=A9_:?= " + raw[start:end].split(b"Undeliverable: ", 1)[1]
    report = read_report(raw[:start] + encoded + raw[end:], key=KEY).report
    assert report is not None
    assert report.subject.startswith("Non d\u00e9livr\u00e9 : [mailflow-probe]")


def test_a_truncated_report_is_read_as_far_as_it_goes() -> None:
    """An NDR cut anywhere is read or refused without raising, and never reads as another status."""
    raw = non_delivery_report(probe(), notice())
    for cut in range(0, len(raw), 97):
        reading = read_report(raw[:cut], key=KEY)
        assert reading.report is None or reading.report.status == "5.1.1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_are_read_without_raising(data: bytes) -> None:
    """Hostile or broken content never raises; it counts for nothing."""
    reading = read_report(data, key=KEY)
    assert reading.report is None
    assert reading.refused is not None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.binary(min_size=1, max_size=8))
def test_a_corrupted_genuine_report_never_raises(position: int, junk: bytes) -> None:
    """A genuine NDR with bytes overwritten anywhere is read or refused, never raises."""
    raw = bytearray(non_delivery_report(probe(), notice()))
    at = position % len(raw)
    raw[at:at + len(junk)] = junk
    read_report(bytes(raw), key=KEY)


@pytest.mark.parametrize(("status", "reason"), [
    ("5.1.1", BounceReason.RECIPIENT), ("5.1.10", BounceReason.RECIPIENT), ("4.1.8", BounceReason.RECIPIENT),
    ("5.4.1", BounceReason.ROUTING), ("4.4.7", BounceReason.ROUTING), ("5.4.14", BounceReason.ROUTING),
    ("5.3.4", BounceReason.SIZE), ("5.3.1", BounceReason.OTHER), ("5.3.40", BounceReason.OTHER),
    ("5.7.1", BounceReason.POLICY), ("5.7.708", BounceReason.POLICY), ("5.2.2", BounceReason.OTHER),
    ("5.0.0", BounceReason.OTHER), ("", BounceReason.OTHER), ("banana", BounceReason.OTHER),
])
def test_reason_classes_follow_the_status_subject(status: str, reason: BounceReason) -> None:
    """X.1.X recipient, X.4.X routing, X.3.4 size, X.7.X policy, anything else other (DESIGN.md)."""
    assert bounce_reason(status) is reason
