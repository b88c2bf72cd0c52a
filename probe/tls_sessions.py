"""TLS sessions to resume, per smart host, each good until a few minutes after the full handshake that began it.

A full TLS handshake is most of what one submission costs the probe (bench/submit.py: 1.75 of 3.8 ms; a
resumed one about 1.2). Offering the smart host the session of its last connection saves that, and keeps
every probe's certificate check honest: a session is resumed only with the SSL context whose verification
made it (same CA file, same verify setting), for the same host, port and server name; the smart host's
certificate facts (expiry, subject, issuer) come with the session, from the verified handshake; and every
``FULL_HANDSHAKE_EVERY`` seconds a probe does a full handshake again, which verifies the certificate the host
presents now (a renewed or replaced one is seen within that time). A handshake that fails drops the host's
session, so the next probe starts afresh; a session the host refuses is replaced by a full handshake's.

The session of the full handshake is offered again and again (its ticket reused) rather than each
connection's newest: reading a connection's session costs 0.37 ms of CPU (CPython copies it, certificates
and all, through DER), more than resuming saves (bench/submit.py). RFC 8446 advises against reusing a ticket
for privacy (connections become linkable), which is no concern for a probe that authenticates anyway; a
server that takes each ticket once answers with a full handshake, whose session is then kept.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

FULL_HANDSHAKE_EVERY: Final = 300.0  # seconds: the longest a smart host's certificate goes unverified
_MAX_HOSTS: Final = 8192

Key = tuple[str, int, str]  # (host, port, name the certificate is verified against)


@dataclass
class _Entry:
    context: ssl.SSLContext
    session: ssl.SSLSession
    full_at: float  # when the full handshake that began this line of sessions was done


class TlsSessions:
    """The session to offer each smart host; safe to use from many threads."""

    def __init__(self, *, max_age: float = FULL_HANDSHAKE_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def resumes(self) -> bool:
        """Say whether sessions are resumed at all (max_age > 0); if not, there is no session worth reading."""
        return self._max_age > 0

    def offer(self, key: Key, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """Return the session to offer for ``key`` with ``context``, or None when a full handshake is due."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.context is not context or self._clock() - entry.full_at >= self._max_age:
                del self._entries[key]
                return None
            return entry.session

    def keep(self, key: Key, context: ssl.SSLContext, session: ssl.SSLSession | None) -> None:
        """Remember the session of a full handshake: it is offered until a full handshake is due again."""
        if session is None:
            return
        with self._lock:
            if len(self._entries) >= _MAX_HOSTS and key not in self._entries:
                self._entries.clear()
            self._entries[key] = _Entry(context=context, session=session, full_at=self._clock())

    def forget(self, key: Key) -> None:
        """Drop the session of ``key`` (its handshake failed): the next connection does a full handshake."""
        with self._lock:
            self._entries.pop(key, None)


SESSIONS: Final = TlsSessions()
"""The process's sessions, shared by every submission (probe.smtp)."""
