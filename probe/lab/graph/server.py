"""The lab's Graph endpoint of one forest: authority and Graph v1.0 mail API on one HTTPS listener.

Every response carries an HTTP ``Date`` on the forest's server clock. Faults of target ``graph/FOREST``,
read per request: ``unreachable`` closes connections unanswered; ``slow`` delays each response; ``unauthorized``
refuses every token (``401 InvalidAuthenticationToken``) and every credential at the token endpoint
(``401 invalid_client``); ``server_error`` answers ``500``; ``server_busy`` answers ``429`` with
``Retry-After`` (whole seconds, at least 1); ``clock_offset`` moves the Date header and the store's stamps.
Requests are counted per operation in the lab's stats (``GET /stats``, key ``graph``); the calls inside a
``$batch`` as ``batched OPERATION``, apart from the HTTP requests. A message's MIME content
(``/messages/{id}/$value``) is answered as Graph does, ``text/plain``; in a ``$batch``, base64 in the body.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from probe.lab.faults import Fault, FaultRegistry, MailboxFault
from probe.lab.graph.messages import (
    FOLDERS,
    GraphRequestError,
    list_page,
    message_json,
    parse_expand,
    parse_select,
    store_id,
)
from probe.lab.graph.tokens import Tenant, TokenRefused
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore, StoredItem

log = logging.getLogger(__name__)

MAX_BODY: Final = 4 * 1024 * 1024
MAX_BATCH: Final = 20
_USER_PATH: Final = re.compile(r"^/v1\.0/users/([^/]+)(/.*)$")
_SERVER_ERROR: Final = ("ErrorInternalServerError", "An internal server error occurred. The operation failed.")
_THROTTLED: Final = ("ApplicationThrottled", "Application is over its MailboxConcurrency limit.")


class _Dropped(Exception):  # noqa: N818 - a control-flow signal
    """The connection is closed without an answer (the unreachable fault)."""


class GraphServer:
    """One forest's authority and Graph endpoint, in a thread; ``url`` is both the authority and the endpoint."""

    def __init__(self, forest: str, *, tenant: Tenant, store: MailboxStore, faults: FaultRegistry, stats: LabStats,
                 ssl_context: ssl.SSLContext, clock: Callable[[], float], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.forest, self.tenant, self.store, self.faults, self.stats = forest, tenant, store, faults, stats
        self.clock = clock
        self._httpd = _Server((host, port), self, ssl_context)
        self.url = f"https://{host}:{self._httpd.server_address[1]}"
        self.tenant.base = self.url
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"lab-graph-{forest}", daemon=True)

    def fault(self, kind: MailboxFault) -> Fault | None:
        """Return the fault of this kind in force on this forest's Graph endpoint, if any."""
        return self.faults.find(f"graph/{self.forest}", kind)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    # -- the API ----------------------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer the token endpoint."""
        self.stats.count_graph(self.forest, "token")
        if self.fault(MailboxFault.UNAUTHORIZED) is not None:
            return 401, TokenRefused(401, "invalid_client", 7000222, "The provided client secret keys for app are "
                                     "expired.").body()
        try:
            return 200, self.tenant.grant(form, resource=self.url)
        except TokenRefused as refused:
            return refused.status, refused.body()

    def api(self, method: str, path: str, query: dict[str, str], body: object, auth: str | None, *,
            batched: bool = False) -> tuple[int, Any]:
        """Answer one Graph call (of a $batch too): check the token and the faults, then route it."""
        try:
            return self._call(method, path, query, body, auth, batched=batched)
        except GraphRequestError as refused:
            return refused.status, refused.body()

    def _call(self, method: str, path: str, query: dict[str, str], body: object, auth: str | None, *,
              batched: bool) -> tuple[int, Any]:
        self._authorize(auth)
        if self.fault(MailboxFault.SERVER_ERROR) is not None:
            raise GraphRequestError(500, *_SERVER_ERROR)
        if path == "/v1.0/$batch" and method == "POST" and not batched:
            return 200, self._batch(body, auth)
        return self._route(method, path, query, body, batched=batched)

    def _authorize(self, auth: str | None) -> None:
        if not auth or not auth.startswith("Bearer "):
            raise GraphRequestError(401, "InvalidAuthenticationToken", "Access token is empty.")
        if self.fault(MailboxFault.UNAUTHORIZED) is not None:
            raise GraphRequestError(401, "InvalidAuthenticationToken", "Access token validation failure.")
        checked = self.tenant.check_token(auth[7:], resource=self.url)
        if isinstance(checked, str):
            raise GraphRequestError(401, "InvalidAuthenticationToken", checked)

    def _route(self, method: str, path: str, query: dict[str, str], body: object, *,
               batched: bool) -> tuple[int, Any]:
        match = _USER_PATH.match(path)
        if match is None:
            raise GraphRequestError(400, "BadRequest", f"Resource not found for the segment '{path[:60]}'.")
        user, rest = unquote(match[1]).lower(), match[2]
        if not self.store.has_mailbox(user) or self.store.forest_of(user) != self.forest:
            raise GraphRequestError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        parts = [unquote(part) for part in rest.strip("/").split("/")]
        operation = _operation(method, parts)
        self.stats.count_graph(self.forest, f"batched {operation}" if batched else operation)
        if operation == "listMessages":
            return 200, self._list(user, parts[1], query, path)
        if operation == "getFolder":
            return 200, {"id": parts[1], "displayName": parts[1]}
        item = self._item(user, parts[1] if len(parts) > 1 else "")
        return self._act(operation, item, query, body)

    def _list(self, user: str, folder: str, query: dict[str, str], path: str) -> dict[str, Any]:
        if folder.lower() not in FOLDERS:
            raise GraphRequestError(404, "ErrorInvalidIdMalformed", "Id is malformed.")
        items = self.store.items(user, [folder.lower()])
        page = list_page(items, query, url=f"{self.url}{path}")
        return {"@odata.context": f"{self.url}/v1.0/$metadata#users('{user}')/mailFolders('{folder}')/messages",
                **page}

    def _item(self, user: str, graph_id: str) -> StoredItem:
        item = self.store.get(store_id(graph_id))
        if item is None or item.mailbox != user or item.folder not in FOLDERS:
            raise GraphRequestError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    def _act(self, operation: str, item: StoredItem, query: dict[str, str], body: object) -> tuple[int, Any]:
        if operation == "getMessage":
            return 200, message_json(item, parse_select(query.get("$select")),
                                     message_class=parse_expand(query.get("$expand")))
        if operation == "getMessageContent":
            return 200, item.raw
        if operation == "deleteMessage":
            self.store.delete(item.item_id, "SoftDelete")
            return 204, None
        if operation == "permanentDelete":
            self.store.delete(item.item_id, "HardDelete")
            return 204, None
        destination = body.get("destinationId") if isinstance(body, dict) else None
        if destination not in FOLDERS:
            raise GraphRequestError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        moved = self.store.move(item.item_id, str(destination))
        assert moved is not None
        return 201, message_json(moved, parse_select(None))

    def _batch(self, body: object, auth: str | None) -> dict[str, Any]:
        calls = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(calls, list) or not calls:
            raise GraphRequestError(400, "BadRequest", "Invalid batch payload format.")
        if len(calls) > MAX_BATCH:
            raise GraphRequestError(400, "BadRequest", f"Maximum number of requests in a batch is {MAX_BATCH}.")
        self.stats.count_graph(self.forest, "$batch")
        return {"responses": [self._one(call, auth) for call in calls]}

    def _one(self, call: object, auth: str | None) -> dict[str, Any]:
        if not isinstance(call, dict) or "id" not in call or "url" not in call:
            return {"id": "", "status": 400, "body": GraphRequestError(400, "BadRequest", "Invalid request").body()}
        url = urlsplit("/v1.0/" + str(call["url"]).lstrip("/"))
        status, body = self.api(str(call.get("method", "GET")).upper(), url.path, dict(parse_qsl(url.query)),
                                call.get("body"), auth, batched=True)
        if isinstance(body, bytes):  # a MIME content: base64 in a batch, as Graph sends a body that is not JSON
            return {"id": str(call["id"]), "status": status, "headers": {"Content-Type": "text/plain"},
                    "body": base64.b64encode(body).decode()}
        return {"id": str(call["id"]), "status": status, "headers": {"Content-Type": "application/json"},
                **({"body": body} if body is not None else {})}


def _operation(method: str, parts: list[str]) -> str:
    """Name the Graph operation of ``/users/{id}/...`` (for the stats and the router)."""
    routes = {
        ("GET", "mailFolders", 3, "messages"): "listMessages",
        ("GET", "mailFolders", 2, None): "getFolder",
        ("GET", "messages", 2, None): "getMessage",
        ("GET", "messages", 3, "$value"): "getMessageContent",
        ("DELETE", "messages", 2, None): "deleteMessage",
        ("POST", "messages", 3, "move"): "move",
        ("POST", "messages", 3, "permanentDelete"): "permanentDelete",
    }
    key = (method, parts[0] if parts else "", len(parts), parts[2] if len(parts) > 2 else None)
    if key not in routes:
        raise GraphRequestError(400, "BadRequest", "Unsupported request in the lab's Graph endpoint.")
    return routes[key]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], graph: GraphServer, tls: ssl.SSLContext) -> None:
        self.graph, self.tls = graph, tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake TLS in the connection's own thread (unless the endpoint is unreachable), then serve it."""
        conn = request
        try:
            if self.graph.fault(MailboxFault.UNREACHABLE) is not None:
                return
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(30)
            conn = self.tls.wrap_socket(request, server_side=True)
            _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError, _Dropped) as exc:
            log.debug("Graph connection from %s ended: %s", client_address, exc)
        finally:
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("%s %s", self.address_string(), format % args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """Stamp the Date header on the forest's server clock."""
        return email.utils.formatdate(self.server.graph.clock(), usegmt=True)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        graph = self.server.graph
        if graph.fault(MailboxFault.UNREACHABLE) is not None:
            self.close_connection = True
            raise _Dropped
        slow = graph.fault(MailboxFault.SLOW)
        if slow is not None:
            time.sleep(slow.seconds or 0.0)
        url = urlsplit(self.path)
        body = self._body()
        status, payload, headers = self._answer(method, url.path, dict(parse_qsl(url.query)), body)
        self._reply(status, payload, headers)

    def _answer(self, method: str, path: str, query: dict[str, str],
                body: bytes) -> tuple[int, Any, dict[str, str]]:
        graph = self.server.graph
        if not path.startswith("/v1.0/"):
            status, answer = self._authority(method, path, body)
            return status, answer, {}
        busy = graph.fault(MailboxFault.SERVER_BUSY)
        if busy is not None:
            wait = max(1, math.ceil((busy.back_off_ms or 0) / 1000))
            graph.stats.count_graph(graph.forest, "throttled")
            return 429, GraphRequestError(429, *_THROTTLED).body(), {"Retry-After": str(wait)}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            return 400, GraphRequestError(400, "BadRequest", "Unable to read JSON request payload.").body(), {}
        status, answer = graph.api(method, path, query, parsed, self.headers.get("Authorization"))
        return status, answer, {}

    def _authority(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer the authority's paths: OpenID metadata, keys, and the token endpoint."""
        graph, tenant = self.server.graph, self.server.graph.tenant.tenant_id
        if method == "GET" and path == f"/{tenant}/v2.0/.well-known/openid-configuration":
            return 200, graph.tenant.openid_configuration()
        if method == "GET" and path == f"/{tenant}/discovery/v2.0/keys":
            return 200, graph.tenant.jwks()
        if method == "POST" and path == f"/{tenant}/oauth2/v2.0/token":
            return graph.token(dict(parse_qsl(body.decode("utf-8", errors="replace"))))
        return 400, {"error": "invalid_request", "error_description": f"AADSTS90002: Tenant '{path.split('/')[1]}' "
                     "not found.", "error_codes": [90002]}

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        raw = isinstance(payload, bytes)  # a message's MIME content
        data = payload if raw else b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if raw:
            self.send_header("Content-Type", "text/plain")
        elif payload is not None:
            self.send_header("Content-Type", "application/json; odata.metadata=minimal; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"{time.time_ns():x}")
        self.end_headers()
        if data:
            self.wfile.write(data)
