"""The daemon's HTTP listener: /metrics, /-/healthy, /-/ready, /-/reload, the status page and the debug view.

The connections are probe.http_server's (asyncio and h11: a cap on clients, a deadline for each request
head, cached basic auth); this module holds the routes. It reads the daemon through ``StatusSource``
callbacks and never imports it. TLS and basic auth come from an exporter-toolkit web config
(probe.webconfig). ``POST /-/reload`` needs ``--web.enable-lifecycle`` (as Prometheus' does) and is refused
when a browser sends it from another site.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

from probe.config import Config
from probe.http_server import LISTEN_BACKLOG, HttpServer, Limits, Request, Response, cross_origin_refusal, text_response
from probe.secret import redact
from probe.vocabulary import LocalResource
from probe.web_pages import debug_page, find_pair, status_page
from probe.webconfig import WebConfig

log = logging.getLogger("probe.web")

_HTML: Final = "text/html; charset=utf-8"
_GET_PATHS: Final = frozenset({"/", "/metrics", "/-/healthy", "/-/ready", "/debug"})
_LIFECYCLE_PATHS: Final = frozenset({"/-/reload"})


class StatusSource(Protocol):
    """What the listener asks the daemon."""

    def config(self) -> Config:
        """Return the configuration in force."""
        ...

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the latest decided probes of a pair, newest first (probe.ledger.Ledger.history rows)."""
        ...

    def waiting(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the probes of a pair still awaiting a verdict, newest first (probe.ledger.Ledger.waiting rows)."""
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


class _App:
    """The routes: what each request is answered with (runs on the listener's worker threads)."""

    def __init__(self, *, source: StatusSource, metrics: MetricsSource, web: WebConfig, lifecycle: bool) -> None:
        self.source, self.metrics, self.web, self.lifecycle = source, metrics, web, lifecycle

    def __call__(self, request: Request) -> Response:
        """Answer one authorised request, with the configured and the security headers."""
        try:
            response = self._route(request)
        except Exception as exc:
            log.exception("request failed", extra={"path": request.target})
            response = text_response(500, f"internal error: {redact(str(exc))}\n")
        response.headers = {"X-Content-Type-Options": "nosniff",
                            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                            **self.web.headers, **response.headers}
        return response

    def _route(self, request: Request) -> Response:
        url = urlsplit(request.target)
        if request.method in ("GET", "HEAD"):
            return self._get(request, url.path, url.query)
        if request.method == "POST":
            return self._post(request, url.path)
        return text_response(405, "use GET, HEAD or POST\n", Allow="GET, HEAD, POST")

    def _post(self, request: Request, path: str) -> Response:
        if path in _GET_PATHS:
            return text_response(405, "use GET\n", Allow="GET, HEAD")
        if path not in _LIFECYCLE_PATHS:
            return text_response(404, "not found\n")
        if not self.lifecycle:
            return text_response(403, "Lifecycle API is not enabled (start with --web.enable-lifecycle; "
                                      "SIGHUP always reloads).\n")
        refusal = cross_origin_refusal(request.header)
        if refusal is not None:
            log.warning("cross-origin request refused", extra={"path": path, "client": request.client,
                                                                "why": refusal})
            return text_response(403, f"cross-origin request refused: {refusal}\n")
        return self._reload()

    def _get(self, request: Request, path: str, query: str) -> Response:
        if path == "/metrics":
            names = parse_qs(query).get("name[]")
            parts, content_type = self.metrics.render_parts_for(request.header("accept"), names)
            return Response(status=200, body=parts, content_type=content_type)
        if path == "/":
            return _html(status_page(self.source))
        if path == "/debug":
            return self._debug(parse_qs(query))
        return self._plain(path)

    def _plain(self, path: str) -> Response:
        if path == "/-/healthy":
            return text_response(200, "Healthy\n")
        if path == "/-/ready":
            ready = self.source.ready()
            return text_response(200 if ready else 503, "Ready\n" if ready else "Not ready\n")
        if path in _LIFECYCLE_PATHS:
            return text_response(405, "use POST\n", Allow="POST")
        return text_response(404, "not found\n")

    def _debug(self, query: dict[str, list[str]]) -> Response:
        route, host = query.get("route", [""])[0], query.get("smart_host", [""])[0]
        if not route or not host:
            return text_response(400, "give route= and smart_host=\n")
        pair = find_pair(self.source.config(), route, host)
        if pair is None:
            return text_response(404, f"no smart host {host!r} in route {route!r}\n")
        probe_id = query.get("probe_id", [None])[0]
        return _html(debug_page(self.source, *pair, probe_id=probe_id))

    def _reload(self) -> Response:
        ok, message = self.source.reload()
        if ok:
            return text_response(200, redact(message.rstrip("\n")) + "\n")
        # The details (file, line, the offending value) are in the daemon's log, not for any HTTP client.
        return text_response(500, "reload failed: the new configuration was refused and the running one is kept; "
                                  "the daemon's log says why\n")


def _html(page: str) -> Response:
    return Response(status=200, body=[page.encode("utf-8")], content_type=_HTML, headers={"Cache-Control": "no-store"})


class WebServer:
    """A running listener; ``close()`` stops it."""

    def __init__(self, server: HttpServer, sock: socket.socket, *, tls: bool) -> None:
        self._server = server
        self._tls = tls
        address = sock.getsockname()
        self._host, self._port = str(address[0]), int(address[1])
        server.start()

    @property
    def host(self) -> str:
        """Return the address the listener is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """Return the port the listener is bound to (the real one when 0 was asked for)."""
        return self._port

    @property
    def tls(self) -> bool:
        """Return whether the listener speaks TLS."""
        return self._tls

    @property
    def limits(self) -> Limits:
        """Return the limits the listener holds clients to."""
        return self._server.limits

    @property
    def evicted(self) -> int:
        """Return how many clients waiting for their request head were dropped to let newer ones in."""
        return self._server.evicted

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.close()


def _listen(family: socket.AddressFamily, address: tuple[str, int], backlog: int) -> socket.socket:
    """Bind and listen (no reverse lookup; "::" dual-stack); raise OSError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6 and address[0] == "::":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve(listen_address: str, *, source: StatusSource, metrics: MetricsSource,
          web_config: WebConfig | None = None, lifecycle: bool = False, limits: Limits | None = None,
          on_local_fault: Callable[[LocalResource, str], None] | None = None) -> WebServer:
    """Start the listener on ``listen_address`` in a background thread and return it.

    ``lifecycle`` (``--web.enable-lifecycle``) allows ``POST /-/reload``; without it that answers 403.
    """
    host, port = parse_listen_address(listen_address)
    family, bind_host = _bind_target(host, port)
    web = web_config or WebConfig()
    limits = limits or Limits()
    try:
        sock = _listen(family, (bind_host, port), LISTEN_BACKLOG)
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot listen on {listen_address}: {exc.strerror or exc}") from None
    app = _App(source=source, metrics=metrics, web=web, lifecycle=lifecycle)
    server = HttpServer(sock, handler=app, gate=web if web.auth_required else None, tls=web.tls, limits=limits,
                        on_local_fault=on_local_fault)
    return WebServer(server, sock, tls=web.tls is not None)
