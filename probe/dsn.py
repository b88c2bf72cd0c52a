"""Delivery status notifications (RFC 3464, 3462) read from a message's raw MIME: which probe, and what befell it.

Backend-neutral: a mailbox backend hands over the raw content of a candidate item (EWS MimeContent, IMAP
``BODY[]``, Graph ``$value``) and this module says whether it is a report about one of our probes, and what
it reports. A report counts only when the probe's tag in the returned original (its ``Subject`` and its
``X-Mailflow-Probe`` header, from a ``message/rfc822`` or ``text/rfc822-headers`` part) verifies under the
probe's key, and every tag-shaped text the report carries (its own subject too) names that same probe: an NDR
anyone can write, a signed tag only the probe can.

What is read (Exchange writes all of it): the per-message fields (``Reporting-MTA``, ``Arrival-Date``), and of
the first recipient whose ``Action`` is ``failed`` (else ``delayed``): ``Status``, ``Remote-MTA``,
``Diagnostic-Code``, ``Final-Recipient``, ``Will-Retry-Until``. Nothing here raises on any input.
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from probe import message as probe_message
from probe.vocabulary import BounceReason

MAX_BYTES: Final = 2 * 1024 * 1024  # a report is read up to here; its status part comes long before the original
_MAX_FIELD: Final = 1000  # characters kept of a diagnostic or another free-text field
_STATUS: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_RETURNED_TYPES: Final = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")

Headers = Sequence[tuple[str, str]]


class DsnAction(StrEnum):
    """What a report says of a recipient, among the actions that matter to a probe."""

    FAILED = "failed"  # a non-delivery report: the verdict ``bounced``
    DELAYED = "delayed"  # a delay notification: a warning on the probe, never a verdict


class Refusal(StrEnum):
    """Why a candidate message counts for nothing."""

    NOT_A_REPORT = "not_a_report"  # no multipart/report with a message/delivery-status part
    NO_TAG = "no_tag"  # a report, but nothing in it carries a probe tag
    FORGED = "forged"  # a tag that does not verify, or tags naming different probes
    NO_ACTION = "no_action"  # a report about our probe whose recipients are neither failed nor delayed
    UNREADABLE = "unreadable"  # the parser gave up on it


@dataclass(frozen=True, kw_only=True)
class DeliveryReport:
    """What a verified DSN says about one probe."""

    probe_id: str
    action: DsnAction
    status: str  # the enhanced status code, e.g. ``5.1.1``
    reason: BounceReason
    reporting_mta: str | None  # the server that wrote the report (``Reporting-MTA``, e.g. FC-MBX-1.fourthcoffee.com)
    remote_mta: str | None  # the server that refused, when another than the reporting one
    diagnostic: str | None  # the remote server's words, e.g. ``550 5.1.1 RESOLVER.ADR.RecipNotFound; not found``
    final_recipient: str | None
    original_arrival: datetime | None  # when the original reached the reporting MTA (``Arrival-Date``), UTC
    will_retry_until: datetime | None  # a delay notification's end of retries, UTC
    subject: str  # the report's own subject

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON values (what the ledger keeps and the debug view shows)."""
        return {
            "action": str(self.action), "status": self.status, "reason": str(self.reason),
            "reporting_mta": self.reporting_mta, "remote_mta": self.remote_mta, "diagnostic": self.diagnostic,
            "final_recipient": self.final_recipient,
            "original_arrival": None if self.original_arrival is None else self.original_arrival.isoformat(),
            "will_retry_until": None if self.will_retry_until is None else self.will_retry_until.isoformat(),
            "subject": self.subject,
        }


@dataclass(frozen=True)
class Reading:
    """The outcome of reading one candidate: a verified report, or why it counts for nothing."""

    report: DeliveryReport | None = None
    refused: Refusal | None = None

    @property
    def forged(self) -> bool:
        """Say whether the candidate carried a probe tag that does not verify."""
        return self.refused is Refusal.FORGED


def bounce_reason(status: str) -> BounceReason:
    """Return the reason class of an enhanced status code: X.1.X recipient, X.4.X routing, X.3.4 size, X.7.X policy."""
    found = _STATUS.search(status or "")
    if found is None:
        return BounceReason.OTHER
    subject, detail = found.group(2), found.group(3)
    if subject == "1":
        return BounceReason.RECIPIENT
    if subject == "4":
        return BounceReason.ROUTING
    if subject == "3" and detail == "4":
        return BounceReason.SIZE
    if subject == "7":
        return BounceReason.POLICY
    return BounceReason.OTHER


def read_report(raw: bytes, *, key: bytes) -> Reading:
    """Read ``raw`` as a DSN about a probe signed under ``key``; never raise."""
    try:
        return _read(raw[:MAX_BYTES], key)
    except Exception:  # a parser bug on hostile input must not stop the confirm step
        return Reading(refused=Refusal.UNREADABLE)


def _read(raw: bytes, key: bytes) -> Reading:
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    parts = _report_parts(msg)
    if parts is None:
        return Reading(refused=Refusal.NOT_A_REPORT)
    status_part, returned = parts
    subject = _text(msg.get("Subject"))
    probe_id, refusal = _verified_probe(key, subject, returned)
    if probe_id is None:
        return Reading(refused=refusal)
    blocks = _status_blocks(status_part)
    recipient = _chosen_recipient(blocks[1:])
    if recipient is None:
        return Reading(refused=Refusal.NO_ACTION)
    return Reading(report=_report(probe_id, subject, blocks[0] if blocks else {}, recipient))


def _report_parts(msg: email.message.Message) -> tuple[email.message.Message, Headers] | None:
    """Return a top-level multipart/report's delivery-status part and the returned original's headers."""
    if msg.get_content_type() != "multipart/report" or not msg.is_multipart():
        return None
    payload = msg.get_payload()
    children = [c for c in payload if isinstance(c, email.message.Message)] if isinstance(payload, list) else []
    status = next((c for c in children if c.get_content_type() == "message/delivery-status"), None)
    if status is None:
        return None
    returned = next((c for c in children if c.get_content_type() in _RETURNED_TYPES), None)
    return status, () if returned is None else _returned_headers(returned)


def _returned_headers(part: email.message.Message) -> Headers:
    """Return the headers of the original a report sends back (whole, or its headers only)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        return [(name, _text(value)) for name, value in payload[0].items()]
    body = part.get_payload(decode=True)
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(payload or "")
    headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text.lstrip("\r\n"))
    return [(name, _text(value)) for name, value in headers.items()]


def _verified_probe(key: bytes, subject: str, returned: Headers) -> tuple[str | None, Refusal | None]:
    """Return the probe the returned original names, its tag verified, and the report's own subject agreeing."""
    returned_subject = next((v for k, v in returned if k.lower() == "subject"), "")
    probe_id = probe_message.probe_id_if_genuine(key, returned_subject, returned)
    tags = [t for t in (probe_message.parse_tag(text) for text in _tag_texts(subject, returned)) if t is not None]
    if probe_id is None:
        return None, Refusal.FORGED if tags else Refusal.NO_TAG
    outer = probe_message.parse_tag(subject)
    if outer is not None and (outer.probe_id != probe_id or not probe_message.verify_tag(key, outer)):
        return None, Refusal.FORGED
    return probe_id, None


def _tag_texts(subject: str, returned: Headers) -> Iterable[str]:
    yield subject
    for name, value in returned:
        if name.lower() in ("subject", probe_message.TAG_HEADER.lower()):
            yield value


def _status_blocks(part: email.message.Message) -> list[dict[str, str]]:
    """Return the delivery-status part's field blocks (per-message first, then one per recipient), keys lowercased."""
    payload = part.get_payload()
    if isinstance(payload, list):
        messages = [m for m in payload if isinstance(m, email.message.Message)]
    else:
        text = str(payload or "").replace("\r\n", "\n")
        parser = email.parser.HeaderParser(policy=email.policy.compat32)
        messages = [parser.parsestr(block.strip("\n") + "\n") for block in re.split(r"\n\s*\n", text) if block.strip()]
    return [{name.lower(): _text(value) for name, value in m.items()} for m in messages]


def _chosen_recipient(blocks: Sequence[dict[str, str]]) -> dict[str, str] | None:
    """Return the first recipient that failed, else the first that was delayed."""
    for wanted in (DsnAction.FAILED, DsnAction.DELAYED):
        for block in blocks:
            if block.get("action", "").strip().lower().startswith(wanted.value):
                return block
    return None


def _report(probe_id: str, subject: str, per_message: dict[str, str], recipient: dict[str, str]) -> DeliveryReport:
    action = DsnAction.FAILED if recipient["action"].strip().lower().startswith("failed") else DsnAction.DELAYED
    diagnostic = _typed_value(recipient.get("diagnostic-code"))
    status = _status(recipient.get("status"), diagnostic, action)
    return DeliveryReport(
        probe_id=probe_id, action=action, status=status, reason=bounce_reason(status),
        reporting_mta=_typed_value(per_message.get("reporting-mta")),
        remote_mta=_typed_value(recipient.get("remote-mta")), diagnostic=diagnostic,
        final_recipient=_typed_value(recipient.get("final-recipient") or recipient.get("original-recipient")),
        original_arrival=_date(per_message.get("arrival-date")),
        will_retry_until=_date(recipient.get("will-retry-until")), subject=subject[:_MAX_FIELD],
    )


def _status(field: str | None, diagnostic: str | None, action: DsnAction) -> str:
    """Return the enhanced status code: the Status field's, else the diagnostic's, else the action's generic one."""
    for text in (field, diagnostic):
        found = _STATUS.search(text or "")
        if found is not None:
            return found.group(0)
    return "5.0.0" if action is DsnAction.FAILED else "4.0.0"


def _typed_value(value: str | None) -> str | None:
    """Return ``dns;host`` or ``smtp; 550 ...`` without its type, unfolded and cut to a sane length."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and " " not in kind.strip() else value
    text = " ".join(text.split())
    return text[:_MAX_FIELD] or None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).astimezone(UTC)


def _text(value: object) -> str:
    """Return a header value as text: encoded words decoded, unknown bytes replaced, lines unfolded."""
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError, TypeError):
        text = str(value)
    return " ".join(text.encode("utf-8", errors="replace").decode("utf-8").split())
