"""The lab's mailboxes over IMAP: Dovecot behind the IMAP front, fed by LMTP, as one part the lab starts and stops.

Started when the lab runs with ``mailbox_backend="imap"``: every forest's probe mailboxes become Dovecot
accounts (the address as user name, the forest's IMAP password, which is not ASCII, so UTF-8 SASL is
always exercised), the mailbox store hands delivered mail to LMTP instead of keeping it, and each forest
gets IMAPS and STARTTLS listeners with its own certificate.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from probe.lab.ca import LabCA
from probe.lab.dovecot import Dovecot
from probe.lab.faults import FaultRegistry, MailboxFault
from probe.lab.imap_front import ImapFront
from probe.lab.lmtp import LmtpDelivery, Parcel
from probe.lab.stats import LabStats
from probe.lab.store import DeliveryRecord, MailboxStore
from probe.secret import Secret

IMAP_HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class ImapEndpoint:
    """Where one forest's IMAP server listens."""

    implicit_port: int
    starttls_port: int


class ImapWing:
    """Dovecot, its LMTP feed and the IMAP front of every forest."""

    def __init__(self, *, store: MailboxStore, faults: FaultRegistry, stats: LabStats, ca: LabCA,
                 accounts: Mapping[str, Secret], forests: Mapping[str, str]) -> None:
        self._store = store
        self._faults = faults
        self._stats = stats
        self._ca = ca
        self._forests = dict(forests)  # name -> domain
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.dovecot = Dovecot(users=accounts)
        self._lmtp: LmtpDelivery | None = None
        self._front: ImapFront | None = None
        self.endpoints: dict[str, ImapEndpoint] = {}

    def start(self, *, fixed_ports: Callable[[int], tuple[int, int]] | None = None) -> None:
        """Start Dovecot, the LMTP feed and the fronts; ``fixed_ports(i)`` gives forest i's ports when fixed."""
        self.dovecot.start()
        self._lmtp = LmtpDelivery(self.dovecot.lmtp_socket, on_delivered=self._delivered)
        self._lmtp.start()
        self._store.set_sink(self._hand_over)
        for name, domain in self._forests.items():
            issued = self._ca.issue(f"imap-{name}", [IMAP_HOST, "localhost", f"imap.{domain}", f"mail.{domain}"])
            self._contexts[name] = issued.server_context()
        self._front = ImapFront(upstream=(IMAP_HOST, self.dovecot.imap_port), faults=self._faults, stats=self._stats,
                                contexts=self._contexts.__getitem__, host=IMAP_HOST)
        self._front.start()
        for index, name in enumerate(self._forests):
            implicit, starttls = fixed_ports(index) if fixed_ports is not None else (0, 0)
            ports = self._front.add_forest(name, implicit_port=implicit, starttls_port=starttls)
            self.endpoints[name] = ImapEndpoint(implicit_port=ports[0], starttls_port=ports[1])

    def _hand_over(self, address: str, raw: bytes, folder: str, accepted_at: float | None, message_id: str) -> None:
        assert self._lmtp is not None
        self._lmtp.submit(Parcel(address=address, raw=raw, folder=folder, accepted_at=accepted_at,
                                 message_id=message_id))

    def _delivered(self, parcel: Parcel, at: float) -> None:
        forest = self._store.forest_of(parcel.address)
        offset = self._faults.find(f"imap/{forest}", MailboxFault.CLOCK_OFFSET)
        server_time = at + (offset.seconds or 0.0 if offset is not None else 0.0)
        self._store.record_delivery(DeliveryRecord(
            mailbox=parcel.address.lower(), message_id=parcel.message_id, accepted_at=parcel.accepted_at,
            delivered_at=at, received=datetime.fromtimestamp(int(server_time), tz=UTC), folder=parcel.folder))

    def stop(self) -> None:
        """Stop the fronts, the LMTP feed and Dovecot (safe to call twice, or after a failed start)."""
        front, self._front = self._front, None
        if front is not None:
            front.stop()
        lmtp, self._lmtp = self._lmtp, None
        if lmtp is not None:
            with contextlib.suppress(Exception):
                lmtp.stop()
        self.dovecot.stop()
