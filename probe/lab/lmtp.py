"""Delivery into the lab's Dovecot over LMTP: the smart hosts' mail, in order, from one worker thread.

The mailbox store hands each message here instead of keeping it (``MailboxStore.set_sink``) when the lab
serves its mailboxes over IMAP. One LMTP session is kept open and reused; a message to Junk goes to
``name+Junk@domain`` (Dovecot's ``lmtp_save_to_detail_mailbox``). When Dovecot has taken it, the store
records the delivery (``delivered_at`` is then, true time) for the accuracy benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_JUNK_DETAIL: Final = "Junk"
_TIMEOUT: Final = 30.0


@dataclass(frozen=True, kw_only=True)
class Parcel:
    """One message for one mailbox, as the store hands it over."""

    address: str
    raw: bytes
    folder: str  # the store's folder name: inbox or junkemail
    accepted_at: float | None
    message_id: str


Delivered = Callable[[Parcel, float], None]
"""Told of each parcel Dovecot took, with the true time it had (``time.time()``)."""


def lmtp_recipient(address: str, folder: str) -> str:
    """Return the LMTP recipient that files a message to ``folder`` of ``address``'s mailbox."""
    if folder != "junkemail":
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}+{_JUNK_DETAIL}@{domain}"


class LmtpDelivery:
    """A queue of parcels delivered to Dovecot's LMTP socket by one thread; ``stop()`` drains what is queued."""

    def __init__(self, socket_path: Path, *, on_delivered: Delivered) -> None:
        self._path = socket_path
        self._on_delivered = on_delivered
        self._queue: queue.Queue[Parcel | None] = queue.Queue()
        self._session: smtplib.LMTP | None = None
        self._thread = threading.Thread(target=self._run, name="lab-lmtp", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, parcel: Parcel) -> None:
        """Queue a parcel for delivery."""
        self._queue.put(parcel)

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then end the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (parcel := self._queue.get()) is not None:
            for attempt in (1, 2):  # a session Dovecot closed is reopened once
                try:
                    self._send(parcel)
                    break
                except (OSError, smtplib.SMTPException) as exc:
                    self._close()
                    if attempt == 2:
                        log.warning("lab LMTP: %s not delivered to %s: %s", parcel.folder, parcel.address, exc)
        self._close()

    def _send(self, parcel: Parcel) -> None:
        if self._session is None:
            session = smtplib.LMTP(str(self._path), timeout=_TIMEOUT)
            session.ehlo_or_helo_if_needed()
            self._session = session
        refused = self._session.sendmail("", [lmtp_recipient(parcel.address, parcel.folder)], parcel.raw)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
        self._on_delivered(parcel, time.time())

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                session.quit()
