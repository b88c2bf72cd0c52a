"""The tracking handoff: how to follow a lost or bounced probe in the smart host's own logs.

The smart host's final 250 names its queue id, and Exchange's also the server that took the message
(``250 2.6.0 <message-id> [InternalId=..., Hostname=EX01.contoso.com] Queued mail for delivery``). With the
probe's Message-ID and time window that is enough for the exact command an Exchange admin runs
(``Get-MessageTrackingLog``) or a Postfix admin's log search. The kind of server is read from the reply and
the banner in the transcript; nothing here talks to any server.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

WINDOW_BEFORE: Final = 300.0  # seconds before the probe was made that the search starts (clock skew)
WINDOW_AFTER: Final = 900.0  # seconds after its verdict (or deadline) that the search ends
_HOSTNAME: Final = re.compile(r"\bHostname=([A-Za-z0-9.-]+)")
_POSTFIX: Final = re.compile(r"queued as\s+[A-Za-z0-9]+|ESMTP Postfix", re.IGNORECASE)
_EXCHANGE: Final = re.compile(r"\[InternalId=|Microsoft ESMTP MAIL Service", re.IGNORECASE)
_PS_QUOTES: Final = "'\u2018\u2019\u201a\u201b"
_SAFE_QUEUE_ID: Final = re.compile(r"[A-Za-z0-9.@:+_-]{1,128}")

Mta = Literal["exchange", "postfix", "other"]


@dataclass(frozen=True, kw_only=True)
class TrackingHint:
    """What to follow a probe by in the smart host's logs, and the commands that do it."""

    mta: Mta
    message_id: str
    queue_id: str | None
    server: str | None  # the server that took the message, when its reply named it
    start: datetime
    end: datetime
    commands: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the hint as plain JSON values (check --debug, the debug view)."""
        return {"mta": self.mta, "message_id": self.message_id, "queue_id": self.queue_id, "server": self.server,
                "start": _iso(self.start), "end": _iso(self.end), "commands": list(self.commands)}


def tracking_hint(*, detail: Mapping[str, Any], message_id: str, created_at: float,
                  finished_at: float) -> TrackingHint:
    """Return how to follow a probe made at ``created_at`` and decided (or due) at ``finished_at``."""
    reply = str(detail.get("smtp_reply") or "")
    transcript = [str(line) for line in detail.get("transcript") or []]
    mta = _mta(reply, transcript)
    queue_id = detail.get("queue_id")
    queue_id = str(queue_id) if queue_id and _SAFE_QUEUE_ID.fullmatch(str(queue_id)) else None
    found = _HOSTNAME.search(reply)
    server = found.group(1) if found else None
    start = datetime.fromtimestamp(created_at - WINDOW_BEFORE, UTC).replace(microsecond=0)
    end = datetime.fromtimestamp(finished_at + WINDOW_AFTER, UTC).replace(microsecond=0)
    commands: tuple[str, ...] = ()
    if mta == "exchange":
        commands = (exchange_command(message_id=message_id, start=start, end=end, server=server),)
    elif mta == "postfix" and queue_id is not None:
        commands = postfix_commands(queue_id=queue_id, start=start, end=end)
    return TrackingHint(mta=mta, message_id=message_id, queue_id=queue_id, server=server, start=start, end=end,
                        commands=commands)


def exchange_command(*, message_id: str, start: datetime, end: datetime, server: str | None) -> str:
    """Return the Exchange Management Shell command that follows ``message_id`` through the window.

    Without a server it asks every transport server (``Get-TransportService |``): a bare Get-MessageTrackingLog
    searches only the server it runs on.
    """
    query = f"-MessageId {_ps_quote(message_id)} -Start {_ps_quote(_iso(start))} -End {_ps_quote(_iso(end))}"
    if server is not None:
        return f"Get-MessageTrackingLog {query} -Server {_ps_quote(server)}"
    return f"Get-TransportService | Get-MessageTrackingLog {query}"


def postfix_commands(*, queue_id: str, start: datetime, end: datetime) -> tuple[str, ...]:
    """Return the log searches that follow a Postfix queue id (the journal, and a classic mail.log)."""
    since, until = (shlex.quote(stamp.strftime("%Y-%m-%d %H:%M:%S UTC")) for stamp in (start, end))
    return (f"journalctl --since {since} --until {until} --grep {shlex.quote(queue_id)}",
            f"grep -F {shlex.quote(queue_id)} /var/log/mail.log")


def _mta(reply: str, transcript: Sequence[str]) -> Mta:
    banner = next((line for line in transcript if line.startswith("S: 220")), "")
    for text in (reply, banner):
        if _EXCHANGE.search(text):
            return "exchange"
        if _POSTFIX.search(text):
            return "postfix"
    return "other"


def _ps_quote(text: str) -> str:
    """Quote ``text`` as a PowerShell single-quoted string: every quote PowerShell reads as one (', and the curly
    and low ones) is doubled, control characters dropped."""
    cleaned = "".join(c for c in text if c.isprintable())
    return "'" + "".join(c * 2 if c in _PS_QUOTES else c for c in cleaned) + "'"


def _iso(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
