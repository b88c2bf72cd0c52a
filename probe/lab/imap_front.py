"""The lab's IMAP front: per forest, TLS listeners (IMAPS, and IMAP with STARTTLS) relaying to the lab's Dovecot.

It stands where a load balancer or Exchange's IMAP4 front end would: it terminates TLS with the forest's
certificate from the lab CA, and relays the IMAP conversation to Dovecot (probe.lab.dovecot) unchanged,
except where a fault of target ``imap/FOREST`` says otherwise (read for each command, so faults can change
while a session runs):

- ``unreachable``: connections are dropped at once, and a session's next command drops it;
- ``slow`` (seconds): each command waits that long before it is relayed;
- ``unauthorized``: AUTHENTICATE and LOGIN get ``NO [AUTHENTICATIONFAILED]``; a logged-in session is
  ended with ``BYE`` at its next command (as after an account is disabled and its sessions kicked);
- ``server_error``: commands get ``NO [SERVERBUG]`` (authentication: ``NO [UNAVAILABLE]``), as Dovecot
  words an internal error;
- ``server_busy``: commands after login get ``NO [LIMIT]`` (RFC 5530: the server's limit was reached);
- ``clock_offset`` (seconds): every INTERNALDATE the server sends is moved by that much, as if Dovecot's
  clock were off (a real clock change is not used: Dovecot stops when its clock moves back by seconds).

Before STARTTLS the front itself answers: its capabilities say STARTTLS and LOGINDISABLED and no AUTH=,
and a LOGIN or AUTHENTICATE in the clear is refused (``NO [PRIVACYREQUIRED]``) and counted
(``login_before_tls``), so tests can show the probe never sends credentials before TLS. Counts per command
go to the lab's stats (``GET /stats``, key ``imap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from probe.lab.faults import Fault, FaultRegistry, MailboxFault
from probe.lab.stats import LabStats

log = logging.getLogger(__name__)

_LIMIT: Final = 1 << 20  # the longest line either side may send
_LITERAL: Final = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")
_INTERNALDATE: Final = re.compile(rb'INTERNALDATE "([^"]+)"')
_GREETING_CAPS: Final = re.compile(rb"\[CAPABILITY ([^\]]*)\]")
_DATE_FORMAT: Final = "%d-%b-%Y %H:%M:%S %z"
_AUTH_COMMANDS: Final = frozenset({b"LOGIN", b"AUTHENTICATE"})
_FREE_COMMANDS: Final = frozenset({b"CAPABILITY", b"LOGOUT", b"NOOP", b"ID"})
_SERVERBUG: Final = b"NO [SERVERBUG] Internal error occurred. Refer to server log for more information."


class _Closed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The session is over (dropped by a fault, or ended by either side)."""


def shift_internaldate(line: bytes, seconds: float) -> bytes:
    """Return a response line with every INTERNALDATE moved by ``seconds`` (its zone kept)."""
    def moved(match: re.Match[bytes]) -> bytes:
        try:
            stamp = datetime.strptime(match[1].decode().strip(), _DATE_FORMAT)
        except ValueError:
            return match[0]
        shifted = stamp + timedelta(seconds=round(seconds))
        return b'INTERNALDATE "' + shifted.strftime(_DATE_FORMAT).rjust(26).encode() + b'"'
    return _INTERNALDATE.sub(moved, line)


def _words(line: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (tag, COMMAND, the rest) of a command line; ``UID FETCH`` is the command ``FETCH``."""
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    tag = parts[0] if parts else b""
    command = parts[1].upper() if len(parts) > 1 else b""
    rest = parts[2] if len(parts) > 2 else b""
    if command == b"UID" and rest:
        command = rest.split(b" ", 1)[0].upper()
    return tag, command, rest


class _Session:
    """One client's connection through the front to Dovecot."""

    def __init__(self, front: ImapFront, forest: str, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], *, tls: bool) -> None:
        self.front = front
        self.forest = forest
        self.reader, self.writer = client
        self.up_reader, self.up_writer = upstream
        self.tls = tls
        self.authenticated = False
        self.passthrough: bytes | None = None  # the tag of an IDLE or AUTHENTICATE whose lines are relayed raw
        self.auth_tags: set[bytes] = set()
        self.capabilities: list[bytes] = []
        self.lock = asyncio.Lock()

    def fault(self, kind: MailboxFault) -> Fault | None:
        return self.front.faults.find(f"imap/{self.forest}", kind)

    async def reply(self, data: bytes) -> None:
        async with self.lock:
            self.writer.write(data)
            await self.writer.drain()

    async def greet(self) -> None:
        """Relay Dovecot's greeting; before TLS, with the front's own capabilities."""
        line = await self.up_reader.readline()
        if not line:
            raise _Closed
        found = _GREETING_CAPS.search(line)
        self.capabilities = found[1].split() if found else []
        if not self.tls:
            line = _GREETING_CAPS.sub(b"[CAPABILITY " + self._plain_capabilities() + b"]", line)
        await self.reply(self.front.hide(line))

    def _plain_capabilities(self) -> bytes:
        kept = [c for c in self.capabilities if not c.upper().startswith(b"AUTH=")]
        return b" ".join([*kept, b"STARTTLS", b"LOGINDISABLED"])

    # -- client to server --------------------------------------------------------------------------

    async def client_to_server(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                return
            if self.passthrough is not None:
                await self._forward(line)
                continue
            tag, command, _rest = _words(line)
            self.front.stats.count_imap(self.forest, command.decode(errors="replace") or "?")
            if not self.tls:
                await self._before_tls(tag, command, line)
                continue
            if await self._refused(tag, command):
                await self._skip_literals(line)
                continue
            if command in (b"IDLE", b"AUTHENTICATE"):
                self.passthrough = tag
            if command in _AUTH_COMMANDS:
                self.auth_tags.add(tag)
            await self._forward_with_literals(line)

    async def _forward(self, data: bytes) -> None:
        self.up_writer.write(data)
        await self.up_writer.drain()

    async def _forward_with_literals(self, line: bytes) -> None:
        await self._forward(line)
        while (match := _LITERAL.search(line)) is not None:
            await self._forward(await self.reader.readexactly(int(match[1])))
            line = await self.reader.readline()
            await self._forward(line)

    async def _skip_literals(self, line: bytes) -> None:
        """Read past the literals of a refused command that the client sends unasked (LITERAL+)."""
        while (match := _LITERAL.search(line)) is not None and match[2] == b"+":
            await self.reader.readexactly(int(match[1]))
            line = await self.reader.readline()

    async def _before_tls(self, tag: bytes, command: bytes, line: bytes) -> None:
        if command == b"STARTTLS":
            await self.reply(tag + b" OK Begin TLS negotiation now.\r\n")
            await self.writer.start_tls(self.front.context(self.forest))
            self.tls = True
        elif command == b"CAPABILITY":
            await self.reply(b"* CAPABILITY " + self._plain_capabilities() + b"\r\n"
                             + tag + b" OK Capability completed.\r\n")
        elif command in _AUTH_COMMANDS:
            self.front.stats.count_imap(self.forest, "login_before_tls")
            await self.reply(tag + b" NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS)"
                             b" connections.\r\n")
        elif command == b"LOGOUT":
            await self.reply(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
            raise _Closed
        elif command == b"NOOP":
            await self.reply(tag + b" OK NOOP completed.\r\n")
        else:
            await self.reply(tag + b" BAD Issue STARTTLS first.\r\n")

    async def _refused(self, tag: bytes, command: bytes) -> bool:
        """Apply the faults in force to one command; say whether it was answered here instead of relayed."""
        if self.fault(MailboxFault.UNREACHABLE) is not None:
            raise _Closed
        slow = self.fault(MailboxFault.SLOW)
        if slow is not None and command != b"LOGOUT":
            await asyncio.sleep(slow.seconds or 0.0)
        if command in _FREE_COMMANDS:
            return False
        answer = self._fault_answer(command)
        if answer is None:
            return False
        if answer.startswith(b"* BYE"):
            await self.reply(answer)
            raise _Closed
        await self.reply(tag + b" " + answer + b"\r\n")
        return True

    def _fault_answer(self, command: bytes) -> bytes | None:
        auth = command in _AUTH_COMMANDS
        if self.fault(MailboxFault.UNAUTHORIZED) is not None:
            if auth:
                return b"NO [AUTHENTICATIONFAILED] Authentication failed."
            if self.authenticated:
                return b"* BYE Disconnected: the account's credentials are no longer valid\r\n"
        if self.fault(MailboxFault.SERVER_ERROR) is not None:
            return b"NO [UNAVAILABLE] Internal error occurred." if auth else _SERVERBUG
        busy = self.fault(MailboxFault.SERVER_BUSY)
        if busy is not None and not auth:
            return b"NO [LIMIT] Too many requests; try again in %d ms" % (busy.back_off_ms or 0)
        return None

    # -- server to client --------------------------------------------------------------------------

    async def server_to_client(self) -> None:
        while True:
            parts = await self._read_response()
            if parts is None:
                return
            tag = parts[0].split(b" ", 2)
            if len(tag) > 1 and tag[0] != b"*" and tag[0] != b"+":
                if tag[0] == self.passthrough:
                    self.passthrough = None
                if tag[0] in self.auth_tags:
                    self.auth_tags.discard(tag[0])
                    self.authenticated = tag[1].upper() == b"OK"
            if self.front.hidden and b"CAPABILITY" in parts[0]:
                parts[0] = self.front.hide(parts[0])
            offset = self.fault(MailboxFault.CLOCK_OFFSET)
            if offset is not None and offset.seconds:
                parts = [p if i % 2 else shift_internaldate(p, offset.seconds) for i, p in enumerate(parts)]
            await self.reply(b"".join(parts))

    async def _read_response(self) -> list[bytes] | None:
        """Read one response: a line and the literals it announces (line, literal, line, ...)."""
        parts: list[bytes] = []
        while True:
            line = await self.up_reader.readline()
            if not line:
                return None
            parts.append(line)
            match = _LITERAL.search(line)
            if match is None:
                return parts
            parts.append(await self.up_reader.readexactly(int(match[1])))


class ImapFront:
    """Every forest's IMAP listeners, on one event loop in one background thread."""

    def __init__(self, *, upstream: tuple[str, int], faults: FaultRegistry, stats: LabStats,
                 contexts: Callable[[str], ssl.SSLContext], host: str = "127.0.0.1",
                 hidden: frozenset[bytes] = frozenset()) -> None:
        self.upstream = upstream
        self.hidden = hidden  # capabilities the front keeps from clients (tests: a server without IDLE)
        self.faults = faults
        self.stats = stats
        self.context = contexts
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab-imap", daemon=True)
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the event loop thread."""
        self._thread.start()

    def hide(self, line: bytes) -> bytes:
        """Return a response line without the hidden capabilities."""
        for name in self.hidden:
            line = re.sub(rb" " + re.escape(name) + rb"(?=[ \]\r\n])", b"", line, flags=re.IGNORECASE)
        return line

    def add_forest(self, forest: str, *, implicit_port: int = 0, starttls_port: int = 0) -> tuple[int, int]:
        """Listen for one forest; return its (IMAPS, STARTTLS) ports."""
        future = asyncio.run_coroutine_threadsafe(self._listen(forest, implicit_port, starttls_port), self._loop)
        return future.result(timeout=30)

    async def _listen(self, forest: str, implicit_port: int, starttls_port: int) -> tuple[int, int]:
        ports = []
        for port, implicit in ((implicit_port, True), (starttls_port, False)):
            server = await asyncio.start_server(
                lambda r, w, i=implicit: self._serve(forest, r, w, implicit=i),  # type: ignore[misc]
                self.host, port, limit=_LIMIT)
            self._servers.append(server)
            ports.append(int(server.sockets[0].getsockname()[1]))
        return ports[0], ports[1]

    async def _serve(self, forest: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                     implicit: bool) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self.faults.find(f"imap/{forest}", MailboxFault.UNREACHABLE) is not None:
                return
            self.stats.count_imap(forest, "connections")
            if implicit:
                await writer.start_tls(self.context(forest), ssl_handshake_timeout=10)
            upstream = await asyncio.open_connection(*self.upstream, limit=_LIMIT)
            session = _Session(self, forest, (reader, writer), upstream, tls=implicit)
            await session.greet()
            await _first_done(session.client_to_server(), session.server_to_client())
        except (_Closed, OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            log.debug("lab IMAP %s: session ended: %r", forest, exc)
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.transport.abort()
            if task is not None:
                self._sessions.discard(task)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every listener and session and end the loop thread."""
        if not self._thread.is_alive():
            self._loop.close()
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    async def _close_all(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)


async def _first_done(*coroutines: object) -> None:
    """Run both pumps until either ends (or fails); cancel the other; raise what the first raised, if anything."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]  # type: ignore[call-overload]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
