"""The daemon's HTTP listener: /metrics, /-/healthy, /-/ready, /-/reload, the status page and the debug view.

Standard library only (``ThreadingHTTPServer`` in a thread). It reads the daemon through ``StatusSource``
callbacks and never imports it. TLS and basic auth come from an exporter-toolkit web config
(probe.webconfig).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

from probe.config import Config
from probe.secret import redact
from probe.web_pages import debug_page, find_pair, status_page
from probe.webconfig import WebConfig

log = logging.getLogger("probe.web")

HANDSHAKE_TIMEOUT: Final = 10.0
REQUEST_TIMEOUT: Final = 30.0
MAX_BODY: Final = 64 * 1024
WRITE_BATCH: Final = 256 * 1024  # bytes per write of a large body
_HTML: Final = "text/html; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
_GET_PATHS: Final = frozenset({"/", "/metrics", "/-/healthy", "/-/ready", "/debug"})


class StatusSource(Protocol):
    """What the listener asks the daemon."""

    def config(self) -> Config:
        """Return the configuration in force."""
        ...

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the latest decided probes of a pair, newest first (probe.ledger.Ledger.history rows)."""
        ...

    def ready(self) -> bool:
        """Return whether the daemon is probing."""
        ...

    def reload(self) -> tuple[bool, str]:
        """Reload the configuration; return whether it worked and what to tell the caller."""
        ...


class MetricsSource(Protocol):
    """The exposition /metrics serves (probe.metrics.ProbeMetrics)."""

    def render_parts_for(self, accept: str | None, names: list[str] | None = None) -> tuple[list[bytes], str]:
        """Return the exposition for an ``Accept`` header (only the samples ``names``, if given) in pieces, and type."""
        ...


def _batches(parts: list[bytes], size: int = WRITE_BATCH) -> Iterator[bytes]:
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


class ListenAddressError(ValueError):
    """A ``--web.listen-address`` that cannot be parsed or resolved."""


class ListenError(OSError):
    """The listener cannot bind its address (in use, not permitted, not local); ``errno`` says which."""

    def __str__(self) -> str:
        return str(self.strerror)


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT``, ``:PORT`` (all interfaces) or ``[V6]:PORT`` into host and port."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ListenAddressError(f"listen address {address!r}: expected HOST:PORT, :PORT or [IPV6]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenAddressError(f"listen address {address!r}: put an IPv6 address in brackets, e.g. [::1]:9425")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ListenAddressError(f"listen address {address!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def _bind_target(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    if host in ("", "*"):
        return (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenAddressError(f"listen address {host}:{port}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], *, source: StatusSource,
                 metrics: MetricsSource, web: WebConfig) -> None:
        self.address_family = family
        self.source, self.metrics, self.web = source, metrics, web
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without the reverse lookup HTTPServer does; make "::" dual-stack."""
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Do the TLS handshake (when configured) in the request's own thread, then handle it."""
        if self.web.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            wrapped = self.web.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"client": str(client_address[0]), "err": str(exc)})
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            with contextlib.suppress(OSError):
                wrapped.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    server_version = "mailflow-probe"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's parameter name
        """Log requests at debug level through the probe's loggers."""
        log.debug(format, *args)

    def _send(self, status: HTTPStatus, body: bytes | str | list[bytes], content_type: str = _TEXT,
              headers: dict[str, str] | None = None) -> None:
        """Send a response; a body in pieces (/metrics) is written in batches, never joined whole."""
        parts = body if isinstance(body, list) else [body.encode("utf-8") if isinstance(body, str) else body]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        for name, value in {**self.server.web.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            for batch in _batches(parts):
                self.wfile.write(batch)

    def _authorized(self) -> bool:
        if self.server.web.authorized(self.headers.get("Authorization")):
            return True
        self._send(HTTPStatus.UNAUTHORIZED, "Unauthorized\n",
                   headers={"WWW-Authenticate": 'Basic realm="mailflow-probe", charset="UTF-8"'})
        return False

    def _discard_body(self) -> bool:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True
            self._send(HTTPStatus.BAD_REQUEST, "bad or too large request body\n")
            return False
        self.rfile.read(int(length))
        return True

    def do_GET(self) -> None:
        """Serve the read-only endpoints."""
        if not self._authorized():
            return
        url = urlsplit(self.path)
        self._guarded(lambda: self._get(url.path, url.query))

    def do_HEAD(self) -> None:
        """Serve the read-only endpoints' headers."""
        self.do_GET()

    def do_POST(self) -> None:
        """Serve /-/reload."""
        if not self._discard_body() or not self._authorized():
            return
        path = urlsplit(self.path).path
        if path == "/-/reload":
            self._guarded(self._reload)
        elif path in _GET_PATHS:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "use GET\n", headers={"Allow": "GET, HEAD"})
        else:
            self._send(HTTPStatus.NOT_FOUND, "not found\n")

    def _guarded(self, serve: Any) -> None:
        try:
            serve()
        except Exception as exc:
            log.exception("request failed", extra={"path": self.path})
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {redact(str(exc))}\n")

    def _get(self, path: str, query: str) -> None:
        source = self.server.source
        if path == "/metrics":
            names = parse_qs(query).get("name[]")
            parts, content_type = self.server.metrics.render_parts_for(self.headers.get("Accept"), names)
            self._send(HTTPStatus.OK, parts, content_type)
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, "Healthy\n")
        elif path == "/-/ready":
            ready = source.ready()
            self._send(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                       "Ready\n" if ready else "Not ready\n")
        elif path == "/":
            self._send(HTTPStatus.OK, status_page(source), _HTML, {"Cache-Control": "no-store"})
        elif path == "/debug":
            self._debug(parse_qs(query))
        elif path == "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "use POST\n", headers={"Allow": "POST"})
        else:
            self._send(HTTPStatus.NOT_FOUND, "not found\n")

    def _debug(self, query: dict[str, list[str]]) -> None:
        route, host = query.get("route", [""])[0], query.get("smart_host", [""])[0]
        if not route or not host:
            self._send(HTTPStatus.BAD_REQUEST, "give route= and smart_host=\n")
            return
        pair = find_pair(self.server.source.config(), route, host)
        if pair is None:
            self._send(HTTPStatus.NOT_FOUND, f"no smart host {host!r} in route {route!r}\n")
            return
        probe_id = query.get("probe_id", [None])[0]
        page = debug_page(self.server.source, *pair, probe_id=probe_id)
        self._send(HTTPStatus.OK, page, _HTML, {"Cache-Control": "no-store"})

    def _reload(self) -> None:
        ok, message = self.server.source.reload()
        text = redact(message.rstrip("\n")) + "\n"
        self._send(HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR, text)


class WebServer:
    """A running listener; ``close()`` stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="probe-web", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """Return the address the listener is bound to."""
        return self._server.server_name

    @property
    def port(self) -> int:
        """Return the port the listener is bound to (the real one when 0 was asked for)."""
        return self._server.server_port

    @property
    def tls(self) -> bool:
        """Return whether the listener speaks TLS."""
        return self._server.web.tls is not None

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(listen_address: str, *, source: StatusSource, metrics: MetricsSource,
          web_config: WebConfig | None = None) -> WebServer:
    """Start the listener on ``listen_address`` in a background thread and return it."""
    host, port = parse_listen_address(listen_address)
    family, bind_host = _bind_target(host, port)
    try:
        server = _Server(family, (bind_host, port), source=source, metrics=metrics, web=web_config or WebConfig())
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot listen on {listen_address}: {exc.strerror or exc}") from None
    return WebServer(server)
