"""The probe message and its tag: a unique probe id signed with HMAC-SHA256, in a header and the subject.

Only a message whose tag verifies under the probe's key is ever counted or deleted
(``probe_id_if_genuine``); anyone can copy the shape of a tag, no one else can sign one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

TAG_PREFIX: Final = "MFP-"
TAG_HEADER: Final = "X-Mailflow-Probe"
SUBJECT_PREFIX: Final = "[mailflow-probe]"
PROBE_ID_HEX: Final = 16
MAC_HEX: Final = 32  # 16 bytes of the HMAC-SHA256
_MAC_CONTEXT: Final = b"mailflow-probe tag v1\x00"
_TAG_RE: Final = re.compile(
    rf"(?<![0-9A-Za-z]){TAG_PREFIX}([0-9a-fA-F]{{{PROBE_ID_HEX}}})-([0-9a-fA-F]{{{MAC_HEX}}})(?![0-9A-Za-z])"
)
_PROBE_ID_RE: Final = re.compile(rf"[0-9a-f]{{{PROBE_ID_HEX}}}")
_MAX_LINE: Final = 78
_SAFE_TEXT: Final = re.compile(r"[\x21-\x7e]+")

HeaderSource = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Tag:
    """A probe id and the MAC that vouches for it; ``str(tag)`` is ``MFP-<probe_id>-<mac>``."""

    probe_id: str
    mac: str

    @property
    def text(self) -> str:
        """Return the tag as it appears in the header and the subject."""
        return f"{TAG_PREFIX}{self.probe_id}-{self.mac}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ProbeMessage:
    """One probe message, ready to submit: ``raw`` is RFC 5322 with CRLF line ends."""

    probe_id: str
    tag: Tag
    message_id: str
    subject: str
    raw: bytes
    created_at: datetime


def new_probe_id() -> str:
    """Return a fresh random probe id (16 lowercase hex characters)."""
    return secrets.token_hex(PROBE_ID_HEX // 2)


def _mac(key: bytes, probe_id: str) -> str:
    digest = hmac.new(key, _MAC_CONTEXT + probe_id.encode("ascii"), hashlib.sha256).hexdigest()
    return digest[:MAC_HEX]


def make_tag(key: bytes, probe_id: str) -> Tag:
    """Return the tag of ``probe_id`` signed under ``key``."""
    if not _PROBE_ID_RE.fullmatch(probe_id):
        raise ValueError(f"a probe id is {PROBE_ID_HEX} lowercase hex characters, got {probe_id!r}")
    return Tag(probe_id=probe_id, mac=_mac(key, probe_id))


def tag_search_prefix() -> str:
    """Return the text every tagged subject contains, for a mailbox search."""
    return TAG_PREFIX


def parse_tag(text: str) -> Tag | None:
    """Return the first tag-shaped text in ``text`` (not yet verified), or None; never raises."""
    if not isinstance(text, str):
        return None
    match = _TAG_RE.search(text)
    if match is None:
        return None
    return Tag(probe_id=match.group(1).lower(), mac=match.group(2).lower())


def verify_tag(key: bytes, tag: Tag) -> bool:
    """Return whether ``tag``'s MAC is the one ``key`` gives its probe id (compared in constant time)."""
    if not _PROBE_ID_RE.fullmatch(tag.probe_id) or len(tag.mac) != MAC_HEX:
        return False
    return hmac.compare_digest(_mac(key, tag.probe_id), tag.mac.lower())


def _header_values(headers: HeaderSource | None, name: str) -> list[str]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    wanted = name.lower()
    return [str(value) for header, value in pairs if str(header).lower() == wanted]


def probe_id_if_genuine(key: bytes, subject: str | None, headers: HeaderSource | None = None) -> str | None:
    """Return the probe id of a message whose tag verifies under ``key``, else None (count or delete nothing).

    The tag is looked for in the ``X-Mailflow-Probe`` header and the subject; every tag found must
    verify and all must name the same probe, so a forged tag next to a genuine one makes nothing count.
    """
    texts = [*_header_values(headers, TAG_HEADER), subject or ""]
    tags = [tag for tag in (parse_tag(text) for text in texts) if tag is not None]
    if not tags or not all(verify_tag(key, tag) for tag in tags):
        return None
    ids = {tag.probe_id for tag in tags}
    return ids.pop() if len(ids) == 1 else None


def _check_field(name: str, value: str) -> None:
    if not _SAFE_TEXT.fullmatch(value):
        raise ValueError(f"{name} must be printable ASCII without spaces, got {value!r}")


def _folded(name: str, value: str) -> list[str]:
    """Return the header ``name: value`` folded at spaces so lines stay within 78 characters where possible."""
    lines = [f"{name}:"]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > _MAX_LINE and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {word}"
    return lines


def _body(route: str, smart_host: str, sent: datetime, tag: Tag, hostname: str) -> list[str]:
    return [
        "This is a mail flow probe sent by mailflow-probe.",
        "It is deleted once found; no action is needed.",
        "",
        f"Route:      {route}",
        f"Smart host: {smart_host}",
        f"Sent:       {sent.isoformat(timespec='milliseconds')}",
        f"Probe:      {tag.text}",
        f"From host:  {hostname}",
    ]


def _local_hostname() -> str:
    name = socket.gethostname()
    return name if _SAFE_TEXT.fullmatch(name) else "localhost"


def build_probe_message(*, key: bytes, route: str, smart_host: str, sender: str, recipient: str,
                        probe_id: str | None = None, now: datetime | None = None,
                        hostname: str | None = None) -> ProbeMessage:
    """Return the probe message of ``route`` through ``smart_host``, tagged under ``key``."""
    for name, value in (("route", route), ("smart_host", smart_host), ("sender", sender),
                        ("recipient", recipient)):
        _check_field(name, value)
    when = now if now is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    host = hostname if hostname is not None and _SAFE_TEXT.fullmatch(hostname) else _local_hostname()
    tag = make_tag(key, probe_id if probe_id is not None else new_probe_id())
    domain = sender.rpartition("@")[2].lower() or "localhost"
    message_id = f"<{tag.probe_id}.{int(when.timestamp() * 1000)}@mailflow-probe.{domain}>"
    subject_head = f"{SUBJECT_PREFIX} {route} via {smart_host}"
    headers = [
        f"Date: {format_datetime(when)}",
        f"From: <{sender}>",
        f"To: <{recipient}>",
        *_folded("Subject", f"{subject_head} {tag.text}"),
        f"Message-ID: {message_id}",
        f"{TAG_HEADER}: {tag.text}",
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
    ]
    lines = [*headers, "", *_body(route, smart_host, when, tag, host)]
    raw = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return ProbeMessage(probe_id=tag.probe_id, tag=tag, message_id=message_id,
                        subject=f"{subject_head} {tag.text}", raw=raw, created_at=when)
