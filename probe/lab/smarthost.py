"""The lab's smart hosts: aiosmtpd servers on their own loopback addresses, all on one event loop.

Every smart host of a lab listens on its own 127.x.y.z address and shares one asyncio loop in one
background thread, so a lab of thousands of smart hosts costs sockets, not threads. Each one offers
STARTTLS, allows AUTH only after it, accepts only its forest's recipients, stamps a Received header,
and hands the message to the mailbox store. Faults (probe.lab.faults) are read per connection and
per command, so they can change while the lab runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import logging
import random
import resource
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, TLSSetupException

from probe.lab.ca import LabCA
from probe.lab.faults import Fault, FaultRegistry, SmartHostFault
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.secret import Secret

log = logging.getLogger(__name__)

MUST_STARTTLS: Final = "530 5.7.0 Must issue a STARTTLS command first"
RELAY_DENIED: Final = "550 5.7.1 relay denied"
AUTH_INVALID: Final = "535 5.7.8 Authentication credentials invalid"
TLS_UNAVAILABLE: Final = "454 4.7.0 TLS not available"
MAX_FORESTS: Final = 239  # second octets 16..254
MAX_SMART_HOSTS_PER_FOREST: Final = 256 * 254
_FIRST_OCTET: Final = 16
_BANNER_STAGES: Final = ("connect", "banner")
_IDENT: Final = "ESMTP mailflow-probe lab"


def smart_host_address(forest_index: int, host_index: int) -> str:
    """Return the loopback address of a forest's smart host (both indexes 0-based)."""
    if not 0 <= forest_index < MAX_FORESTS:
        raise ValueError(f"a lab holds at most {MAX_FORESTS} forests")
    if not 0 <= host_index < MAX_SMART_HOSTS_PER_FOREST:
        raise ValueError(f"a forest holds at most {MAX_SMART_HOSTS_PER_FOREST} smart hosts")
    return f"127.{_FIRST_OCTET + forest_index}.{host_index // 254}.{host_index % 254 + 1}"


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
    """A message accepted at DATA, waiting for its 250 to be sent."""

    raw: bytes
    recipients: tuple[str, ...]
    folder: str
    copies: int
    delay: float | None


def received_header(*, helo: str, peer_ip: str, by: str, protocol: str, queue_id: str,
                    recipients: Sequence[str], tls: str | None, when: datetime) -> bytes:
    """Return a Received header as Postfix writes one (CRLF line ends, folded)."""
    lines = [f"Received: from {helo} (unknown [{peer_ip}])"]
    if tls:
        lines.append(f"\t({tls})")
    lines.append(f"\tby {by} (mailflow-probe lab) with {protocol} id {queue_id}")
    date = email.utils.format_datetime(when)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode()


def _tls_comment(session: Any) -> str | None:
    cipher = (session.ssl or {}).get("cipher")
    if not cipher:
        return None
    name, version, bits = cipher
    return f"using {version} with cipher {name} ({bits}/{bits} bits)"


def _stage_reply(fault: Fault, stage: str) -> str:
    code = fault.code or 554  # parse_fault gives tempfail and reject their default code
    klass = str(code)[0]
    what = "temporary failure" if fault.kind is SmartHostFault.TEMPFAIL else "rejected"
    detail = "4.3.0" if klass == "4" else f"{klass}.7.1" if klass == "5" else f"{klass}.0.0"
    return f"{code} {detail} lab fault: {what} at {stage}"


class SmartHost:
    """The behaviour of one smart host, shared by all its connections (they run on one loop)."""

    def __init__(self, spec: LabSmartHost, *, store: MailboxStore, faults: FaultRegistry, stats: LabStats,
                 certificates: _Certificates, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.store = store
        self.faults = faults
        self.stats = stats
        self.certificates = certificates
        self.loop = loop

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
        return _stage_reply(failing, stage)

    # aiosmtpd handler hooks: called with the connection's SMTP instance as ``server``.

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        """Drop STARTTLS from the EHLO reply while ``no_starttls`` is in force."""
        session.host_name = hostname
        if self.fault(SmartHostFault.NO_STARTTLS):
            return [r for r in responses if r != "250-STARTTLS"]
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        """Accept only recipients of this forest's domain that have a mailbox."""
        if address.rpartition("@")[2].lower() != self.spec.domain:
            self.count("rejected")
            return RELAY_DENIED
        if not self.store.has_mailbox(address):
            self.count("rejected")
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Take the message: stamp a Received header and leave it for delivery after the 250."""
        failure = await self.stage_fault("data")
        if failure is not None:
            return failure
        queue_id = secrets.token_hex(5).upper()
        recipients = tuple(envelope.rcpt_tos)
        header = received_header(
            helo=session.host_name or "unknown", peer_ip=str(session.peer[0]), by=self.spec.fqdn,
            protocol=_protocol_name(session), queue_id=queue_id, recipients=recipients,
            tls=_tls_comment(session), when=datetime.now(UTC),
        )
        delay = self.fault(SmartHostFault.DELAY_DELIVERY)
        server.pending = _Pending(
            raw=header + bytes(envelope.original_content or b""), recipients=recipients,
            folder="junkemail" if self.fault(SmartHostFault.TO_JUNK) else "inbox",
            copies=0 if self.fault(SmartHostFault.DROP) else 2 if self.fault(SmartHostFault.DUPLICATE) else 1,
            delay=delay.seconds if delay is not None else self.spec.transit_delay(),
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """Answer an unexpected error as a real MTA would, without a traceback to the client."""
        if isinstance(error, TLSSetupException):  # the client gave up on the handshake: its choice
            log.debug("smart host %s: TLS handshake failed: %s", self.spec.name, error.__cause__)
            return "454 4.7.0 TLS handshake failed"
        log.warning("smart host %s: %s: %s", self.spec.name, type(error).__name__, error)
        return "451 4.3.0 Error: internal lab error"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        """Accept only this forest's account, unless ``auth_reject`` is in force."""
        ok = (isinstance(auth_data, LoginPassword) and self.fault(SmartHostFault.AUTH_REJECT) is None
              and auth_data.login.decode(errors="replace") == self.spec.username
              and secrets.compare_digest(auth_data.password, self.spec.password.reveal().encode()))
        self.count("auth_success" if ok else "auth_failures")
        if ok:
            return AuthResult(success=True, handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False, message=AUTH_INVALID)

    def accepted(self, pending: _Pending, accepted_at: float) -> None:
        """Deliver a message whose 250 was sent at ``accepted_at``, as the faults in force say."""
        self.count("accepted")
        if pending.copies == 0:
            self.count("dropped")
        elif pending.delay:
            self.loop.call_later(pending.delay, self._deliver, pending, accepted_at)
        else:
            self._deliver(pending, accepted_at)

    def _deliver(self, pending: _Pending, accepted_at: float) -> None:
        for address in pending.recipients:
            for _ in range(pending.copies):
                try:
                    self.store.deliver(address, pending.raw, folder=pending.folder, accepted_at=accepted_at)
                except KeyError:
                    log.warning("smart host %s: mailbox %s is gone; message lost", self.spec.name, address)
                    continue
                self.count("delivered")


def _protocol_name(session: Any) -> str:
    if not session.extended_smtp:
        return "SMTP"
    return "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")


class LabSMTP(SMTP):
    """One SMTP connection to a lab smart host: aiosmtpd with the lab's rules and faults."""

    def __init__(self, host: SmartHost, live: set[LabSMTP]) -> None:
        super().__init__(
            host, hostname=host.spec.fqdn, ident=_IDENT, tls_context=None, auth_required=True,
            auth_require_tls=True, authenticator=host.authenticate, timeout=120, loop=host.loop,
        )
        self.host = host
        self.pending: _Pending | None = None
        self._live = live
        self._greeted = False
        self._refused = False

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
        """Send a reply; delay or replace the banner as faults say; note the moment of the final 250."""
        text = status if isinstance(status, str) else status.decode()
        close = False
        if not self._greeted:
            self._greeted = True
            text, close = await self._banner(text)
        pending, self.pending = self.pending, None
        if pending is None or not text.startswith("250"):
            await super().push(text)
        else:
            self._writer.write(text.encode("ascii") + b"\r\n")
            self.host.accepted(pending, time.time())
            await self._writer.drain()
        if close and self.transport is not None:
            self.transport.close()

    async def _banner(self, text: str) -> tuple[str, bool]:
        for stage in _BANNER_STAGES:
            failure = await self.host.stage_fault(stage)
            if failure is not None:
                return failure, True
        return text, False

    async def _refused_at(self, stage: str) -> bool:
        failure = await self.host.stage_fault(stage)
        if failure is not None:
            await self.push(failure)
        return failure is not None

    async def _needs_tls(self) -> bool:
        if self._tls_protocol is None:
            await self.push(MUST_STARTTLS)
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
            await self.push("554 5.5.1 Error: TLS already active")
            return
        if self.host.fault(SmartHostFault.NO_STARTTLS):
            await self.push(TLS_UNAVAILABLE)
            return
        self.host.count("starttls")
        if await self._refused_at("starttls"):
            return
        self.tls_context = self.host.certificates.context(self.host.faults)
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802
        """AUTH, counted whatever happens next, refused before STARTTLS."""
        self.host.count("auth_attempts")
        if await self._needs_tls() or await self._refused_at("auth"):
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
        """DATA, refused before STARTTLS (its stage faults apply to the final reply)."""
        if await self._needs_tls():
            return
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
                 untrusted_dir: Path) -> None:
        self._ca = ca
        self._store = store
        self._faults = faults
        self._stats = stats
        self._untrusted_dir = untrusted_dir
        self._untrusted: LabCA | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lab-smarthosts", daemon=True)
        self._servers: list[asyncio.AbstractServer] = []
        self._live: set[LabSMTP] = set()
        self._started = False

    def start(self) -> None:
        """Start the event loop thread."""
        self._thread.start()
        self._started = True

    def add(self, specs: Sequence[LabSmartHost], *, timeout: float = 60.0) -> list[LabSmartHost]:
        """Start listening for each smart host; return them with their bound ports."""
        _raise_fd_limit(len(self._servers) + len(specs))
        future = asyncio.run_coroutine_threadsafe(self._bind_all(specs), self._loop)
        return future.result(timeout=timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Close every listener and connection and end the loop thread."""
        if not self._started:
            self._loop.close()
            return
        self._started = False
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

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
                         certificates=certificates, loop=self._loop)
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
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
