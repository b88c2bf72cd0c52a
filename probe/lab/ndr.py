"""Exchange-shaped delivery status notifications: non-delivery reports and delay notifications, as raw bytes.

What Exchange 2013-2019 sends the sender when it gives up on a message (or, after its delay notification
timeout, while it still tries): a ``multipart/report; report-type=delivery-status`` message from the
organization's postmaster, subject ``Undeliverable: <subject>`` (``Delivery delayed:<subject>``), marked
``X-MS-Exchange-Message-Is-Ndr`` and ``Auto-Submitted: auto-replied``, whose parts are

1. Exchange's human-readable part (``multipart/alternative``: text and HTML; "Delivery has failed to these
   recipients or groups", the diagnostic information for administrators, the original message headers);
2. ``message/delivery-status``: ``Reporting-MTA: dns;<generating server>``, ``Received-From-MTA``,
   ``Arrival-Date``, then per recipient ``Final-Recipient: rfc822;...``, ``Action``, ``Status``,
   ``Remote-MTA``, ``Diagnostic-Code: smtp;...``, ``Will-Retry-Until`` (a delay), ``X-Display-Name``;
3. the original: the whole message (``message/rfc822``), or only its headers (``text/rfc822-headers``) when
   the message is the problem (too large) and in a delay notification.

The stdlib ``email`` package builds and serialises it (CRLF line ends). The lab's smart hosts use it for the
``bounce`` and ``delay_delivery`` faults; the lab's source transport (a Send connector's queue) for its own
NDRs and delay notifications.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import html
import io
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from email.generator import BytesGenerator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Final

_POLICY: Final = email.policy.compat32.clone(linesep="\r\n")
_DELAYED_DIAGNOSTIC: Final = "400 4.4.7 Message delayed"

# The Diagnostic-Code Exchange (or Exchange Online Protection in front of it) writes for common statuses.
EXCHANGE_DIAGNOSTICS: Final[dict[str, str]] = {
    "5.1.1": "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
    "5.1.10": "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "5.2.2": "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException."
             "MapiExceptionShutoffQuotaExceeded",
    "5.3.4": "552 5.3.4 Message size exceeds fixed maximum message size",
    "5.4.1": "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
    "5.4.6": "554 5.4.6 Hop count exceeded - possible mail loop",
    "5.4.14": "554 5.4.14 Hop count exceeded - possible mail loop ATTR34",
    "4.4.7": "550 4.4.7 QUEUE.Expired; message expired",
    "5.7.1": "550 5.7.1 TRANSPORT.RULES.RejectMessage; the message was rejected by organization policy",
    "5.7.54": "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
}
# What the NDR tells the user, by the status's subject digit (Exchange's default DSN texts).
_USER_TEXT: Final[dict[str, str]] = {
    "1": "The email address you entered couldn't be found. Please check the recipient's email address and try to "
         "resend the message. If the problem continues, please contact your helpdesk.",
    "3": "Your message couldn't be delivered because it's too large for the recipient's email system.",
    "4": "Your message couldn't be delivered. The recipient's email system couldn't be reached, or it refused "
         "your message.",
    "7": "Your message wasn't delivered because of security policies.",
}
_DEFAULT_USER_TEXT: Final = ("The server has tried to deliver this message, without success, and has stopped "
                             "trying. Please try sending this message again. If the problem continues, contact "
                             "your helpdesk.")


def exchange_diagnostic(status: str) -> str:
    """Return the ``Diagnostic-Code`` text Exchange writes for ``status`` (a generic one for others)."""
    if status in EXCHANGE_DIAGNOSTICS:
        return EXCHANGE_DIAGNOSTICS[status]
    code = {"4": 450, "5": 550}.get(status[:1], 550)
    return f"{code} {status} Delivery not authorized, message refused"


@dataclass(frozen=True, kw_only=True)
class Notice:
    """What one notification reports, about one recipient of one original message."""

    status: str  # the enhanced status code: 5.1.1 (failed), 4.4.7 (delayed)...
    recipient: str  # the original's recipient
    sender: str  # the original's envelope sender: whom the notification goes to
    postmaster: str  # the address the notification comes from, e.g. postmaster@fourthcoffee.com
    reporting_mta: str  # the generating server, e.g. FOURTHCOFFEE-MBX-1.fourthcoffee.com
    arrival: datetime  # when the original reached the reporting MTA (aware)
    when: datetime  # when the notification is written (aware)
    remote_mta: str | None = None  # the server that refused, when another than the reporting one
    received_from_mta: str | None = None  # the server the original came from
    diagnostic: str | None = None  # the remote server's words; default: exchange_diagnostic(status)
    will_retry_until: datetime | None = None  # a delay notification's end of retries

    @property
    def diagnostic_text(self) -> str:
        """Return the diagnostic: the given one, or Exchange's words for the status."""
        return self.diagnostic or exchange_diagnostic(self.status)


def non_delivery_report(original: bytes, notice: Notice) -> bytes:
    """Return Exchange's NDR of ``original`` (subject ``Undeliverable: ...``), with the original returned whole
    (only its headers when it was too large, status X.3.4)."""
    headers_only = notice.status.split(".")[1:] == ["3", "4"]
    return _notification(original, notice, action="failed", headers_only=headers_only)


def delay_notification(original: bytes, notice: Notice) -> bytes:
    """Return Exchange's delay notification of ``original`` (subject ``Delivery delayed:...``), headers returned."""
    if notice.diagnostic is None:
        notice = replace(notice, diagnostic=_DELAYED_DIAGNOSTIC)
    return _notification(original, notice, action="delayed", headers_only=True)


def _notification(original: bytes, notice: Notice, *, action: str, headers_only: bool) -> bytes:
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(original)
    subject = " ".join(str(parsed.get("Subject", "")).split())
    report = MIMEMultipart("report", boundary=f"_002_{uuid.uuid4().hex}_", report_type="delivery-status")
    _set_headers(report, parsed, notice, subject=subject, action=action)
    for part in (_human_readable(notice, subject, _header_text(parsed), action=action),
                 _delivery_status(notice, action=action), _returned(parsed, original, headers_only=headers_only)):
        del part["MIME-Version"]  # only the top level says it, as Exchange writes it
        report.attach(part)
    out = io.BytesIO()
    BytesGenerator(out, policy=_POLICY).flatten(report)
    return out.getvalue()


def _set_headers(report: MIMEMultipart, parsed: email.message.Message, notice: Notice, *, subject: str,
                 action: str) -> None:
    """Put Exchange's headers of a notification on ``report`` (in the order Exchange writes them)."""
    head = "Undeliverable: " if action == "failed" else "Delivery delayed:"
    original_id = str(parsed.get("Message-ID", "")).strip()
    content_type = str(report["Content-Type"])
    del report["Content-Type"], report["MIME-Version"]
    fields = [
        ("From", f"Microsoft Outlook <{notice.postmaster}>"), ("To", f"<{notice.sender}>"),
        ("Date", email.utils.format_datetime(notice.when)), ("Content-Type", content_type),
        ("Content-Language", "en-US"),
        ("Message-ID", f"<{uuid.uuid4()}@{notice.reporting_mta}>"),
        *((("In-Reply-To", original_id), ("References", original_id)) if original_id else ()),
        ("Thread-Topic", subject), ("Subject", head + subject), ("Auto-Submitted", "auto-replied"),
        ("X-MS-Exchange-Message-Is-Ndr", ""), ("MIME-Version", "1.0"),
    ]
    for name, value in fields:
        report[name] = value


def _header_text(parsed: email.message.Message) -> str:
    return "".join(f"{name}: {value}\n" for name, value in parsed.items())


def _human_readable(notice: Notice, subject: str, headers: str, *, action: str) -> MIMEMultipart:
    """Return Exchange's text and HTML explanation, with the diagnostic information for administrators."""
    if action == "failed":
        lead = "Delivery has failed to these recipients or groups:"
        advice = _USER_TEXT.get(notice.status.split(".")[1] if "." in notice.status else "", _DEFAULT_USER_TEXT)
    else:
        lead = "Delivery is delayed to these recipients or groups:"
        advice = (f"Subject: {subject}\n\nThis message hasn't been delivered yet. Delivery will continue to be "
                  "attempted.\n\nThe server will keep trying to deliver this message. You'll be notified if the "
                  "message can't be delivered by that time.")
    remote = f"Remote Server at {notice.remote_mta} returned" if notice.remote_mta else "Remote Server returned"
    admin = (f"Diagnostic information for administrators:\n\nGenerating server: {notice.reporting_mta}\n\n"
             f"{notice.recipient}\n{remote} '{notice.diagnostic_text}'\n\nOriginal message headers:\n\n")
    text = f"{lead}\n\n{notice.recipient}\n{advice}\n\n\n\n\n\n\n{admin}{headers}"
    page = (f"<html><head></head><body><p><b><font color=\"#000066\" size=\"3\" face=\"Arial\">{html.escape(lead)}"
            f"</font></b></p><p><a href=\"mailto:{html.escape(notice.recipient)}\">{html.escape(notice.recipient)}"
            f"</a><br>{html.escape(advice)}</p><pre>{html.escape(admin + headers)}</pre></body></html>")
    alternative = MIMEMultipart("alternative", boundary=f"_000_{uuid.uuid4().hex}_", differences="Content-Type")
    for body, subtype in ((text, "plain"), (page, "html")):
        part = MIMEText(body, subtype, "us-ascii" if body.isascii() else "utf-8")
        del part["MIME-Version"]
        alternative.attach(part)
    return alternative


def _delivery_status(notice: Notice, *, action: str) -> email.message.Message:
    """Return the ``message/delivery-status`` part: the per-message block, then the recipient's."""
    per_message = email.message.Message()
    per_message["Reporting-MTA"] = f"dns;{notice.reporting_mta}"
    if notice.received_from_mta:
        per_message["Received-From-MTA"] = f"dns;{notice.received_from_mta}"
    per_message["Arrival-Date"] = email.utils.format_datetime(notice.arrival)
    recipient = email.message.Message()
    recipient["Final-Recipient"] = f"rfc822;{notice.recipient}"
    recipient["Action"] = action
    recipient["Status"] = notice.status
    if notice.remote_mta:
        recipient["Remote-MTA"] = f"dns;{notice.remote_mta}"
    recipient["Diagnostic-Code"] = f"smtp;{notice.diagnostic_text}"
    if notice.will_retry_until is not None:
        recipient["Will-Retry-Until"] = email.utils.format_datetime(notice.will_retry_until)
    recipient["X-Display-Name"] = notice.recipient
    part = email.message.Message()
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([per_message, recipient])
    return part


def _returned(parsed: email.message.Message, original: bytes, *, headers_only: bool) -> email.message.Message:
    """Return the original: whole as ``message/rfc822``, or its headers as ``text/rfc822-headers``."""
    if headers_only:
        return MIMEText(_header_text(parsed), "rfc822-headers", "us-ascii" if original.isascii() else "utf-8")
    part = email.message.Message()
    part["Content-Type"] = "message/rfc822"
    part.set_payload([parsed])
    return part
