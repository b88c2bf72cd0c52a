"""The lab's admin HTTP API: faults on demand, counts, and the record of deliveries (loopback only)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from probe.http_server import cross_origin_refusal
from probe.lab.faults import Fault, FaultError, FaultRegistry
from probe.lab.stats import LabStats
from probe.lab.store import DeliveryRecord, MailboxStore

log = logging.getLogger(__name__)

_MAX_BODY: Final = 64 * 1024
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def delivery_json(record: DeliveryRecord) -> dict[str, Any]:
    """Return one delivery record as ``GET /deliveries`` shows it."""
    return {
        "mailbox": record.mailbox, "message_id": record.message_id, "folder": record.folder,
        "accepted_at": record.accepted_at, "delivered_at": record.delivered_at,
        "received": record.received.isoformat(),
    }


class AdminServer:
    """``POST/DELETE/GET /faults``, ``GET /stats`` and ``GET /deliveries`` over HTTP, in a thread."""

    def __init__(self, *, add_fault: Callable[[object], Fault], faults: FaultRegistry, stats: LabStats,
                 store: MailboxStore, smart_hosts: Callable[[], list[str]], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.add_fault = add_fault
        self.faults = faults
        self.stats = stats
        self.store = store
        self.smart_hosts = smart_hosts
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.admin = self  # type: ignore[attr-defined]  # the handler finds its server here
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="lab-admin", daemon=True)

    @property
    def bound_host(self) -> str:
        """Return the address the API listens on."""
        return str(self._httpd.server_address[0])

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:9426``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def stats_json(self) -> dict[str, Any]:
        """Return the lab's counts plus the messages each smart host accepted (zeros included)."""
        body = self.stats.to_json()
        body["accepted_per_smart_host"] = {name: self.stats.smarthost(name, "accepted")
                                           for name in self.smart_hosts()}
        return body


class _Handler(BaseHTTPRequestHandler):
    server_version = "mailflow-probe-lab-admin"
    protocol_version = "HTTP/1.1"

    @property
    def admin(self) -> AdminServer:
        admin: AdminServer = self.server.admin  # type: ignore[attr-defined]
        return admin

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("admin: " + format, *args)

    def _refused(self, *, changes: bool) -> bool:
        """Answer 403 to a Host that is not this loopback listener (DNS rebinding), and to a cross-origin
        request that changes something (a browser's simple POST or DELETE from another site)."""
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.strip("[]") not in _LOOPBACK_NAMES | {self.admin.bound_host}:
            self._error(HTTPStatus.FORBIDDEN, f"Host {host or '(none)'} is not this lab's address; use "
                        f"{self.admin.url}")
            return True
        refusal = cross_origin_refusal(self.headers.get) if changes else None
        if refusal is not None:
            self._error(HTTPStatus.FORBIDDEN, f"cross-origin request refused: {refusal}")
            return True
        return False

    def do_GET(self) -> None:
        if self._refused(changes=False):
            return
        url = urlsplit(self.path)
        if url.path == "/faults":
            self._reply(HTTPStatus.OK, [f.to_json() for f in self.admin.faults.active()])
        elif url.path == "/stats":
            self._reply(HTTPStatus.OK, self.admin.stats_json())
        elif url.path == "/deliveries":
            self._deliveries(parse_qs(url.query))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {url.path}; try /faults, /stats, /deliveries")

    def do_POST(self) -> None:
        if self._refused(changes=True):
            self.close_connection = True
            return
        if urlsplit(self.path).path != "/faults":
            self._error(HTTPStatus.NOT_FOUND, "POST only to /faults")
            return
        data = self._json_body()
        if data is None:
            return
        try:
            fault = self.admin.add_fault(data)
        except FaultError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._reply(HTTPStatus.CREATED, fault.to_json())

    def do_DELETE(self) -> None:
        if self._refused(changes=True):
            return
        url = urlsplit(self.path)
        if url.path != "/faults":
            self._error(HTTPStatus.NOT_FOUND, "DELETE only on /faults")
            return
        target = parse_qs(url.query).get("target", [None])[0]
        before = len(self.admin.faults.active())
        self.admin.faults.clear(target)
        self._reply(HTTPStatus.OK, {"cleared": before - len(self.admin.faults.active())})

    def _deliveries(self, query: dict[str, list[str]]) -> None:
        try:
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "offset must be a whole number")
            return
        records = self.admin.store.records()[max(offset, 0):]
        self._reply(HTTPStatus.OK, [delivery_json(r) for r in records])

    def _json_body(self) -> object | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= _MAX_BODY:
            self.close_connection = True  # the body, if any, is left unread
            self._error(HTTPStatus.BAD_REQUEST, "send a JSON body (with Content-Length, at most 64 KiB)")
            return None
        raw = self.rfile.read(length)
        try:
            data: object = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}")
            return None
        return data

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._reply(status, {"error": message})

    def _reply(self, status: HTTPStatus, body: object) -> None:
        payload = json.dumps(body, indent=1).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
