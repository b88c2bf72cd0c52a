"""A forest's source transport: its Send connectors, routed through the other forests' smart hosts, with a queue.

Mail submitted in a forest (EWS CreateItem at its endpoint, or its submission port: probe.lab.submission)
gets an Exchange-shaped Received header for the submission hop and enters this queue. Routing is Exchange's:
a recipient of the forest itself is delivered to its mailbox; any other is routed by address space to the
Send connector whose address space is the recipient's domain. A connector tries its smart hosts in order,
each with STARTTLS (required before its stored credentials are sent) and then AUTH with those credentials:
a smart host that fails (refused, TLS, 535, 4xx) is failed over to the next, and when none takes the message
it stays queued and every smart host is tried again at the next retry. Past the delay-notice age the sender
is owed a delayed DSN, past the expiry an NDR (``550 4.4.7 QUEUE.Expired``); a 5xx at MAIL, RCPT or DATA is
an NDR at once with the smart host's own status.

Faults on ``connector/FOREST`` (probe.lab.faults.ConnectorFault) act on that forest's connectors:
``disabled`` takes them out of routing (the message waits, as in Exchange's Unreachable queue, until it
expires), ``address_space_removed`` empties their address spaces (no route: NDR ``5.4.4`` at once),
``bad_credentials`` makes them send a wrong stored password (the smart hosts answer 535, the queue keeps
retrying), ``tls_unavailable_required`` leaves TLS required but impossible (no attempt sends credentials),
``pin`` keeps them on one smart host (no failover).

What the transport owes a sender (a delayed DSN, an NDR) goes to a ``NoticeSink``. The lab's is
``MailboxNotices``: each notice written as Exchange writes it (probe.lab.ndr) into the sender's mailbox, where
the probe reads it like any NDR; ``RecordedNotices`` only keeps them.
"""

from __future__ import annotations

import email.utils
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from probe.config import SmartHostConfig
from probe.lab.faults import ConnectorFault, Fault, FaultRegistry
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.lab.smarthost import LabSmartHost
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.secret import Secret
from probe.smtp import SubmitResult, submit
from probe.vocabulary import SendReason, Stage

log = logging.getLogger(__name__)

EXCHANGE_BUILD: Final = "15.2.1544.4"  # the build the lab's EWS endpoints report (Exchange 2019)
TLS_COMMENT: Final = "version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
NO_ROUTE: Final = ("5.4.4", "550 5.4.4 ROUTING.NoNextHop; unable to route")
EXPIRED: Final = "4.4.7"
_WRONG_PASSWORD: Final = Secret("not-the-stored-password")
_PERMANENT_STAGES: Final = frozenset({Stage.MAIL, Stage.RCPT, Stage.DATA})
_ENHANCED: Final = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True, kw_only=True)
class TransportTiming:
    """How the queue retries: seconds between rounds, until a delayed DSN, until the NDR; each attempt's timeout."""

    retry_seconds: float = 2.0
    delay_notice_seconds: float = 30.0
    expire_seconds: float = 90.0
    attempt_timeout: float = 10.0


@dataclass(frozen=True, kw_only=True)
class SendConnector:
    """A Send connector: its address spaces, its smart hosts in order, and the credentials it stores."""

    name: str
    address_spaces: tuple[str, ...]
    smart_hosts: tuple[LabSmartHost, ...]
    username: str
    password: Secret


@dataclass(frozen=True, kw_only=True)
class DeliveryNotice:
    """A delivery status notification the transport owes a sender: ``delayed``, or ``failed`` (an NDR)."""

    action: Literal["delayed", "failed"]
    sender: str
    recipient: str
    status: str  # the enhanced status code, e.g. 5.4.4
    diagnostic: str  # the reply or the transport's own words, e.g. "550 5.4.4 ROUTING.NoNextHop; unable to route"
    remote_mta: str | None  # the smart host that answered, if one did
    reporting_mta: str  # this transport's host name
    original: bytes  # the message as it was queued
    arrived: float  # when it entered the queue
    retry_until: float | None = None  # a delayed one's: when the queue gives up (it expires)


NoticeSink = Callable[[DeliveryNotice], None]


class RecordedNotices:
    """A notice sink that keeps every notice (for tests and ``GET /stats``) and delivers nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notices: list[DeliveryNotice] = []

    def __call__(self, notice: DeliveryNotice) -> None:
        """Keep ``notice``."""
        with self._lock:
            self._notices.append(notice)

    def notices(self) -> list[DeliveryNotice]:
        """Return the notices so far."""
        with self._lock:
            return list(self._notices)


class MailboxNotices:
    """A notice sink that delivers each notice to the sender's mailbox as Exchange writes it (an NDR, or a
    "Delivery delayed:" notification, from the sender's own forest's postmaster), and keeps it in ``record``."""

    def __init__(self, store: MailboxStore, record: RecordedNotices) -> None:
        self._store, self._record = store, record

    def __call__(self, notice: DeliveryNotice) -> None:
        """Keep ``notice``; deliver its report to the sender's mailbox when the lab has it."""
        self._record(notice)
        if not self._store.has_mailbox(notice.sender):
            log.info("transport: no mailbox for the sender %s; its %s notice is dropped", notice.sender, notice.action)
            return
        forest = self._store.forest_of(notice.sender)
        stamp = datetime.fromtimestamp
        report = Notice(status=notice.status, recipient=notice.recipient, sender=notice.sender,
                        postmaster=f"postmaster@{notice.sender.rpartition('@')[2].lower()}",
                        reporting_mta=notice.reporting_mta, arrival=stamp(notice.arrived, UTC),
                        when=stamp(self._store.server_time(forest), UTC), remote_mta=notice.remote_mta,
                        diagnostic=notice.diagnostic,
                        will_retry_until=None if notice.retry_until is None else stamp(notice.retry_until, UTC))
        build = non_delivery_report if notice.action == "failed" else delay_notification
        self._store.deliver(notice.sender, build(notice.original, report))


@dataclass(kw_only=True)
class _Queued:
    """One message for one recipient in the queue."""

    queue_id: str
    sender: str
    recipient: str
    raw: bytes
    arrived: float
    next_try: float
    attempts: int = 0
    delay_notified: bool = False
    last_error: str = ""
    busy: bool = False


@dataclass(frozen=True)
class _Delivered:
    carrier: str | None  # the smart host that took it (None: delivered to a mailbox of this forest)


@dataclass(frozen=True)
class _Failed:
    status: str
    diagnostic: str
    remote_mta: str | None = None


@dataclass(frozen=True)
class _Deferred:
    error: str


_Outcome = _Delivered | _Failed | _Deferred


def exchange_received_header(*, from_host: str, from_ip: str, by_host: str, by_ip: str, via: str | None,
                             when: datetime) -> bytes:
    """Return a Received header as Exchange 2013-2019 write one (CRLF line ends, folded)."""
    tail = f" via {via}" if via else ""
    return (f"Received: from {from_host} ({from_ip}) by {by_host} ({by_ip})\r\n with Microsoft SMTP Server"
            f" ({TLS_COMMENT})\r\n id {EXCHANGE_BUILD}{tail}; {email.utils.format_datetime(when)}\r\n").encode()


def _enhanced(result: SubmitResult) -> str | None:
    if result.enhanced_code:
        return result.enhanced_code
    found = _ENHANCED.search(result.smtp_reply or "")
    return found.group(1) if found else None


class SourceTransport:
    """One forest's transport: submission into its queue, routing, its Send connectors, retries and notices."""

    def __init__(self, *, forest: str, domain: str, fqdn: str, address: str, connectors: Sequence[SendConnector],
                 store: MailboxStore, faults: FaultRegistry, stats: LabStats, ca_file: Path,
                 timing: TransportTiming | None = None, notify: NoticeSink | None = None) -> None:
        self.forest, self.domain, self.fqdn, self.address = forest, domain.lower(), fqdn, address
        self.connectors = tuple(connectors)
        self.store, self.faults, self.stats, self.ca_file = store, faults, stats, ca_file
        self.timing = timing or TransportTiming()
        self.notify: NoticeSink = notify or RecordedNotices()
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"lab-transport-{forest}")
        self._thread = threading.Thread(target=self._run, name=f"lab-transport-{forest}", daemon=True)

    @property
    def target(self) -> str:
        """Return the fault target of this forest's connectors, ``connector/FOREST``."""
        return f"connector/{self.forest}"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start working the queue."""
        self._thread.start()

    def stop(self) -> None:
        """Stop working the queue (what is queued is dropped with the lab)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def queued(self) -> int:
        """Return how many (message, recipient) pairs wait in the queue."""
        with self._lock:
            return len(self._queue)

    # -- submission -------------------------------------------------------------------------------

    def submit(self, *, sender: str, recipients: Sequence[str], raw: bytes, received: bytes) -> str:
        """Queue ``raw`` (with the submission hop's Received header) for each recipient; return its queue id."""
        queue_id = secrets.token_hex(6).upper()
        now = time.time()
        with self._lock:
            for recipient in recipients:
                self._queue.append(_Queued(queue_id=queue_id, sender=sender, recipient=recipient.lower(),
                                           raw=received + raw, arrived=now, next_try=now))
        self.stats.count_transport(self.forest, "queued")
        self._wake.set()
        return queue_id

    def send(self, *, sender: str, recipients: Sequence[str], raw: bytes) -> str:
        """Queue a message a mailbox of this forest sends (EWS CreateItem): the Mailbox Transport hop's header."""
        self.stats.count_transport(self.forest, "submitted_ews")
        received = self.received_from(client=self.fqdn, client_ip=self.address, via="Mailbox Transport")
        return self.submit(sender=sender, recipients=recipients, raw=raw, received=received)

    def received_from(self, *, client: str, client_ip: str, via: str) -> bytes:
        """Return the Received header this forest's server writes on taking a submission."""
        return exchange_received_header(from_host=client, from_ip=client_ip, by_host=self.fqdn, by_ip=self.address,
                                        via=via, when=datetime.now(UTC))

    # -- the queue --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = time.time()
            with self._lock:
                due = [item for item in self._queue if not item.busy and item.next_try <= now]
                for item in due:
                    item.busy = True
                waits = [item.next_try - now for item in self._queue if not item.busy]
            for item in due:
                self._pool.submit(self._work, item)
            self._wake.wait(max(0.01, min(waits, default=1.0)))
            self._wake.clear()

    def _work(self, item: _Queued) -> None:
        try:
            outcome = self._attempt(item)
        except Exception as exc:  # a lab bug must not stop the queue: the message is retried
            log.exception("transport %s: attempt failed", self.forest)
            outcome = _Deferred(f"451 4.3.0 lab transport error: {type(exc).__name__}")
        self._settle(item, outcome)

    def _settle(self, item: _Queued, outcome: _Outcome) -> None:
        now = time.time()
        if isinstance(outcome, _Deferred):
            item.last_error = outcome.error
            self.stats.count_transport(self.forest, "deferred")
            if now - item.arrived >= self.timing.expire_seconds:
                outcome = _Failed(EXPIRED, f"550 {EXPIRED} QUEUE.Expired; message expired ({item.last_error})")
            else:
                self._maybe_delay_notice(item, now)
        with self._lock:
            item.busy, item.next_try = False, now + self.timing.retry_seconds
            if not isinstance(outcome, _Deferred) and item in self._queue:
                self._queue.remove(item)
        if isinstance(outcome, _Failed):
            self._notice(item, "failed", outcome.status, outcome.diagnostic, outcome.remote_mta)
        elif isinstance(outcome, _Delivered):
            self.stats.count_transport(self.forest, "delivered" if outcome.carrier else "delivered_local")
            if outcome.carrier:
                self.stats.count_transport(self.forest, f"carried:{outcome.carrier}")
        self._wake.set()

    def _maybe_delay_notice(self, item: _Queued, now: float) -> None:
        if item.delay_notified or now - item.arrived < self.timing.delay_notice_seconds:
            return
        item.delay_notified = True
        found = _ENHANCED.search(item.last_error)
        status = found.group(1) if found and found.group(1).startswith("4") else EXPIRED
        self._notice(item, "delayed", status, item.last_error, None)

    def _notice(self, item: _Queued, action: Literal["delayed", "failed"], status: str, diagnostic: str,
                remote: str | None) -> None:
        self.stats.count_transport(self.forest, "ndr" if action == "failed" else "delayed_dsn")
        notice = DeliveryNotice(action=action, sender=item.sender, recipient=item.recipient, status=status,
                                diagnostic=diagnostic, remote_mta=remote, reporting_mta=self.fqdn,
                                original=item.raw, arrived=item.arrived,
                                retry_until=item.arrived + self.timing.expire_seconds if action == "delayed" else None)
        try:
            self.notify(notice)
        except Exception:  # a sink's failure loses that notice only
            log.exception("transport %s: the notice sink failed", self.forest)

    # -- one attempt ------------------------------------------------------------------------------

    def _attempt(self, item: _Queued) -> _Outcome:
        item.attempts += 1
        self.stats.count_transport(self.forest, "attempts")
        domain = item.recipient.rpartition("@")[2]
        if domain == self.domain:
            return self._deliver_here(item)
        connectors = [c for c in self.connectors if domain in self._address_spaces(c)]
        if not connectors:
            return _Failed(*NO_ROUTE)
        if self._fault(ConnectorFault.DISABLED) is not None:
            return _Deferred(f"451 4.4.0 ROUTING.NoNextHop: the Send connector {connectors[0].name} is disabled "
                             "(the message waits in the Unreachable queue)")
        return self._via(connectors[0], item)

    def _fault(self, kind: ConnectorFault) -> Fault | None:
        return self.faults.find(self.target, kind)

    def _address_spaces(self, connector: SendConnector) -> tuple[str, ...]:
        return () if self._fault(ConnectorFault.ADDRESS_SPACE_REMOVED) is not None else connector.address_spaces

    def _deliver_here(self, item: _Queued) -> _Outcome:
        try:
            self.store.deliver(item.recipient, item.raw)
        except KeyError:
            return _Failed("5.1.1", f"550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ({item.recipient})")
        return _Delivered(None)

    def _hosts(self, connector: SendConnector) -> tuple[LabSmartHost, ...]:
        pin = self._fault(ConnectorFault.PIN)
        if pin is None:
            return connector.smart_hosts
        return tuple(h for h in connector.smart_hosts if h.name == pin.smart_host)

    def _via(self, connector: SendConnector, item: _Queued) -> _Outcome:
        """Offer the message to the connector's smart hosts in order; the first that takes it carries it."""
        if self._fault(ConnectorFault.TLS_UNAVAILABLE_REQUIRED) is not None:
            return _Deferred(f"451 4.4.0 TLS is required by the Send connector {connector.name} but this server "
                             "cannot negotiate it; no credentials were sent")
        errors: list[str] = []
        for host in self._hosts(connector):
            result = self._offer(connector, host, item)
            if result.ok:
                return _Delivered(host.name)
            if result.stage in _PERMANENT_STAGES and result.reason is SendReason.REJECTED:
                reply = f"{result.smtp_code} {result.smtp_reply}"
                return _Failed(_enhanced(result) or "5.0.0", f"Remote server returned '{reply}'", host.fqdn)
            errors.append(result.error or f"smart host {host.name}: failed")
        if not errors:
            return _Deferred(f"451 4.4.0 no smart host of {connector.name} may be used")
        return _Deferred("451 4.4.0 " + "; ".join(errors))

    def _offer(self, connector: SendConnector, host: LabSmartHost, item: _Queued) -> SubmitResult:
        """Submit to one smart host as the connector does: STARTTLS required, then AUTH with the stored account."""
        wrong = self._fault(ConnectorFault.BAD_CREDENTIALS) is not None
        config = SmartHostConfig(name=host.name, host=host.host, port=host.port, tls="starttls",
                                 username=connector.username, password=_WRONG_PASSWORD if wrong else connector.password,
                                 ca_file=self.ca_file, server_name=host.fqdn, timeout=self.timing.attempt_timeout,
                                 helo=self.fqdn)
        return submit(host=config, sender=item.sender, recipient=item.recipient, message=item.raw)
