"""Each forest's client submission port (587-style): STARTTLS, then AUTH as the sender, into its transport.

As an Exchange client frontend does: nothing but EHLO, STARTTLS and QUIT before TLS; AUTH (PLAIN or LOGIN)
as a user of the forest, with the forest's account password (the one EWS takes); MAIL FROM only as the
authenticated user's own address (the forest's service account may send as any mailbox of it), else
``550 5.7.60``; any recipient (routing happens in the transport). The message gets the submission hop's
Received header and goes into the forest's queue (probe.lab.transport). Every forest's port is served from
one event loop in one background thread, each on its forest's own loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from probe.lab.stats import LabStats
from probe.lab.transport import SourceTransport
from probe.secret import Secret

SEND_AS_DENIED: Final = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
AUTH_INVALID: Final = "535 5.7.3 Authentication unsuccessful"
_IDENT: Final = "Microsoft ESMTP MAIL Service ready"


@dataclass(frozen=True, kw_only=True)
class SubmissionPort:
    """Where one forest takes client submissions, and who may submit."""

    transport: SourceTransport
    host: str
    port: int
    tls: ssl.SSLContext
    mailboxes: frozenset[str]  # the forest's mailbox addresses (lowercase): each may send as itself
    services: frozenset[str]  # the forest's service account names: may send as any of its mailboxes
    password: Secret


class _Handler:
    """The aiosmtpd handler of one forest's submission port."""

    def __init__(self, spec: SubmissionPort, stats: LabStats) -> None:
        self.spec, self.stats = spec, stats

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        """Accept the forest's users with the forest's password."""
        spec = self.spec
        login = auth_data.login.decode(errors="replace").lower() if isinstance(auth_data, LoginPassword) else ""
        ok = (login in spec.mailboxes or login in spec.services) and secrets.compare_digest(
            auth_data.password, spec.password.reveal().encode())
        self.stats.count_transport(spec.transport.forest, "submission_auth" if ok else "submission_auth_failures")
        if ok:
            return AuthResult(success=True, handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False, message=AUTH_INVALID)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        """Let a user send as itself only (a service account as any mailbox of the forest)."""
        login = session.auth_data.login.decode(errors="replace").lower() if session.auth_data else ""
        sender = address.lower()
        allowed = sender == login or (login in self.spec.services and sender in self.spec.mailboxes)
        if not allowed:
            return SEND_AS_DENIED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        """Take any recipient: the transport routes it (or owes the sender an NDR)."""
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Queue the message with the submission hop's Received header."""
        transport = self.spec.transport
        received = transport.received_from(client=session.host_name or "unknown", client_ip=str(session.peer[0]),
                                           via="Frontend Transport")
        raw = bytes(envelope.original_content or b"")
        queue_id = transport.submit(sender=str(envelope.mail_from), recipients=list(envelope.rcpt_tos), raw=raw,
                                    received=received)
        transport.stats.count_transport(transport.forest, "submitted_smtp")
        return f"250 2.6.0 [InternalId={int(queue_id, 16)}, Hostname={transport.fqdn}] Queued mail for delivery"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        """Remember the client's name for the Received header."""
        session.host_name = hostname
        return responses


class SubmissionServers:
    """Every forest's submission port, served from one event loop in one background thread."""

    def __init__(self, *, stats: LabStats) -> None:
        self._stats = stats
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lab-submission", daemon=True)
        self._servers: list[asyncio.AbstractServer] = []
        self._started = False

    def start(self, specs: Sequence[SubmissionPort], *, timeout: float = 30.0) -> list[int]:
        """Listen for each forest; return the bound ports in order."""
        self._thread.start()
        self._started = True
        return asyncio.run_coroutine_threadsafe(self._bind_all(specs), self._loop).result(timeout=timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Close every listener and end the loop thread."""
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

    async def _bind_all(self, specs: Sequence[SubmissionPort]) -> list[int]:
        return [await self._bind(spec) for spec in specs]

    async def _bind(self, spec: SubmissionPort) -> int:
        handler = _Handler(spec, self._stats)

        def factory() -> SMTP:
            return SMTP(handler, hostname=spec.transport.fqdn, ident=_IDENT, tls_context=spec.tls,
                        require_starttls=True, auth_required=True, auth_require_tls=True,
                        authenticator=handler.authenticate, timeout=120, loop=self._loop)

        server = await self._loop.create_server(factory, spec.host, spec.port, reuse_address=True)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _close_all(self) -> None:
        for server in self._servers:
            server.close()
        await asyncio.gather(*(s.wait_closed() for s in self._servers), return_exceptions=True)
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
