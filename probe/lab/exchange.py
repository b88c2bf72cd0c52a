"""How Exchange 2013-2019 transport speaks and stamps, for the lab's smart hosts.

Replies in Exchange's words (banner, EHLO, the 250 that queues a message with its InternalId and the
server's name, the refusals), the ``Received`` header of each hop in Exchange's form, the header firewall,
the Message-ID Exchange stamps on a message that has none, and two transport rules (an ``[EXTERNAL]``
subject prefix, a disclaimer). Every function here is pure: the smart host (probe.lab.smarthost) decides when.

The EHLO keywords are those of a Receive connector with Basic authentication offered only after TLS, less
the ones the lab does not implement (DSN, BINARYMIME, CHUNKING, X-ANONYMOUSTLS, X-EXPS): a client that used
them would fail against the lab where it works against Exchange.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

BUILD: Final = "15.2.1544.4"  # the Exchange 2019 build the lab's servers say they are (Received: ... id BUILD)
MAX_MESSAGE_SIZE: Final = 37_748_736  # a Receive connector's default MaxMessageSize, 36 MB (EHLO SIZE)
TARPIT_SECONDS: Final = 5.0  # a Receive connector's default TarpitInterval: how long a failed AUTH's reply waits
SERVICE_READY: Final = "Microsoft ESMTP MAIL Service ready at"
QUEUED: Final = "Queued mail for delivery"
SENDER_OK: Final = "250 2.1.0 Sender OK"
RECIPIENT_OK: Final = "250 2.1.5 Recipient OK"
AUTH_UNSUCCESSFUL: Final = "535 5.7.3 Authentication unsuccessful"
NOT_AUTHENTICATED: Final = "530 5.7.1 Client was not authenticated"
UNRECOGNIZED_AUTH: Final = "504 5.7.4 Unrecognized authentication type"
RELAY_DENIED: Final = "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain"
RECIPIENT_NOT_FOUND: Final = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
TLS_UNAVAILABLE: Final = "454 4.7.0 TLS not available due to local problem"
TLS_ALREADY_ACTIVE: Final = "503 5.5.2 Only one STARTTLS command can be issued per session"
INTERNAL_ERROR: Final = "451 4.7.0 Temporary server error. Please try again later. PRX5"
LOGIN_CHALLENGES: Final = ("Username:", "Password:")  # AUTH LOGIN's 334 prompts (base64 on the wire)
SUBJECT_TAG: Final = "[EXTERNAL] "
DISCLAIMER: Final = ("CAUTION: This email originated from outside of the organization. Do not click links or open "
                     "attachments unless you recognize the sender and know the content is safe.")
FIREWALLED: Final = ("x-ms-exchange-organization-", "x-ms-exchange-forest-")  # removed from mail that comes in

# aiosmtpd's own replies, and the words Exchange uses in their place.
REPLIES: Final[dict[str, str]] = {
    "221 Bye": "221 2.0.0 Service closing transmission channel",
    "354 End data with <CR><LF>.<CR><LF>": "354 Start mail input; end with <CRLF>.<CRLF>",
    "220 Ready to start TLS": "220 2.0.0 SMTP server ready",
    "530 5.7.0 Authentication required": NOT_AUTHENTICATED,
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "250 OK": "250 2.0.0 OK",
    "503 Error: need MAIL command": "503 5.5.2 Need mail command",
    "503 Error: need RCPT command": "503 5.5.2 Need rcpt command",
}
# What Exchange answers with each reply code a tempfail or reject fault asks for.
FAULT_REPLIES: Final[dict[int, str]] = {
    421: "4.3.2 Service not available",
    450: "4.7.0 Temporary server error. Please try again later. PRX4",
    451: "4.7.0 Temporary server error. Please try again later. PRX5",
    452: "4.3.1 Insufficient system resources",
    454: "4.7.0 Temporary authentication failure",
    550: "5.7.1 Delivery not authorized, message refused",
    552: "5.3.4 Message size exceeds fixed maximum message size",
    554: "5.6.0 Invalid message content",
}
# OpenSSL's names of common TLS 1.2 suites, as Windows (and so Exchange's Received header) writes them.
_IANA_CIPHERS: Final[dict[str, str]] = {
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "DHE-RSA-AES256-GCM-SHA384": "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
}
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE: Final = 78


def exchange_date(when: datetime) -> str:
    """Return ``when`` as Exchange writes a date: ``Wed, 1 Dec 2021 08:04:27 +0000`` (no leading zero)."""
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    return (f"{_DAYS[when.weekday()]}, {when.day} {_MONTHS[when.month - 1]} {when.year} "
            f"{when:%H:%M:%S} {sign}{minutes // 60:02d}{minutes % 60:02d}")


def banner(fqdn: str, when: datetime) -> str:
    """Return the 220 greeting: ``220 HOST Microsoft ESMTP MAIL Service ready at DATE``."""
    return f"220 {fqdn} {SERVICE_READY} {exchange_date(when)}"


def ehlo_lines(fqdn: str, peer_ip: str, *, starttls: bool, auth: Sequence[str]) -> list[str]:
    """Return the EHLO reply's lines (with their ``250-`` / ``250 `` prefixes) as Exchange writes them."""
    keywords = [f"{fqdn} Hello [{peer_ip}]", f"SIZE {MAX_MESSAGE_SIZE}", "PIPELINING", "ENHANCEDSTATUSCODES"]
    if starttls:
        keywords.append("STARTTLS")
    if auth:
        keywords.append("AUTH " + " ".join(auth))
    keywords += ["8BITMIME", "SMTPUTF8"]
    return [f"250{'-' if i < len(keywords) - 1 else ' '}{word}" for i, word in enumerate(keywords)]


def new_internal_id() -> int:
    """Return an InternalId as Exchange's 250 names one: the message's number in the transport database."""
    return 10**13 + secrets.randbelow(9 * 10**13)


def queued_reply(*, message_id: str, internal_id: int, fqdn: str, size: int, seconds: float) -> str:
    """Return the 250 that takes a message: its Message-ID, InternalId, the server, and the transfer's size and rate."""
    seconds = max(seconds, 0.001)
    rate = size / 1024 / seconds
    return (f"250 2.6.0 {message_id} [InternalId={internal_id}, Hostname={fqdn}] {size} bytes in {seconds:.3f}, "
            f"{rate:.3f} KB/sec {QUEUED}")


def fault_reply(code: int) -> str:
    """Return the reply to a tempfail or reject fault with ``code``, in Exchange's words for it."""
    text = FAULT_REPLIES.get(code)
    if text is None:
        text = f"{str(code)[0]}.0.0 Transaction failed"
    return f"{code} {text}"


def tls_fields(version: str | None, cipher: str | None) -> str | None:
    """Return ``version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`` from Python's TLS names."""
    if not version or not cipher:
        return None
    name = version.replace("TLSv", "TLS").replace(".", "_")
    return f"version={name}, cipher={_IANA_CIPHERS.get(cipher, cipher)}"


def received_header(*, from_host: str, from_ip: str, by_host: str, by_ip: str, tls: str | None,
                    when: datetime, via: str | None = None) -> bytes:
    """Return one hop's ``Received`` header in Exchange's form, folded, CRLF-terminated::

        Received: from HOST (IP) by HOST (IP) with Microsoft SMTP Server (version=TLS1_2,
         cipher=...) id 15.2.1544.4; Wed, 1 Dec 2021 08:04:27 +0000
    """
    protocol = f"Microsoft SMTP Server ({tls})" if tls else "Microsoft SMTP Server"
    value = (f"from {from_host} ({from_ip}) by {by_host} ({by_ip}) with {protocol} id {BUILD}"
             + (f" via {via}" if via else "") + f"; {exchange_date(when)}")
    return fold("Received", value)


def fold(name: str, value: str) -> bytes:
    """Return ``name: value`` folded at spaces into lines of at most 78 characters where it can be, CRLF ends."""
    lines = [f"{name}:"]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > _LINE and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {word}"
    return ("\r\n".join(lines) + "\r\n").encode()


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Return a message's header block (with its last line end) and its body (after the blank line)."""
    found = _HEADER_END.search(raw)
    if found is None:
        return raw, b""
    line_end = raw[found.start():found.end()].splitlines(keepends=True)[0]
    return raw[:found.start()] + line_end, raw[found.end():]


def _header_fields(head: bytes) -> list[bytes]:
    """Return the header block's fields, each with its continuation lines."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def firewall(raw: bytes) -> bytes:
    """Remove the X-MS-Exchange-Organization-* (and -Forest-*) headers a message brings in from outside."""
    head, body = split_message(raw)
    kept = [f for f in _header_fields(head) if not _name(f).startswith(FIREWALLED)]
    return b"".join(kept) + b"\r\n" + body


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().lower().decode("latin-1")


def message_id_of(raw: bytes) -> str | None:
    """Return a message's Message-ID header value, or None when it has none."""
    head, _ = split_message(raw)
    for field in _header_fields(head):
        _, _, value = field.partition(b":")
        if _name(field) == "message-id":
            text = " ".join(value.decode("utf-8", errors="replace").split())
            return text or None
    return None


def stamp_message_id(raw: bytes, fqdn: str) -> tuple[bytes, str]:
    """Return the message with the Message-ID Exchange gives one that has none (``<guid@server>``), and the id."""
    existing = message_id_of(raw)
    if existing is not None:
        return raw, existing
    message_id = f"<{uuid.uuid4()}@{fqdn}>"
    return f"Message-ID: {message_id}\r\n".encode() + raw, message_id


def organization_headers(*, auth_source: str) -> bytes:
    """Return the X-MS-Exchange-Organization-* headers the receiving organization stamps on a message."""
    network_id = uuid.uuid4()
    return (f"X-MS-Exchange-Organization-Network-Message-Id: {network_id}\r\n"
            f"X-MS-Exchange-Organization-AuthSource: {auth_source}\r\n"
            "X-MS-Exchange-Organization-AuthAs: Internal\r\n"
            "X-MS-Exchange-Organization-MessageDirectionality: Incoming\r\n").encode()


def tag_external(raw: bytes) -> bytes:
    """Apply the transport rule that prefixes the subject of mail from outside with ``[EXTERNAL] ``."""
    head, body = split_message(raw)
    fields = _header_fields(head)
    for index, field in enumerate(fields):
        name, colon, value = field.partition(b":")
        if colon and _name(field) == "subject":
            fields[index] = name + b": " + SUBJECT_TAG.encode() + value.lstrip(b" ")
            break
    else:
        fields.append(f"Subject: {SUBJECT_TAG.strip()}\r\n".encode())
    return b"".join(fields) + b"\r\n" + body


def append_disclaimer(raw: bytes) -> bytes:
    """Apply the transport rule that appends a disclaimer to a plain-text body (a body of another type, or in
    base64, is left as it is: Exchange would wrap or re-encode it, which the lab does not)."""
    head, body = split_message(raw)
    fields = {_name(f): f.lower() for f in reversed(_header_fields(head))}
    if b"text/plain" not in fields.get("content-type", b"text/plain") or b"base64" in fields.get(
            "content-transfer-encoding", b""):
        return raw
    separator = b"" if body.endswith(b"\r\n") or not body else b"\r\n"
    return head + b"\r\n" + body + separator + b"\r\n" + DISCLAIMER.encode() + b"\r\n"
