"""The web listener's connections: asyncio for the sockets, h11 for HTTP/1.1, threads for the work.

Why not ``http.server``: its thread per connection waits on each read with a timeout but has no deadline
for a whole request head, so about 1,100 clients sending a header byte every 10 s held every file
descriptor of the daemon (issue 13). Here an idle or slow client costs a descriptor and a few objects:

- at most ``max_connections`` clients at once (Prometheus' ``--web.max-connections``, 512). When a new
  client comes while all are taken, the one that has waited longest for its request head goes (nobody in
  the middle of a request is cut), so a scraper that sends its request at once is always let in;
- a deadline for the whole request head (TLS handshake included): ``head_seconds`` from the connection
  (or, between keep-alive requests, from the request's first byte);
- basic auth is checked as soon as the head is in, before any body is read, from a cache of verified
  credentials; bcrypt checks run one at a time on their own thread (as exporter-toolkit's mutex does), so
  wrong passwords cost at most one CPU and never hold up a cached one;
- the handler runs on a small pool of threads; the body goes out in batches, each write under a deadline.

Failures of the host itself (no descriptor to accept with, no thread) go to ``on_local_fault``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import h11

from probe.local_faults import local_fault
from probe.vocabulary import LocalResource

log = logging.getLogger("probe.web")

MAX_CONNECTIONS: Final = 512  # Prometheus' --web.max-connections default
HEAD_SECONDS: Final = 10.0
BODY_SECONDS: Final = 30.0
IDLE_SECONDS: Final = 60.0  # a keep-alive connection waits this long for its next request
WRITE_SECONDS: Final = 30.0  # each batch of a response must be taken within this
MAX_BODY: Final = 64 * 1024
MAX_HEAD: Final = 16 * 1024
WRITE_BATCH: Final = 256 * 1024
WORKERS: Final = 4
# Connections taken from the kernel per wake-up: each is a descriptor before an older client is let go, so
# the descriptors in use can reach max_connections + ACCEPT_BATCH for a moment (bench/slow_clients.py: with
# asyncio's default of the whole backlog, 512 at a time, a daemon limited to 1,024 ran out 84,001 times in 3 min).
ACCEPT_BATCH: Final = 32
LISTEN_BACKLOG: Final = 4096  # the kernel's queue of connections not yet accepted (capped by net.core.somaxconn)
_READ: Final = 64 * 1024
_HEAD_READ: Final = 4 * 1024


@dataclass(frozen=True, kw_only=True)
class Request:
    """One request, its head and body read whole."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    client: str = ""
    tls: bool = False

    def header(self, name: str) -> str | None:
        """Return a header's value (``name`` in lower case), or None."""
        return self.headers.get(name)


@dataclass(kw_only=True)
class Response:
    """What to answer: status, body in pieces, content type and more headers."""

    status: int
    body: list[bytes]
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


class Gatekeeper(Protocol):
    """Basic auth for the listener (probe.webconfig.WebConfig)."""

    def cached_verdict(self, header: str | None) -> bool | None:
        """Return whether an ``Authorization`` header is let in, from the cache; None when not known yet."""
        ...

    def verify(self, header: str | None) -> bool:
        """Check an ``Authorization`` header (bcrypt: slow) and cache the outcome."""
        ...


Handler = Callable[[Request], Response]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """How much the listener lets clients hold, and for how long."""

    max_connections: int = MAX_CONNECTIONS
    head_seconds: float = HEAD_SECONDS
    body_seconds: float = BODY_SECONDS
    idle_seconds: float = IDLE_SECONDS
    write_seconds: float = WRITE_SECONDS
    max_body: int = MAX_BODY


def cross_origin_refusal(header: Callable[[str], str | None]) -> str | None:
    """Return why a state-changing request looks cross-origin (a browser sent it for another site), or None.

    ``header`` returns a request header by lower-case name. The rule of Go's net/http CrossOriginProtection:
    ``Sec-Fetch-Site`` other than same-origin or none is refused; without it, an ``Origin`` whose host is not
    the request's ``Host`` is. Requests with neither header (curl, promtool, scripts) are not a browser's.
    """
    site = header("sec-fetch-site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site is {site}"
    origin = header("origin")
    if origin is None:
        return None
    if origin == "null" or urlsplit(origin).netloc.lower() != (header("host") or "").lower():
        return f"Origin {origin} is not this listener"
    return None


def text_response(status: int, text: str, **headers: str) -> Response:
    """Return a plain-text response."""
    return Response(status=status, body=[text.encode("utf-8")], headers=dict(headers))


def batches(parts: list[bytes], size: int = WRITE_BATCH) -> Iterator[bytes]:
    """Join ``parts`` into pieces of about ``size`` bytes: few system calls, no copy of the whole body."""
    batch: list[bytes] = []
    held = 0
    for part in parts:
        batch.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(batch)
            batch, held = [], 0
    if batch:
        yield b"".join(batch)


class _RefusedError(Exception):
    """A request answered with an error and the connection closed."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


@dataclass(eq=False)
class _Client:
    """One connection: its streams, its HTTP state, and since when it waits for a request head."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    task: asyncio.Task[None] | None = None
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD))

    def abort(self) -> None:
        """Drop the connection now (no goodbye)."""
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class HttpServer:
    """The listener's event loop, in a thread of its own; ``start()`` begins, ``close()`` ends it."""

    def __init__(self, sock: socket.socket, *, handler: Handler, gate: Gatekeeper | None = None,
                 tls: ssl.SSLContext | None = None, limits: Limits | None = None,
                 on_local_fault: Callable[[LocalResource, str], None] | None = None) -> None:
        self._sock, self._handler, self._gate, self._tls = sock, handler, gate, tls
        self.limits = limits or Limits()
        self._on_local_fault = on_local_fault or (lambda _r, _w: None)
        self._clients: dict[_Client, None] = {}  # in order of arrival
        self._waiting: dict[_Client, None] = {}  # those waiting for a request head, longest waiting first
        self.evicted = 0
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="probe-web")
        self._bcrypt = ThreadPoolExecutor(1, thread_name_prefix="probe-web-auth")
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="probe-web", daemon=True)
        self._started = threading.Event()

    @property
    def connections(self) -> int:
        """Return how many clients are connected now."""
        return len(self._clients)

    def start(self) -> None:
        """Serve in the background; return once the listener accepts."""
        self._thread.start()
        self._started.wait(10)

    def close(self) -> None:
        """Stop accepting, drop every client, stop the loop and its threads."""
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                future.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._bcrypt.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve_client, sock=self._sock, backlog=ACCEPT_BATCH, limit=_READ))
        # asyncio listens with its backlog and accepts that many at a time; the kernel's queue is made long
        # again so a scraper's connection waits in it behind slow clients instead of being dropped (and
        # retried a second later).
        self._sock.listen(LISTEN_BACKLOG)
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.abort()
            if client.task is not None:
                client.task.cancel()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Route asyncio's own complaints (accept failures above all) to the log, or to the local-fault count."""
        exc = context.get("exception")
        resource = local_fault(exc) if isinstance(exc, BaseException) else None
        if resource is not None:
            self._on_local_fault(resource, "accepting a web client")
            return
        log.debug("web listener: %s", context.get("message", "error"),
                  extra={"err": None if exc is None else f"{type(exc).__name__}: {exc}"})

    # -- one client ------------------------------------------------------------------------------------

    def _admit(self, client: _Client) -> bool:
        """Make room for ``client``: drop the one waiting longest for a request head; False when none is."""
        if len(self._clients) < self.limits.max_connections:
            return True
        oldest = next(iter(self._waiting), None)
        if oldest is None:
            return False
        oldest.abort()
        if oldest.task is not None:
            oldest.task.cancel()
        self._clients.pop(oldest, None)
        self._waiting.pop(oldest, None)
        self.evicted += 1
        return True

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = _Client(reader, writer, str(peer[0]) if isinstance(peer, tuple) else "")
        if not self._admit(client):
            log.debug("web client refused: every connection is busy", extra={"client": client.peer})
            client.abort()
            return
        client.task = asyncio.current_task()
        self._clients[client] = None
        self._waiting[client] = None
        try:
            await self._converse(client)
        except h11.RemoteProtocolError as exc:  # not HTTP/1.1, or a head over MAX_HEAD: say so, then close
            await _refuse_malformed(client, exc)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, h11.ProtocolError, ssl.SSLError) as exc:
            log.debug("web client dropped", extra={"client": client.peer, "err": f"{type(exc).__name__}: {exc}"})
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.pop(client, None)
            self._waiting.pop(client, None)
            client.abort()

    async def _converse(self, client: _Client) -> None:
        """Serve requests on one connection until either side closes it."""
        async with asyncio.timeout(self.limits.head_seconds):
            if self._tls is not None:
                await client.writer.start_tls(self._tls, ssl_handshake_timeout=self.limits.head_seconds)
            request = await self._read_head(client)
        while request is not None:
            self._waiting.pop(client, None)
            keep = await self._answer(client, request)
            if not keep:
                return
            client.http.start_next_cycle()
            self._waiting[client] = None  # at the end: the newest to wait
            request = await self._next_request(client)

    async def _next_request(self, client: _Client) -> h11.Request | None:
        """Wait up to idle_seconds for the next request's first byte, then head_seconds for its head."""
        async with asyncio.timeout(self.limits.idle_seconds):
            data = await client.reader.read(_READ)
        client.http.receive_data(data)
        async with asyncio.timeout(self.limits.head_seconds):
            return await self._read_head(client)

    async def _read_head(self, client: _Client) -> h11.Request | None:
        """Return the next request head, or None when the client closed the connection."""
        while True:
            event = client.http.next_event()
            if event is h11.NEED_DATA:  # small reads: h11 refuses a buffer over MAX_HEAD that holds no whole head
                client.http.receive_data(await client.reader.read(_HEAD_READ))
                continue
            if isinstance(event, h11.Request):
                return event
            return None  # ConnectionClosed, or the end of a pipelined message

    async def _read_body(self, client: _Client) -> bytes:
        """Return the request's body (at most max_body bytes) once read whole."""
        body = bytearray()
        async with asyncio.timeout(self.limits.body_seconds):
            while True:
                event = client.http.next_event()
                if event is h11.NEED_DATA:
                    client.http.receive_data(await client.reader.read(_READ))
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body:
                        raise _RefusedError(400, "bad or too large request body\n")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:
                    raise _RefusedError(400, "the request ended early\n")

    async def _answer(self, client: _Client, head: h11.Request) -> bool:
        """Answer one request; return whether the connection stays open for another."""
        request = _request(head, client.peer, tls=self._tls is not None)
        try:
            response = await self._respond(client, request)
        except _RefusedError as refused:
            response = text_response(refused.status, refused.text)
            response.close = True
        if client.http.their_state is h11.SEND_BODY:
            response.close = True  # a body left unread (refused before it): no next request on this connection
        await self._write(client, request, response)
        return client.http.our_state is h11.DONE and client.http.their_state is h11.DONE and not response.close

    async def _respond(self, client: _Client, request: Request) -> Response:
        length = request.header("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body):
            raise _RefusedError(400, "bad or too large request body\n")
        if not await self._authorized(request):
            return text_response(401, "Unauthorized\n",
                                 **{"WWW-Authenticate": 'Basic realm="mailflow-probe", charset="UTF-8"'})
        request = Request(method=request.method, target=request.target, headers=request.headers,
                          body=await self._read_body(client), client=request.client, tls=request.tls)
        response: Response = await self._offload(self._workers, self._handler, request, "answering a web request")
        return response

    async def _authorized(self, request: Request) -> bool:
        if self._gate is None:
            return True
        header = request.header("authorization")
        cached = self._gate.cached_verdict(header)
        if cached is not None:
            return cached
        verdict: bool = await self._offload(self._bcrypt, self._gate.verify, header, "checking a password")
        return verdict

    async def _offload(self, pool: ThreadPoolExecutor, func: Callable[[Any], Any], arg: Any, what: str) -> Any:
        try:
            return await self._loop.run_in_executor(pool, func, arg)
        except (RuntimeError, MemoryError, OSError) as exc:
            resource = local_fault(exc)
            if resource is None:
                raise
            self._on_local_fault(resource, what)
            raise _RefusedError(503, "the server is out of resources; try again\n") from None

    async def _write(self, client: _Client, request: Request, response: Response) -> None:
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(sum(len(part) for part in response.body))),
                   ("Date", formatdate(usegmt=True)), *response.headers.items()]
        if response.close:
            headers.append(("Connection", "close"))
        send = client.http.send
        client.writer.write(send(h11.Response(status_code=response.status, headers=headers)) or b"")
        if request.method != "HEAD":
            for batch in batches(response.body):
                client.writer.write(send(h11.Data(data=batch)) or b"")
                await self._drain(client)
        client.writer.write(send(h11.EndOfMessage()) or b"")
        await self._drain(client)

    async def _drain(self, client: _Client) -> None:
        async with asyncio.timeout(self.limits.write_seconds):
            await client.writer.drain()


async def _refuse_malformed(client: _Client, exc: h11.RemoteProtocolError) -> None:
    status = exc.error_status_hint if exc.error_status_hint in (400, 414, 431, 505) else 400
    body = f"bad request: {exc}\n".encode("utf-8", errors="replace")[:512]
    head = (f"HTTP/1.1 {status} Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    log.debug("malformed web request", extra={"client": client.peer, "err": str(exc)})
    with contextlib.suppress(OSError, TimeoutError):
        client.writer.write(head + body)
        async with asyncio.timeout(1.0):
            await client.writer.drain()


def _request(head: h11.Request, peer: str, *, tls: bool) -> Request:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method=head.method.decode("ascii"), target=head.target.decode("latin-1"), headers=headers,
                   client=peer, tls=tls)
