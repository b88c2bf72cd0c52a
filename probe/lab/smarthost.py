"""The lab's smart hosts: aiosmtpd servers on their own loopback addresses, all on one event loop, speaking Exchange.

Every smart host of a lab listens on its own 127.x.y.z address and shares one asyncio loop in one
background thread, so a lab of thousands of smart hosts costs sockets, not threads. Each one is an Exchange
2019 Receive connector with Basic authentication offered only after TLS: it speaks in Exchange's words
(probe.lab.exchange), holds a failed AUTH's reply back (the tarpit), accepts only its forest's recipients,
stamps a Message-ID on a message without one, drops the X-MS-Exchange-Organization-* headers a message
brings in (the header firewall), and stamps a ``Received`` header in Exchange's form on each of two hops: its
own (the edge, on its clock) and the forest's mailbox server's (on the forest's clock) when the message is
delivered into the mailbox store, after the transport rules in force. A ``bounce`` fault accepts the message
and then sends the sender's mailbox Exchange's NDR instead (probe.lab.ndr). Faults (probe.lab.faults) are read
per connection and per command, so they can change while the lab runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import resource
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, TLSSetupException

from probe.lab import exchange
from probe.lab.ca import LabCA
from probe.lab.faults import Fault, FaultRegistry, SmartHostFault
from probe.lab.loop_thread import LoopThread
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.secret import Secret

log = logging.getLogger(__name__)

MAX_FORESTS: Final = 239  # second octets 16..254
MAX_SMART_HOSTS_PER_FOREST: Final = 256 * 254
MAILBOX_SERVER_IP: Final = "127.0.0.1"  # where a forest's mailbox server (its EWS endpoint) listens
_FIRST_OCTET: Final = 16
_BANNER_STAGES: Final = ("connect", "banner")
_AUTH: Final = ("LOGIN",)  # Basic authentication: Exchange offers AUTH LOGIN, not PLAIN
_INTERNAL_TLS: Final = "version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"  # edge -> mailbox server
_RETRY_FOR: Final = timedelta(days=2)  # a queue's MessageExpirationTimeout: a delay notification's end of retries


def smart_host_address(forest_index: int, host_index: int) -> str:
    """Return the loopback address of a forest's smart host (both indexes 0-based)."""
    if not 0 <= forest_index < MAX_FORESTS:
        raise ValueError(f"a lab holds at most {MAX_FORESTS} forests")
    if not 0 <= host_index < MAX_SMART_HOSTS_PER_FOREST:
        raise ValueError(f"a forest holds at most {MAX_SMART_HOSTS_PER_FOREST} smart hosts")
    return f"127.{_FIRST_OCTET + forest_index}.{host_index // 254}.{host_index % 254 + 1}"


def mailbox_server(forest: str, domain: str) -> str:
    """Return the FQDN of a forest's mailbox server, e.g. ``FOURTHCOFFEE-MBX-1.fourthcoffee.test``."""
    return f"{forest.upper()}-MBX-1.{domain}"


@dataclass(frozen=True, kw_only=True)
class LabSmartHost:
    """One smart host of the lab: where it listens, the account it accepts, how long its deliveries take.

    ``transit`` is the range (seconds) a delivery takes from the final 250 to the mailbox when no fault
    says otherwise, drawn uniformly per message; (0, 0), the default, delivers at once.
    """

    name: str
    forest: str
    domain: str
    host: str
    port: int
    username: str
    password: Secret
    transit: tuple[float, float] = (0.0, 0.0)

    def transit_delay(self) -> float:
        """Return how long one delivery takes when no fault is in force: a draw from ``transit``."""
        low, high = self.transit
        return random.uniform(low, high) if high > 0 else 0.0

    @property
    def fqdn(self) -> str:
        """Return its DNS name, e.g. ``fourthcoffee-edge-1.fourthcoffee.test``."""
        return f"{self.name}.{self.domain}"

    @property
    def target(self) -> str:
        """Return its fault target, ``smarthost/NAME``."""
        return f"smarthost/{self.name}"

    @property
    def mailbox_server(self) -> str:
        """Return its forest's mailbox server, the second hop of what it delivers."""
        return mailbox_server(self.forest, self.domain)


class _Certificates:
    """The TLS contexts one smart host can present, issued on first use."""

    def __init__(self, host: LabSmartHost, ca: LabCA, untrusted_ca: Callable[[], LabCA]) -> None:
        self._host = host
        self._ca = ca
        self._untrusted_ca = untrusted_ca
        self._contexts: dict[str, ssl.SSLContext] = {}

    def context(self, faults: FaultRegistry) -> ssl.SSLContext:
        """Return the context the faults in force call for: good, expired or untrusted."""
        target = self._host.target
        kind = "good"
        if faults.find(target, SmartHostFault.UNTRUSTED_CERT):
            kind = "untrusted"
        elif faults.find(target, SmartHostFault.EXPIRED_CERT):
            kind = "expired"
        if kind not in self._contexts:
            self._contexts[kind] = self._issue(kind)
        return self._contexts[kind]

    def _issue(self, kind: str) -> ssl.SSLContext:
        ca = self._untrusted_ca() if kind == "untrusted" else self._ca
        sans = [self._host.host, self._host.fqdn]
        return ca.issue(self._host.name, sans, expired=kind == "expired").server_context()


@dataclass(frozen=True, kw_only=True)
class _Pending:
    """A message accepted at DATA, waiting for its 250 to be sent: what becomes of it then."""

    raw: bytes  # with the edge's Received header, after the header firewall
    sender: str
    recipients: tuple[str, ...]
    folder: str
    copies: int
    delay: float | None
    notify_after: float | None = None  # a delay notification to the sender this long after the 250
    bounce: Fault | None = None  # an NDR to the sender instead of a delivery
    rules: tuple[SmartHostFault, ...] = ()  # the transport rules in force


def _tls_fields(session: Any) -> str | None:
    cipher = (session.ssl or {}).get("cipher")
    return exchange.tls_fields(cipher[1], cipher[0]) if cipher else None


_RULES: Final[dict[SmartHostFault, Callable[[bytes], bytes]]] = {
    SmartHostFault.SUBJECT_PREFIX: exchange.tag_external, SmartHostFault.DISCLAIMER: exchange.append_disclaimer,
}


class SmartHost:
    """The behaviour of one smart host, shared by all its connections (they run on one loop)."""

    def __init__(self, spec: LabSmartHost, *, store: MailboxStore, faults: FaultRegistry, stats: LabStats,
                 certificates: _Certificates, loop: asyncio.AbstractEventLoop, tarpit: float) -> None:
        self.spec = spec
        self.store = store
        self.faults = faults
        self.stats = stats
        self.certificates = certificates
        self.loop = loop
        self.tarpit = tarpit

    def count(self, event: str) -> None:
        """Count an event at this smart host."""
        self.stats.count_smarthost(self.spec.name, event)

    def fault(self, kind: SmartHostFault, stage: str | None = None) -> Fault | None:
        """Return the fault of this kind in force on this smart host (at this stage), if any."""
        return self.faults.find(self.spec.target, kind, stage=stage)

    async def stage_fault(self, stage: str) -> str | None:
        """Sleep if the host is slow at ``stage``; return the failure reply a fault calls for, if any."""
        slow = self.fault(SmartHostFault.SLOW, stage)
        if slow is not None and slow.seconds:
            await asyncio.sleep(slow.seconds)
        failing = self.fault(SmartHostFault.TEMPFAIL, stage) or self.fault(SmartHostFault.REJECT, stage)
        if failing is None:
            return None
        self.count("rejected")
        return exchange.fault_reply(failing.code or 554)  # parse_fault gives tempfail and reject their default

    # aiosmtpd handler hooks: called with the connection's SMTP instance as ``server``.

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        """Answer EHLO as Exchange does: STARTTLS before TLS (unless ``no_starttls``), AUTH LOGIN after it."""
        session.host_name = hostname
        secure = server.tls_active
        return exchange.ehlo_lines(self.spec.fqdn, str(session.peer[0]), auth=_AUTH if secure else (),
                                   starttls=not secure and self.fault(SmartHostFault.NO_STARTTLS) is None)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        """Take the sender."""
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return exchange.SENDER_OK

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        """Accept only recipients of this forest's domain that have a mailbox (recipient filtering)."""
        if address.rpartition("@")[2].lower() != self.spec.domain:
            self.count("rejected")
            return exchange.RELAY_DENIED
        if not self.store.has_mailbox(address):
            self.count("rejected")
            return exchange.RECIPIENT_NOT_FOUND
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return exchange.RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Take the message: stamp its Message-ID, firewall its headers, stamp the edge's Received, and leave it
        for delivery after the 250 (which names the Message-ID, the InternalId and this server)."""
        failure = await self.stage_fault("data")
        if failure is not None:
            return failure
        content = bytes(envelope.original_content or b"")
        raw, message_id = exchange.stamp_message_id(exchange.firewall(content), self.spec.fqdn)
        received = exchange.received_header(
            from_host=session.host_name or "unknown", from_ip=str(session.peer[0]), by_host=self.spec.fqdn,
            by_ip=self.spec.host, tls=_tls_fields(session), when=datetime.now(UTC))
        server.pending = self._pending(received + raw, envelope)
        return exchange.queued_reply(message_id=message_id, internal_id=exchange.new_internal_id(),
                                     fqdn=self.spec.fqdn, size=len(content),
                                     seconds=time.monotonic() - server.data_started)

    def _pending(self, raw: bytes, envelope: Any) -> _Pending:
        delay = self.fault(SmartHostFault.DELAY_DELIVERY)
        return _Pending(
            raw=raw, sender=str(envelope.mail_from or ""), recipients=tuple(envelope.rcpt_tos),
            folder="junkemail" if self.fault(SmartHostFault.TO_JUNK) else "inbox",
            copies=0 if self.fault(SmartHostFault.DROP) else 2 if self.fault(SmartHostFault.DUPLICATE) else 1,
            delay=delay.seconds if delay is not None else self.spec.transit_delay(),
            notify_after=delay.notify_after if delay is not None else None,
            bounce=self.fault(SmartHostFault.BOUNCE), rules=tuple(k for k in _RULES if self.fault(k)))

    async def handle_exception(self, error: Exception) -> str:
        """Answer an unexpected error as Exchange would, without a traceback to the client."""
        if isinstance(error, TLSSetupException):  # the client gave up on the handshake: its choice
            log.debug("smart host %s: TLS handshake failed: %s", self.spec.name, error.__cause__)
            return exchange.TLS_UNAVAILABLE
        log.warning("smart host %s: %s: %s", self.spec.name, type(error).__name__, error)
        return exchange.INTERNAL_ERROR

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        """Accept only this forest's account, unless ``auth_reject`` is in force."""
        ok = (isinstance(auth_data, LoginPassword) and self.fault(SmartHostFault.AUTH_REJECT) is None
              and auth_data.login.decode(errors="replace") == self.spec.username
              and secrets_match(auth_data.password, self.spec.password))
        self.count("auth_success" if ok else "auth_failures")
        if ok:
            return AuthResult(success=True, handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False, message=exchange.AUTH_UNSUCCESSFUL)

    def accepted(self, pending: _Pending, accepted_at: float) -> None:
        """Deliver a message whose 250 was sent at ``accepted_at``, as the faults in force say."""
        self.count("accepted")
        if pending.bounce is not None:
            self.loop.call_later(max(0.0, pending.bounce.seconds or 0.0), self._bounce, pending, accepted_at)
        elif pending.copies == 0:
            self.count("dropped")
        elif pending.delay:
            self.loop.call_later(pending.delay, self._deliver, pending, accepted_at)
            if pending.notify_after is not None and pending.notify_after < pending.delay:
                self.loop.call_later(pending.notify_after, self._notify_delay, pending, accepted_at)
        else:
            self._deliver(pending, accepted_at)

    def _deliver(self, pending: _Pending, accepted_at: float) -> None:
        raw = pending.raw
        for kind in pending.rules:
            raw = _RULES[kind](raw)
        for address in pending.recipients:
            for _ in range(pending.copies):
                try:
                    self.store.deliver(address, self._mailbox_hop(raw), folder=pending.folder,
                                       accepted_at=accepted_at)
                except KeyError:
                    log.warning("smart host %s: mailbox %s is gone; message lost", self.spec.name, address)
                    continue
                self.count("delivered")

    def _mailbox_hop(self, raw: bytes) -> bytes:
        """Return the message as the forest's mailbox server takes it from this edge: its Received, on the forest's
        clock, and the organization's headers."""
        when = datetime.fromtimestamp(self.store.server_time(self.spec.forest), UTC)
        received = exchange.received_header(from_host=self.spec.fqdn, from_ip=self.spec.host,
                                            by_host=self.spec.mailbox_server, by_ip=MAILBOX_SERVER_IP,
                                            tls=_INTERNAL_TLS, when=when)
        return received + exchange.organization_headers(auth_source=self.spec.fqdn) + raw

    def _bounce(self, pending: _Pending, accepted_at: float) -> None:
        """Send the sender's mailbox Exchange's NDR of the message, for each recipient."""
        fault = pending.bounce
        assert fault is not None
        assert fault.status is not None
        routing = fault.status.split(".")[1] == "4"  # the edge itself refuses on routing; the mailbox server else
        for address in pending.recipients:
            notice = self._notice(pending, address, accepted_at, status=fault.status,
                                  reporter=self.spec.fqdn if routing else self.spec.mailbox_server)
            self._send_back(pending, non_delivery_report(self._mailbox_hop(pending.raw), notice), "bounced")

    def _notify_delay(self, pending: _Pending, accepted_at: float) -> None:
        """Send the sender's mailbox Exchange's delay notification: this edge's queue still holds the message."""
        for address in pending.recipients:
            notice = replace(self._notice(pending, address, accepted_at, status="4.4.7", reporter=self.spec.fqdn),
                             will_retry_until=datetime.fromtimestamp(accepted_at, UTC) + _RETRY_FOR)
            self._send_back(pending, delay_notification(pending.raw, notice), "delay_notified")

    def _notice(self, pending: _Pending, recipient: str, accepted_at: float, *, status: str,
                reporter: str) -> Notice:
        now = datetime.fromtimestamp(self.store.server_time(self.spec.forest), UTC)
        return Notice(status=status, recipient=recipient, sender=pending.sender,
                      postmaster=f"postmaster@{self.spec.domain}", reporting_mta=reporter,
                      arrival=datetime.fromtimestamp(accepted_at, UTC), when=now,
                      received_from_mta=self.spec.fqdn if reporter != self.spec.fqdn else None)

    def _send_back(self, pending: _Pending, report: bytes, event: str) -> None:
        """Deliver a report into the sender's mailbox (when the lab has it): out through this edge, into its forest's
        mailbox server."""
        if not self.store.has_mailbox(pending.sender):
            log.info("smart host %s: no mailbox for the sender %s; report dropped", self.spec.name, pending.sender)
            self.count("reports_dropped")
            return
        forest = self.store.forest_of(pending.sender)
        domain = pending.sender.rpartition("@")[2].lower()
        now = datetime.now(UTC)
        out = exchange.received_header(from_host=self.spec.mailbox_server, from_ip=MAILBOX_SERVER_IP,
                                       by_host=self.spec.fqdn, by_ip=self.spec.host, tls=_INTERNAL_TLS, when=now)
        back = exchange.received_header(
            from_host=self.spec.fqdn, from_ip=self.spec.host, by_host=mailbox_server(forest, domain),
            by_ip=MAILBOX_SERVER_IP, tls=_INTERNAL_TLS,
            when=datetime.fromtimestamp(self.store.server_time(forest), UTC))
        self.count(event)
        self.store.deliver(pending.sender, back + out + report, folder="inbox")


def secrets_match(given: bytes, password: Secret) -> bool:
    """Compare a password in constant time."""
    return secrets.compare_digest(given, password.reveal().encode())


class LabSMTP(SMTP):
    """One SMTP connection to a lab smart host: aiosmtpd with the lab's rules, faults and Exchange's words."""

    AuthLoginUsernameChallenge, AuthLoginPasswordChallenge = exchange.LOGIN_CHALLENGES

    def __init__(self, host: SmartHost, live: set[LabSMTP]) -> None:
        super().__init__(
            host, hostname=host.spec.fqdn, tls_context=None, auth_required=True, auth_require_tls=True,
            authenticator=host.authenticate, timeout=120, loop=host.loop, data_size_limit=exchange.MAX_MESSAGE_SIZE,
            auth_exclude_mechanism=["PLAIN"],
        )
        self.host = host
        self.pending: _Pending | None = None
        self.data_started = 0.0
        self._live = live
        self._greeted = False
        self._refused = False

    @property
    def tls_active(self) -> bool:
        """Say whether STARTTLS has completed on this connection."""
        return self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection, or reset it at once while ``refuse_connections`` is in force."""
        if self._original_transport is None:  # a new TCP connection, not the end of a TLS handshake
            self.host.count("connections")
            if self.host.fault(SmartHostFault.REFUSE_CONNECTIONS):
                self._refused = True
                self.host.count("refused")
                _reset(transport)
                return
            self._live.add(self)
            self.tls_context = self.host.certificates.context(self.host.faults)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the connection."""
        self._live.discard(self)
        if not self._refused:
            super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        """Send a reply in Exchange's words: the banner (or a fault's reply instead), a failed AUTH's after the
        tarpit; note the moment of the final 250."""
        text = status if isinstance(status, str) else status.decode()
        close = False
        if not self._greeted:
            self._greeted = True
            text, close = await self._banner()
        text = exchange.REPLIES.get(text, text)
        if text.startswith("535 "):
            await asyncio.sleep(self.host.tarpit)  # Exchange's tarpit: a failed AUTH's reply waits
        pending, self.pending = self.pending, None
        if pending is None or not text.startswith("250"):
            await super().push(text)
        else:
            self._writer.write(text.encode("ascii") + b"\r\n")
            self.host.accepted(pending, time.time())
            await self._writer.drain()
        if close and self.transport is not None:
            self.transport.close()

    async def _banner(self) -> tuple[str, bool]:
        for stage in _BANNER_STAGES:
            failure = await self.host.stage_fault(stage)
            if failure is not None:
                return failure, True
        return exchange.banner(self.host.spec.fqdn, datetime.now(UTC)), False

    async def _refused_at(self, stage: str) -> bool:
        failure = await self.host.stage_fault(stage)
        if failure is not None:
            await self.push(failure)
        return failure is not None

    async def _needs_tls(self, refusal: str = exchange.NOT_AUTHENTICATED) -> bool:
        """Refuse a command before STARTTLS (no credentials can have been given yet)."""
        if self._tls_protocol is None:
            await self.push(refusal)
            return True
        return False

    async def smtp_EHLO(self, arg: str) -> None:  # noqa: N802
        """EHLO, counted, after any fault at the ehlo stage."""
        self.host.count("ehlo")
        if not await self._refused_at("ehlo"):
            await super().smtp_EHLO(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802
        """STARTTLS with the certificate the faults in force call for, or refused under ``no_starttls``."""
        if self._tls_protocol is not None:
            await self.push(exchange.TLS_ALREADY_ACTIVE)
            return
        if self.host.fault(SmartHostFault.NO_STARTTLS):
            await self.push(exchange.TLS_UNAVAILABLE)
            return
        self.host.count("starttls")
        if await self._refused_at("starttls"):
            return
        self.tls_context = self.host.certificates.context(self.host.faults)
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802
        """AUTH, counted whatever happens next; before STARTTLS no mechanism is offered, so none is known."""
        self.host.count("auth_attempts")
        if await self._needs_tls(exchange.UNRECOGNIZED_AUTH) or await self._refused_at("auth"):
            return
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        """MAIL, refused before STARTTLS."""
        if await self._needs_tls() or await self._refused_at("mail"):
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        """RCPT, refused before STARTTLS."""
        if await self._needs_tls() or await self._refused_at("rcpt"):
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        """DATA, refused before STARTTLS (its stage faults apply to the final reply); its transfer is timed."""
        if await self._needs_tls():
            return
        self.data_started = time.monotonic()
        await super().smtp_DATA(arg)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close a TCP connection with a reset rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class _QuietDeprecation(logging.Filter):
    """Drop aiosmtpd's warning about its own use of Session.login_data on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in str(record.msg)


logging.getLogger("mail.log").addFilter(_QuietDeprecation())


class SmartHostFleet:
    """Every smart host of one lab, served from one event loop in one background thread."""

    def __init__(self, *, ca: LabCA, store: MailboxStore, faults: FaultRegistry, stats: LabStats,
                 untrusted_dir: Path, tarpit: float = exchange.TARPIT_SECONDS) -> None:
        self._ca = ca
        self._tarpit = tarpit
        self._store = store
        self._faults = faults
        self._stats = stats
        self._untrusted_dir = untrusted_dir
        self._untrusted: LabCA | None = None
        self._runner = LoopThread(name="lab-smarthosts")
        self._loop = self._runner.loop
        self._servers: list[asyncio.AbstractServer] = []
        self._live: set[LabSMTP] = set()

    def start(self) -> None:
        """Start the event loop thread."""
        self._runner.start()

    def add(self, specs: Sequence[LabSmartHost], *, timeout: float = 60.0) -> list[LabSmartHost]:
        """Start listening for each smart host; return them with their bound ports."""
        _raise_fd_limit(len(self._servers) + len(specs))
        return self._runner.run(self._bind_all(specs), timeout=timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Close every listener and connection and end the loop thread."""
        self._runner.stop(self._close_all, timeout=timeout)

    def _untrusted_ca(self) -> LabCA:
        if self._untrusted is None:
            self._untrusted = LabCA(self._untrusted_dir, common_name="mailflow-probe untrusted CA")
        return self._untrusted

    async def _bind_all(self, specs: Sequence[LabSmartHost]) -> list[LabSmartHost]:
        results = await asyncio.gather(*(self._bind(spec) for spec in specs), return_exceptions=True)
        failures = [(spec, r) for spec, r in zip(specs, results, strict=True) if isinstance(r, BaseException)]
        if failures:
            spec, error = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise OSError(_bind_failure(spec, error) + more)
        return [r for r in results if isinstance(r, LabSmartHost)]

    async def _bind(self, spec: LabSmartHost) -> LabSmartHost:
        certificates = _Certificates(spec, self._ca, self._untrusted_ca)
        host = SmartHost(spec, store=self._store, faults=self._faults, stats=self._stats,
                         certificates=certificates, loop=self._loop, tarpit=self._tarpit)
        server = await self._loop.create_server(lambda: LabSMTP(host, self._live), spec.host, spec.port,
                                                reuse_address=True)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return replace(spec, port=port)

    async def _close_all(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self._live):
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.gather(*(s.wait_closed() for s in self._servers), return_exceptions=True)
        await self._runner.cancel_the_rest()


def _bind_failure(spec: LabSmartHost, error: BaseException) -> str:
    """Say in one line why a smart host cannot listen, naming the missing facility when it is one."""
    where = f"smart host {spec.name} cannot listen on {spec.host}:{spec.port}"
    code = error.errno if isinstance(error, OSError) else None
    if code == errno.EADDRNOTAVAIL:
        return (f"{where}: {spec.host} is not a local address; the lab needs all of 127.0.0.0/8 on the "
                "loopback interface (Linux routes it there; elsewhere add the address as a loopback alias)")
    if code == errno.EADDRINUSE:
        return f"{where}: port {spec.port} is in use on {spec.host}"
    return f"{where}: {error}"


def _raise_fd_limit(listeners: int) -> None:
    """Raise the soft limit on open files, up to the hard one, to fit ``listeners`` and their clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = listeners * 2 + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
