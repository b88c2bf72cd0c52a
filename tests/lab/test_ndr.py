"""The lab's NDRs and delay notifications have Exchange's shape (probe.lab.ndr)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from typing import Any

from probe.lab.ndr import Notice, delay_notification, exchange_diagnostic, non_delivery_report
from probe.lab.store import MailboxStore
from probe.message import build_probe_message

KEY = b"N" * 32
SENDER = "mailflow.probe@contoso.test"
RECIPIENT = "mailflow.probe@fourthcoffee.test"
WHEN = datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC)
NOTICE = Notice(status="5.1.1", recipient=RECIPIENT, sender=SENDER, postmaster="postmaster@fourthcoffee.test",
                reporting_mta="FOURTHCOFFEE-MBX-1.fourthcoffee.test", arrival=WHEN, when=WHEN + timedelta(seconds=2),
                received_from_mta="fourthcoffee-edge-1.fourthcoffee.test")


def original() -> bytes:
    return build_probe_message(key=KEY, route="contoso-to-fourthcoffee", smart_host="fourthcoffee-edge-1",
                               sender=SENDER, recipient=RECIPIENT, now=WHEN, hostname="probe-host").raw


def parsed(raw: bytes) -> Any:
    """Return the message parsed (Any: a part's payload is a list of parts or text, as the test knows)."""
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_an_ndr_has_exchanges_headers_and_three_parts_in_order() -> None:
    """Undeliverable: subject, postmaster sender, NDR markers, a reply to the original; human-readable part,
    delivery status, then the whole original."""
    sent = original()
    raw = non_delivery_report(sent, NOTICE)
    msg = parsed(raw)
    source = parsed(sent)
    assert msg["Subject"].startswith("Undeliverable: [mailflow-probe] contoso-to-fourthcoffee")
    assert msg["From"] == "Microsoft Outlook <postmaster@fourthcoffee.test>"
    assert msg["To"] == f"<{SENDER}>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "X-MS-Exchange-Message-Is-Ndr" in msg
    assert msg["In-Reply-To"] == msg["References"] == source["Message-ID"]
    assert msg["Message-ID"].strip().endswith("@FOURTHCOFFEE-MBX-1.fourthcoffee.test>")
    assert (msg.get_content_type(), msg.get_param("report-type")) == ("multipart/report", "delivery-status")
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "multipart/alternative", "message/delivery-status", "message/rfc822"]
    assert [p.get_content_type() for p in parts[0].get_payload()] == ["text/plain", "text/html"]
    assert parts[2].get_payload()[0]["X-Mailflow-Probe"] == source["X-Mailflow-Probe"]
    assert [p["MIME-Version"] for p in (*parts[:2], *parts[0].get_payload())] == [None] * 4  # the report's only


def test_the_delivery_status_part_carries_the_rfc_3464_fields() -> None:
    """Reporting-MTA, Received-From-MTA, Arrival-Date; Final-Recipient, Action, Status, Diagnostic-Code."""
    blocks = parsed(non_delivery_report(original(), NOTICE)).get_payload()[1].get_payload()
    assert dict(blocks[0].items()) == {
        "Reporting-MTA": "dns;FOURTHCOFFEE-MBX-1.fourthcoffee.test",
        "Received-From-MTA": "dns;fourthcoffee-edge-1.fourthcoffee.test",
        "Arrival-Date": "Sat, 28 Nov 2026 09:00:01 +0000"}
    assert dict(blocks[1].items()) == {
        "Final-Recipient": f"rfc822;{RECIPIENT}", "Action": "failed", "Status": "5.1.1",
        "Diagnostic-Code": "smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", "X-Display-Name": RECIPIENT}


def test_the_human_readable_part_speaks_as_exchange() -> None:
    """The text names the recipient, the generating server and the remote reply, then the original headers."""
    text = parsed(non_delivery_report(original(), NOTICE)).get_payload()[0].get_payload()[0].get_payload()
    assert text.startswith("Delivery has failed to these recipients or groups:")
    assert "Generating server: FOURTHCOFFEE-MBX-1.fourthcoffee.test" in text
    assert "Remote Server returned '550 5.1.1 RESOLVER.ADR.RecipNotFound; not found'" in text
    assert "Original message headers:" in text
    assert "X-Mailflow-Probe: MFP-" in text


def test_a_too_large_message_comes_back_as_headers_only() -> None:
    """For 5.3.4 the original is returned as text/rfc822-headers, without its body."""
    msg = parsed(non_delivery_report(original(), Notice(**{**NOTICE.__dict__, "status": "5.3.4"})))
    returned = msg.get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "X-Mailflow-Probe: MFP-" in returned.get_payload()
    assert "This is a mail flow probe" not in returned.get_payload()


def test_a_delay_notification_is_delivery_delayed_with_retries_until() -> None:
    """Delivery delayed: subject, Action delayed, 4.4.7, Will-Retry-Until, the original's headers."""
    until = WHEN + timedelta(days=2)
    msg = parsed(delay_notification(original(), Notice(**{**NOTICE.__dict__, "status": "4.4.7",
                                                          "will_retry_until": until})))
    assert msg["Subject"].startswith("Delivery delayed:[mailflow-probe]")
    recipient = msg.get_payload()[1].get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("delayed", "4.4.7")
    assert recipient["Will-Retry-Until"] == "Mon, 30 Nov 2026 09:00:01 +0000"
    assert recipient["Diagnostic-Code"] == "smtp;400 4.4.7 Message delayed"
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_lines_end_in_crlf_only() -> None:
    """Every line of a notification ends in CRLF, as on the wire and in a mailbox's MIME content."""
    raw = non_delivery_report(original(), NOTICE)
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_the_store_files_them_under_exchanges_report_classes() -> None:
    """An NDR is REPORT.IPM.Note.NDR, a delay notification REPORT.IPM.Note.Delayed, a probe IPM.Note."""
    store = MailboxStore()
    store.add_mailbox(SENDER, "contoso")
    delayed = Notice(**{**NOTICE.__dict__, "status": "4.4.7"})
    classes = [store.deliver(SENDER, raw).item_class for raw in (
        non_delivery_report(original(), NOTICE), delay_notification(original(), delayed), original())]
    assert classes == ["REPORT.IPM.Note.NDR", "REPORT.IPM.Note.Delayed", "IPM.Note"]


def test_unknown_statuses_get_a_generic_diagnostic_of_their_class() -> None:
    """A status without Exchange words of its own still gets a diagnostic with the right reply code."""
    assert exchange_diagnostic("5.6.9") == "550 5.6.9 Delivery not authorized, message refused"
    assert exchange_diagnostic("4.2.1").startswith("450 4.2.1 ")
