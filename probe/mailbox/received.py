"""Received headers parsed into hops, oldest first, with the delay between consecutive hops."""

from __future__ import annotations

import email.utils
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

_CLAUSES: Final = ("from", "by", "via", "with", "id", "for")
_PHRASES: Final = ("with", "via")  # clauses whose value may be several words: "with Microsoft SMTP Server"
_WORD: Final = re.compile(r"\(|[^\s()]+")
_ADDRESS_WORD: Final = re.compile(r"[0-9A-Fa-f:.]*[0-9A-Fa-f][0-9A-Fa-f:.]*")
_ADDRESS_CLAUSES: Final = ("from", "by")
_MAX_HEADER: Final = 4096  # a Received header longer than this is cut before parsing


@dataclass(frozen=True, kw_only=True)
class Hop:
    """One Received header: who handed the message to whom, how, and when."""

    from_host: str | None
    by_host: str | None
    with_protocol: str | None
    id: str | None
    for_address: str | None
    timestamp: datetime | None  # UTC; None when the date is missing or unreadable
    delay: float | None  # seconds since the previous hop's timestamp; None for the first or when unknown
    raw: str
    from_address: str | None = None  # the sending host's IP address, from the comment after it or its [literal]
    by_address: str | None = None  # the receiving host's IP address, likewise ("by HOST (IP)": Exchange's form)

    def to_json(self) -> dict[str, Any]:
        """Return the hop as plain JSON values (what the ledger keeps and the debug view shows)."""
        return {
            "from_host": self.from_host, "by_host": self.by_host, "with_protocol": self.with_protocol, "id": self.id,
            "for_address": self.for_address, "from_address": self.from_address, "by_address": self.by_address,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
            "delay": self.delay, "raw": self.raw,
        }


def parse_received(headers: Sequence[str]) -> tuple[Hop, ...]:
    """Parse Received header values (in header order, newest first) into hops, oldest first; never raise."""
    hops = [parse_hop(value) for value in reversed(headers)]
    timed: list[Hop] = []
    previous: datetime | None = None
    for hop in hops:
        delay = None
        if hop.timestamp is not None and previous is not None:
            delay = (hop.timestamp - previous).total_seconds()
        timed.append(replace(hop, delay=delay))
        if hop.timestamp is not None:
            previous = hop.timestamp
    return tuple(timed)


def parse_hop(value: str) -> Hop:
    """Parse one Received header value into a hop (without its delay); never raise."""
    text = " ".join(str(value)[:_MAX_HEADER].split())
    clauses_text, _, date_text = text.rpartition(";")
    if not clauses_text:
        clauses_text, date_text = text, ""
    clauses, comments = _clauses(clauses_text)
    return Hop(
        from_host=clauses.get("from"), by_host=clauses.get("by"), with_protocol=clauses.get("with"),
        id=clauses.get("id"), for_address=_address(clauses.get("for")), timestamp=_timestamp(date_text),
        delay=None, raw=text,
        from_address=_ip_of(clauses.get("from"), comments.get("from")),
        by_address=_ip_of(clauses.get("by"), comments.get("by")),
    )


def _clauses(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return the value of each clause (from, by, with, via, id, for), comments skipped: its first word, or for
    ``with`` and ``via`` its words up to the next clause or comment (Exchange's ``with Microsoft SMTP Server``);
    and the comment that follows the host of a from or by clause (``by HOST (IP)``)."""
    found: dict[str, str] = {}
    comments: dict[str, str] = {}
    current: str | None = None
    phrase = False  # adding words to the value of the current with/via clause
    last: str | None = None  # the from/by clause whose host was just read, while its comment may follow
    pos = 0
    while (match := _WORD.search(text, pos)) is not None:
        word = match.group(0)
        pos = match.end()
        lowered = word.lower()
        if word == "(":
            pos = _skip_comment(text, match.start())
            phrase = False
            if last in _ADDRESS_CLAUSES and last not in comments:
                comments[last] = text[match.end():pos - 1]
            last = None
            continue
        last = None
        if lowered in _CLAUSES and lowered not in found:
            current, phrase = lowered, False
        elif phrase and current is not None:
            found[current] += " " + word
        elif current is not None and current not in found:
            found[current] = word
            phrase, last = current in _PHRASES, current
    return found, comments


def _ip(word: str) -> str | None:
    """Return ``word`` as an IP address (``[...]`` and an ``IPv6:`` tag taken off), or None."""
    candidate = word.strip("[]")
    if candidate.lower().startswith("ipv6:"):
        candidate = candidate[5:]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _ip_of(host: str | None, comment: str | None) -> str | None:
    """Return a clause's IP address: the host itself when it is an address literal, else the first address in
    the comment after it (``(IP)``, ``(name [IP])``, ``([IP])``), bracketed ones first."""
    if host is not None and (found := _ip(host)) is not None:
        return found
    if not comment:
        return None
    bracketed = re.findall(r"\[([^\]]{2,60})\]", comment)
    for word in (*bracketed, *_ADDRESS_WORD.findall(comment)):
        found = _ip(word)
        if found is not None:
            return found
    return None


def _skip_comment(text: str, start: int) -> int:
    """Return the index just past the (possibly nested) comment that opens at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _address(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip("<>") or None


def _timestamp(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        stamp = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if stamp.tzinfo is None:  # "-0000" means the zone is unknown; read it as UTC
        stamp = stamp.replace(tzinfo=UTC)
    try:
        return stamp.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
