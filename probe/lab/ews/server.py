"""The lab's EWS endpoint: HTTP/1.1 keep-alive over HTTPS and HTTP, auth, faults, stats and streaming.

As IIS in front of Exchange 2013-2019 does, every request, whatever its method and path, is authenticated
first: without credentials it gets 401 with the Negotiate, NTLM and Basic challenges (an NTLM client may
start its handshake with a GET). Authenticated, a GET of /EWS/Exchange.asmx gets the service's help page;
SOAP goes over POST. Streamed notifications are framed as Exchange frames them (``soap.streaming_envelope``).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from lxml import etree

from probe.lab.ews import soap
from probe.lab.ews.auth import Authenticator, AuthResult, ConnectionAuth, NtlmUserFile
from probe.lab.ews.chunking import Chunking, EnvelopePerChunk
from probe.lab.ews.context import EwsRequest, Outbox
from probe.lab.ews.operations import OPERATIONS, STREAMING_OPERATIONS, is_known, operation_name
from probe.lab.ews.subscriptions import SubscriptionRegistry
from probe.lab.faults import EwsFault, Fault, FaultRegistry
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore, StoredItem

EWS_PATH: Final = "/EWS/Exchange.asmx"
MAX_BODY: Final = 16 * 1024 * 1024
SERVICE_PAGE: Final = (
    b"<html><head><title>Service</title></head><body><h1>Service</h1><p>You have created a service.</p>"
    b"<p>To test this service, you will need to create a client and use it to call the service. You can do "
    b"this using the svcutil.exe tool from the command line with the following syntax:</p>"
    b"<pre>svcutil.exe https://localhost/EWS/Services.wsdl</pre></body></html>"
)
log = logging.getLogger(__name__)

ResponseObserver = Callable[[bytes, str], None]
_observers: list[ResponseObserver] = []
_observers_lock = threading.Lock()


def add_response_observer(callback: ResponseObserver) -> None:
    """Call ``callback(body, operation)`` with every SOAP envelope any lab EWS server sends."""
    with _observers_lock:
        _observers.append(callback)


def remove_response_observer(callback: ResponseObserver) -> None:
    """Stop calling an observer added with add_response_observer."""
    with _observers_lock, contextlib.suppress(ValueError):
        _observers.remove(callback)


def _notify(body: bytes, operation: str) -> None:
    with _observers_lock:
        observers = list(_observers)
    for observer in observers:
        observer(body, operation)


class _Dropped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The connection is closed without a response (the unreachable fault)."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], ews: EwsServer, tls: ssl.SSLContext | None) -> None:
        self.ews = ews
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake TLS in the connection's own thread, then serve it."""
        conn = request
        try:
            if self.ews.fault(EwsFault.UNREACHABLE) is not None:
                return
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                request.settimeout(10)
                conn = self.tls.wrap_socket(request, server_side=True)
            self.ews.track(conn, add=True)
            _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError) as exc:
            log.debug("EWS connection from %s ended: %s", client_address, exc)
        finally:
            self.ews.track(conn, add=False)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    timeout = 300
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.auth_state = ConnectionAuth()
        self.user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("%s %s", self.address_string(), format % args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """Stamp the Date header on the forest's server clock."""
        return email.utils.formatdate(self.server.ews.server_time(), usegmt=True)

    def __getattr__(self, name: str) -> Any:
        """Answer every HTTP method: POST carries EWS; any other is authenticated first, as IIS does."""
        if name.startswith("do_") and name != "do_POST":
            return self._other_method
        raise AttributeError(name)

    def do_POST(self) -> None:
        try:
            self._post()
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _other_method(self) -> None:
        """Answer GET, HEAD and the rest: 401 with the challenges until authenticated, then what IIS serves."""
        self._read_body()
        ews = self.server.ews
        if ews.fault(EwsFault.UNREACHABLE) is not None:
            self.close_connection = True
            return
        if not self._authenticated(ews):
            return
        if self._path() != EWS_PATH.lower():
            self._plain(404, b"")
        elif self.command in ("GET", "HEAD"):
            self._plain(200, SERVICE_PAGE, [("Content-Type", "text/html; charset=UTF-8")],
                        body=self.command == "GET")
        else:
            self._plain(405, b"", [("Allow", "GET, HEAD, POST")])

    def _path(self) -> str:
        return self.path.split("?", 1)[0].lower()

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return b""
        return self.rfile.read(length)

    def _post(self) -> None:
        body = self._read_body()
        ews = self.server.ews
        if ews.fault(EwsFault.UNREACHABLE) is not None:
            raise _Dropped
        slow = ews.fault(EwsFault.SLOW)
        if slow is not None and ews.sleep(slow.seconds or 0.0):
            raise _Dropped
        parsed = _parse(body)
        op_name = parsed[2] if isinstance(parsed, tuple) else "Invalid"
        if not self._authenticated(ews):
            return
        if self._path() != EWS_PATH.lower():
            self._plain(404, b"")
            return
        ews.stats.count_ews(ews.forest, op_name)
        if isinstance(parsed, soap.SoapFault):
            self._fault(parsed, op_name)
            return
        self._answer(ews, parsed, op_name)

    def _authenticated(self, ews: EwsServer) -> bool:
        if ews.fault(EwsFault.UNAUTHORIZED) is not None:
            self._unauthorized(None)
            return False
        result: AuthResult = ews.authenticator.check(self.headers.get("Authorization"), self.auth_state)
        if result.user is None:
            self._unauthorized(result.challenge)
            return False
        self.user = result.user
        return True

    def _answer(self, ews: EwsServer, parsed: tuple[etree._Element | None, etree._Element, str],
                op_name: str) -> None:
        refusal = _refusal(ews, op_name)
        if refusal is not None:
            self._fault(refusal, op_name)
            return
        header, operation, _ = parsed
        request = ews.request(header, operation, anchor=self.headers.get("X-AnchorMailbox"), user=self.user,
                              host=self.headers.get("Host", ""))
        if op_name in STREAMING_OPERATIONS:
            self._answer_stream(request, op_name)
        else:
            self._answer_once(request, op_name)

    def _answer_stream(self, request: EwsRequest, op_name: str) -> None:
        try:
            bodies = STREAMING_OPERATIONS[op_name](request)
        except soap.SoapFault as fault:
            self._fault(fault, op_name)
            return
        self._stream(bodies, op_name)

    def _answer_once(self, request: EwsRequest, op_name: str) -> None:
        try:
            payload = soap.envelope(OPERATIONS[op_name](request))
        except soap.SoapFault as fault:
            self._fault(fault, op_name)
            return
        except Exception:
            log.exception("EWS %s failed", op_name)
            self._fault(soap.SoapFault("ErrorInternalServerError", "An internal server error occurred."), op_name)
            return
        self._soap(200, payload, op_name)

    def _soap(self, status: int, payload: bytes, op_name: str) -> None:
        _notify(payload, op_name)
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _fault(self, fault: soap.SoapFault, op_name: str) -> None:
        self._soap(fault.http_status, soap.fault_envelope(fault), op_name)

    def _plain(self, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None, *,
               body: bool = True) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _unauthorized(self, challenge: str | None) -> None:
        if challenge is not None:
            self._plain(401, b"", [("WWW-Authenticate", challenge)])
            return
        realm = self.server.ews.host
        self._plain(401, b"", [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM"),
                               ("WWW-Authenticate", f'Basic realm="{realm}"')])

    def _stream(self, bodies: Iterator[etree._Element], op_name: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunking = self.server.ews.stream_chunking()
        try:
            for body in bodies:
                payload = soap.streaming_envelope(body)
                _notify(payload, op_name)
                self._write_chunks(chunking.cut(payload), chunking.pause)
            self._write_chunks(chunking.rest(), 0.0)
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, ValueError):
            self.close_connection = True
        finally:
            close = getattr(bodies, "close", None)
            if close is not None:
                close()


    def _write_chunks(self, chunks: list[bytes], pause: float) -> None:
        for n, chunk in enumerate(chunks):
            if n and pause:
                time.sleep(pause)
            self.wfile.write(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()


def _refusal(ews: EwsServer, op_name: str) -> soap.SoapFault | None:
    """Return the fault a busy or broken endpoint answers with, or the one for an operation the lab lacks."""
    busy, broken = ews.fault(EwsFault.SERVER_BUSY), ews.fault(EwsFault.SERVER_ERROR)
    if busy is not None:
        return soap.SoapFault("ErrorServerBusy", "The server cannot service this request right now. Try again later.",
                              back_off_ms=busy.back_off_ms or 1000)
    if broken is not None:
        return soap.SoapFault("ErrorInternalServerError", "An internal server error occurred. The operation failed.")
    if not is_known(op_name):
        return soap.SoapFault("ErrorInvalidRequest", f"The request is invalid: the lab does not implement {op_name}.")
    return None


def _parse(body: bytes) -> tuple[etree._Element | None, etree._Element, str] | soap.SoapFault:
    try:
        header, operation = soap.parse_envelope(body)
        return header, operation, operation_name(operation)
    except soap.SoapFault as fault:
        return fault


class EwsServer:
    """One forest's EWS endpoint at /EWS/Exchange.asmx, over HTTPS (with ssl_context) and plain HTTP."""

    def __init__(self, forest: str, *, store: MailboxStore, faults: FaultRegistry, stats: LabStats,
                 users: dict[str, str], host: str, https_port: int = 0, http_port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.forest = forest
        self.store = store
        self.faults = faults
        self.stats = stats
        self.users = dict(users)
        self.host = host
        self.authenticator = Authenticator(users)
        self.subscriptions = SubscriptionRegistry(forest)
        self.stream_chunking: Callable[[], Chunking] = EnvelopePerChunk  # tests may cut streams otherwise
        self.outbox: Outbox | None = None  # the forest's transport, for CreateItem's sends (set by the lab)
        self._ports = (https_port, http_port)
        self._ssl_context = ssl_context
        self._servers: list[_HttpServer] = []
        self._threads: list[threading.Thread] = []
        self._connections: set[Any] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.https_url: str | None = None
        self.http_url: str | None = None

    @property
    def target(self) -> str:
        """Return the fault target of this endpoint."""
        return f"ews/{self.forest}"

    def start(self) -> None:
        """Listen on the HTTPS (when an SSL context is given) and HTTP ports and serve in threads."""
        self.store.add_listener(self._on_new_item)
        NtlmUserFile.register(id(self), self.users)
        https_port, http_port = self._ports
        if self._ssl_context is not None:
            self.https_url = self._listen(https_port, self._ssl_context, "https")
        self.http_url = self._listen(http_port, None, "http")

    def _listen(self, port: int, tls: ssl.SSLContext | None, scheme: str) -> str:
        server = _HttpServer((self.host, port), self, tls)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"ews-{self.forest}-{scheme}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{server.server_address[1]}{EWS_PATH}"

    def stop(self) -> None:
        """Stop listening, end open streams and connections."""
        self._stopped.set()
        self.subscriptions.stop()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        NtlmUserFile.unregister(id(self))

    def __enter__(self) -> EwsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, conn: Any, *, add: bool) -> None:
        """Remember (or forget) an open connection, so stop() can close it."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def fault(self, kind: EwsFault) -> Fault | None:
        """Return the fault of this kind in force on this endpoint, if any."""
        return self.faults.find(self.target, kind)

    def sleep(self, seconds: float) -> bool:
        """Sleep (the slow fault); True when the server stopped meanwhile."""
        return self._stopped.wait(seconds)

    def server_time(self) -> float:
        """Return the forest's server clock: true time plus any clock_offset fault."""
        offset = self.fault(EwsFault.CLOCK_OFFSET)
        return time.time() + ((offset.seconds or 0.0) if offset is not None else 0.0)

    def request(self, header: etree._Element | None, operation: etree._Element, *, anchor: str | None,
                user: str | None, host: str = "") -> EwsRequest:
        """Build the handler's view of one request."""
        return EwsRequest(store=self.store, forest=self.forest, operation=operation, header=header,
                          milliseconds=soap.wants_milliseconds(header),
                          default_mailbox=self._default_mailbox(anchor, user), subscriptions=self.subscriptions,
                          owa_url=f"https://{host or self.host}/owa/", outbox=self.outbox)

    def _default_mailbox(self, anchor: str | None, user: str | None) -> str:
        for candidate in (anchor, user):
            if candidate and self.store.has_mailbox(candidate) and self.store.forest_of(candidate) == self.forest:
                return candidate.lower()
        addresses = self.store.addresses(self.forest)
        return addresses[0] if addresses else ""

    def _on_new_item(self, item: StoredItem) -> None:
        if not self._stopped.is_set() and self.store.forest_of(item.mailbox) == self.forest:
            self.subscriptions.on_new_item(item, unread=self.store.counts(item.mailbox, item.folder)[1])
