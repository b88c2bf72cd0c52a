"""The web listener over real loopback HTTP: metrics, health, reload, status page, debug view, TLS and auth."""

from __future__ import annotations

import base64
import errno
import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.config import Config, ConfigError, EwsConfig, MailboxConfig, RouteConfig, SmartHostConfig
from probe.lab.ca import LabCA
from probe.metrics import ProbeMetrics
from probe.secret import Secret
from probe.web import ListenAddressError, ListenError, WebServer, parse_listen_address, serve
from probe.webconfig import WebConfig, load_web_config

SMTP_PASSWORD = "smtp-Passw0rd-web"
EWS_PASSWORD = "ews-Passw0rd-web"


def make_config() -> Config:
    mailbox = MailboxConfig(name="fc", address="probe@fourthcoffee.com",
                            backend=EwsConfig(url="https://127.0.0.1:8443/EWS/Exchange.asmx", username="FC\\svc",
                                          password=Secret(EWS_PASSWORD)))
    hosts = tuple(SmartHostConfig(name=n, host="127.0.0.1", port=2525, username="c@contoso.com",
                                  password=Secret(SMTP_PASSWORD)) for n in ("fc-edge-1", "fc-edge-<2>"))
    route = RouteConfig(name="contoso-to-fourthcoffee", sender="probe@contoso.com", mailbox="fc", smart_hosts=hosts)
    return Config(signing_key_file=Path("key"), state_file=Path("state.db"), mailboxes={"fc": mailbox},
                  routes=(route,))


DELIVERED = {"state": "delivered", "stage": None, "reason": None, "smtp_code": 250, "latency": 1.234,
             "decided_at": 1_700_000_100.0, "message_id": "<p-2@contoso.com>", "probe_id": "p-2",
             "detail": {"transcript": ["S: 220 fc-edge-1 ESMTP", f"C: AUTH PLAIN {SMTP_PASSWORD}", "S: 235 ok"],
                        "hops": [{"by": "fc-edge-1", "from": "probe.contoso.com", "at": "2024-01-01T00:00:00Z"}],
                        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                                "not_after": "2030-01-01T00:00:00Z"}}}
OLDER = {**DELIVERED, "probe_id": "p-1", "latency": 0.5, "decided_at": 1_700_000_000.0, "detail": {}}
FAILED = {"state": "send_failed", "stage": "rcpt", "reason": "rejected", "smtp_code": 550, "latency": None,
          "decided_at": 1_700_000_100.0, "message_id": "<p-3@contoso.com>", "probe_id": "p-3",
          "detail": {"transcript": ["C: RCPT TO:<probe@fourthcoffee.com>", "S: 550 5.7.1 <script>no</script>"]}}


@dataclass
class FakeSource:
    """A daemon stand-in: a config, canned history, a ready flag and a reload outcome."""

    conf: Config = field(default_factory=make_config)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=lambda: {
        ("contoso-to-fourthcoffee", "fc-edge-1"): [DELIVERED, OLDER],
        ("contoso-to-fourthcoffee", "fc-edge-<2>"): [FAILED]})
    open_rows: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    is_ready: bool = False
    outcome: tuple[bool, str] = (True, "reloaded: 2 pairs")
    reloads: int = 0

    def config(self) -> Config:
        return self.conf

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        return self.rows.get((route, smart_host), [])[:limit]

    def waiting(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        return self.open_rows.get((route, smart_host), [])[:limit]

    def ready(self) -> bool:
        return self.is_ready

    def reload(self) -> tuple[bool, str]:
        self.reloads += 1
        return self.outcome


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str


def fetch(server: WebServer, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Reply:
    """Make one HTTP(S) request to the listener over loopback."""
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, server.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read().decode("utf-8"))
    finally:
        conn.close()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def server(source: FakeSource) -> Iterator[WebServer]:
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False),
                    lifecycle=True)
    yield running
    running.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_metrics_are_served_in_the_prometheus_text_format(server):
    """/metrics answers 200 with the text format's content type, and every pair's series parse."""
    reply = fetch(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body)}
    hosts = {s.labels["smart_host"] for s in families["mailflow_probe_sent"].samples}
    assert hosts == {"fc-edge-1", "fc-edge-<2>"}


def test_health_and_readiness(server, source):
    """/-/healthy is 200 at once; /-/ready is 503 until the daemon says it is ready, then 200."""
    assert fetch(server, "/-/healthy").status == 200
    assert fetch(server, "/-/ready").status == 503
    source.is_ready = True
    assert fetch(server, "/-/ready").status == 200
    assert fetch(server, "/nowhere").status == 404


def test_reload_is_post_only_and_reports_the_callbacks_outcome(server, source):
    """POST /-/reload calls back; a refused config answers 500 without its file, line or value; GET is 405."""
    get = fetch(server, "/-/reload")
    assert (get.status, get.headers["Allow"], source.reloads) == (405, "POST", 0)
    ok = fetch(server, "/-/reload", method="POST")
    assert (ok.status, ok.body.strip(), source.reloads) == (200, "reloaded: 2 pairs", 1)
    source.outcome = (False, "probe.yaml:7: routes[0].mailbox: no mailbox named 'nope'")
    refused = fetch(server, "/-/reload", method="POST")
    assert refused.status == 500
    assert "refused" in refused.body
    assert "probe.yaml" not in refused.body
    assert "nope" not in refused.body
    assert ":7" not in refused.body
    assert source.reloads == 2


def test_status_page_shows_each_pairs_last_verdict_and_history(server):
    """The status page names both pairs' verdicts, latency, stage/reason and code, escaped, with debug links."""
    reply = fetch(server, "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.body
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "<script" not in page
    assert "fc-edge-&lt;2&gt;" in page
    assert "fc-edge-<2>" not in page
    assert '<span class="v delivered">delivered</span>' in page
    assert '<span class="v send_failed">send_failed</span>' in page
    assert "1.234 s" in page
    assert "rcpt / rejected" in page
    assert "<td>550</td>" in page
    assert "/debug?route=contoso-to-fourthcoffee&amp;smart_host=fc-edge-1&amp;probe_id=p-1" in page
    assert "/debug?route=contoso-to-fourthcoffee&amp;smart_host=fc-edge-%3C2%3E" in page


def test_debug_view_shows_transcript_hops_tls_and_config_with_secrets_hidden(server):
    """The debug view has the redacted transcript, hops, TLS facts and config; no password ever appears."""
    reply = fetch(server, "/debug?route=contoso-to-fourthcoffee&smart_host=fc-edge-1")
    assert reply.status == 200
    page = reply.body
    assert "S: 220 fc-edge-1 ESMTP" in page
    assert "C: AUTH PLAIN &lt;secret&gt;" in page
    assert "probe.contoso.com" in page
    assert "TLS_AES_256_GCM_SHA384" in page
    assert "password: &lt;secret&gt;" in page
    assert "url: https://127.0.0.1:8443/EWS/Exchange.asmx" in page
    assert SMTP_PASSWORD not in page
    assert EWS_PASSWORD not in page
    assert '<meta http-equiv="refresh"' not in page


def test_debug_view_of_one_probe_and_of_a_failure(server):
    """probe_id picks a probe from the history; a failure's reply text is shown escaped."""
    older = fetch(server, "/debug?route=contoso-to-fourthcoffee&smart_host=fc-edge-1&probe_id=p-1").body
    assert "Probe p-1" in older
    assert "No transcript was kept." in older
    failed = fetch(server, "/debug?route=contoso-to-fourthcoffee&smart_host=fc-edge-%3C2%3E").body
    assert "S: 550 5.7.1 &lt;script&gt;no&lt;/script&gt;" in failed
    assert "<script>" not in failed


def test_debug_view_of_an_unknown_or_unnamed_pair_is_a_clear_error(server):
    """An unknown pair is 404 and a missing parameter 400, each with a message."""
    unknown = fetch(server, "/debug?route=contoso-to-fourthcoffee&smart_host=nope")
    assert unknown.status == 404
    assert "no smart host 'nope'" in unknown.body
    assert fetch(server, "/debug?route=contoso-to-fourthcoffee").status == 400


def test_a_failing_source_is_a_500_not_a_dropped_connection(source):
    """An exception in a callback answers 500 with a redacted message and the listener keeps serving."""

    class Broken(FakeSource):
        def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
            raise RuntimeError(f"database says {SMTP_PASSWORD}")

    running = serve("127.0.0.1:0", source=Broken(), metrics=ProbeMetrics(source.conf, process_metrics=False))
    try:
        reply = fetch(running, "/")
        assert reply.status == 500
        assert "database says <secret>" in reply.body
        assert fetch(running, "/-/healthy").status == 200
    finally:
        running.close()


# -- web config: basic auth and TLS -----------------------------------------------------------------


def write_web_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_basic_auth_rejects_a_wrong_password_and_accepts_the_right_one(tmp_path, source):
    """With basic_auth_users, no or wrong credentials get 401 with a Basic challenge; the right ones get in."""
    hashed = bcrypt.hashpw(b"right horse", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    web = load_web_config(write_web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"))
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False),
                    web_config=web)
    try:
        missing = fetch(running, "/metrics")
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"].startswith("Basic ")
        assert fetch(running, "/metrics", headers=basic("prometheus", "wrong horse")).status == 401
        assert fetch(running, "/metrics", headers=basic("someone", "right horse")).status == 401
        assert fetch(running, "/-/reload", method="POST", headers=basic("prometheus", "wrong")).status == 401
        assert source.reloads == 0
        assert fetch(running, "/metrics", headers=basic("prometheus", "right horse")).status == 200
    finally:
        running.close()


def test_tls_listener_serves_https_with_the_configured_certificate(tmp_path, source):
    """With tls_server_config the listener speaks HTTPS with its certificate; a client trusting the CA gets in."""
    ca = LabCA(tmp_path / "ca")
    cert = ca.issue("probe-web", ["127.0.0.1", "localhost"])
    web = load_web_config(write_web_config(tmp_path, (
        f"tls_server_config:\n  cert_file: {cert.cert_file}\n  key_file: {cert.key_file}\n"
        "  client_auth_type: NoClientCert\n  min_version: TLS12\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")))
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False),
                    web_config=web)
    try:
        assert running.tls
        reply = fetch(running, "/-/healthy", context=ca.client_context())
        assert (reply.status, reply.body, reply.headers["X-Frame-Options"]) == (200, "Healthy\n", "deny")
        with pytest.raises(ssl.SSLCertVerificationError):
            fetch(running, "/-/healthy", context=ssl.create_default_context())
        assert fetch(running, "/-/healthy", context=ca.client_context()).status == 200
    finally:
        running.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("basic_auth_users:\n  alice: hunter2\n", r"web\.yml:2: basic_auth_users\.alice: expected a bcrypt hash"),
    ("tls_server_config:\n  cert_file: c.pem\n", r"web\.yml:2: tls_server_config\.key_file: is required"),
    ("tls_server_config:\n  cipher_suites: [x]\n", r"web\.yml:2: tls_server_config\.cipher_suites: is not supported"),
    ("tls_config:\n  cert_file: c\n", r"web\.yml:1: tls_config: unknown key"),
    ("basic_auth_users: [a\n", r"web\.yml:\d+: not valid YAML"),
    ("http_server_config:\n  http2: true\n", r"web\.yml:2: http_server_config\.http2: HTTP/2 is not supported"),
    ("http_server_config:\n  http2: maybe\n", r"web\.yml:2: http_server_config\.http2: expected true or false"),
])
def test_web_config_mistakes_name_file_line_and_field(tmp_path, text, expected):
    """A wrong web config is a ConfigError with the file, line and field."""
    with pytest.raises(ConfigError, match=expected):
        load_web_config(write_web_config(tmp_path, text))


def test_http2_false_is_accepted_as_what_the_listener_does(tmp_path):
    """http2: false (HTTP/1.1 only, which is all the listener speaks) loads; the headers beside it apply."""
    web = load_web_config(write_web_config(tmp_path, "http_server_config:\n  http2: false\n"
                                           "  headers: {X-Frame-Options: deny}\n"))
    assert web.headers == {"X-Frame-Options": "deny"}


def test_an_empty_web_config_means_plain_http_without_auth(tmp_path):
    """An empty file asks for nothing: no TLS, no authentication."""
    web = load_web_config(write_web_config(tmp_path, ""))
    assert web.tls is None
    assert not web.auth_required
    assert WebConfig().authorized(None)


# -- listen addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:9425", ("127.0.0.1", 9425)), (":9425", ("", 9425)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_listen_addresses_are_parsed(address, expected):
    """HOST:PORT, :PORT and [IPV6]:PORT split into host and port."""
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9425", "::1:9425", "host:port", "host:70000", ""])
def test_bad_listen_addresses_are_clear_errors(address):
    """A listen address without a usable port, or an unbracketed IPv6 address, is refused with a reason."""
    with pytest.raises(ListenAddressError, match="listen address"):
        parse_listen_address(address)


def test_a_busy_port_is_a_clear_error(server, source):
    """Listening on a port already taken raises a ListenError (an OSError with errno) that says where."""
    with pytest.raises(ListenError, match=f"^cannot listen on 127.0.0.1:{server.port}: ") as caught:
        serve(f"127.0.0.1:{server.port}", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False))
    assert caught.value.errno == errno.EADDRINUSE


def test_ipv6_loopback_listener(source):
    """[::1]:0 listens on the IPv6 loopback when the machine has one."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    running = serve("[::1]:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False))
    try:
        assert fetch(running, "/-/healthy", host="::1").status == 200
    finally:
        running.close()


class PiecesMetrics:
    """An exposition of many pieces, several megabytes in all (like /metrics at thousands of pairs)."""

    def __init__(self) -> None:
        self.parts = [f"piece_{i} {'x' * (i % 3000)}\n".encode() for i in range(4000)]

    def render_parts_for(self, accept: str | None, names: list[str] | None = None) -> tuple[list[bytes], str]:
        return list(self.parts), "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("tls", [False, True])
def test_a_page_of_many_pieces_arrives_whole_and_in_order(tmp_path: Path, source: FakeSource, tls: bool) -> None:
    """A body given in pieces is written in batches: the client reads exactly their concatenation, length declared."""
    metrics = PiecesMetrics()
    web = None
    context = None
    if tls:
        ca = LabCA(tmp_path / "ca")
        cert = ca.issue("probe-web", ["127.0.0.1"])
        web = load_web_config(write_web_config(tmp_path, (
            f"tls_server_config:\n  cert_file: {cert.cert_file}\n  key_file: {cert.key_file}\n")))
        context = ca.client_context()
    running = serve("127.0.0.1:0", source=source, metrics=metrics, web_config=web)
    try:
        reply = fetch(running, "/metrics", context=context)
    finally:
        running.close()
    expected = b"".join(metrics.parts).decode()
    assert len(expected) > 5_000_000
    assert reply.status == 200
    assert int(reply.headers["Content-Length"]) == len(expected)
    assert reply.body == expected


# -- hostile clients (issue 13) ------------------------------------------------------------------------------


def raw_exchange(server: WebServer, data: bytes) -> bytes:
    """Send raw bytes to the listener and return everything it answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def guarded(tmp_path: Path, source: FakeSource) -> Iterator[WebServer]:
    hashed = bcrypt.hashpw(b"right horse", bcrypt.gensalt(rounds=4)).decode()
    web = load_web_config(write_web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"))
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False),
                    web_config=web, lifecycle=True)
    yield running
    running.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /metrics HTTP/1.0\r\n\r\n",
    b"GET http://127.0.0.1/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET //metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics/../metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cHJvbWV0aGV1cw==\r\n\r\n",  # "prometheus", no colon
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right horse\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_basic_auth_cannot_be_bypassed(guarded: WebServer, source: FakeSource, request_bytes: bytes) -> None:
    """Whatever the method, target form, HTTP version or malformed Authorization: 401 (or 400), no data."""
    answer = raw_exchange(guarded, request_bytes)
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 401 ", b"HTTP/1.1 400 ", b"HTTP/1.0 401 ", b"HTTP/1.1 401 Unauthorized",
                      b"HTTP/1.0 401 Unauthorized", b"HTTP/1.1 400 Bad Request"), answer[:200]
    assert b"mailflow_probe_" not in answer
    assert source.reloads == 0


def test_a_second_request_on_an_authorised_connection_needs_credentials_too(guarded: WebServer) -> None:
    """Keep-alive: each request is checked; the credentials of the first do not carry to the next."""
    creds = basic("prometheus", "right horse")["Authorization"]
    answer = raw_exchange(guarded, (f"GET /-/healthy HTTP/1.1\r\nHost: x\r\nAuthorization: {creds}\r\n\r\n"
                                    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").encode())
    assert answer.count(b"HTTP/1.1 200 ") == 1
    assert answer.count(b"HTTP/1.1 401 ") == 1
    assert b"mailflow_probe_" not in answer


def test_wrong_passwords_never_push_out_the_right_one(guarded: WebServer) -> None:
    """Two hundred distinct wrong passwords (more than the cache holds) all get 401; the right one, checked
    before them, still gets in straight from the cache."""
    assert fetch(guarded, "/-/healthy", headers=basic("prometheus", "right horse")).status == 200
    for n in range(200):
        assert fetch(guarded, "/-/healthy", headers=basic("prometheus", f"wrong {n}")).status == 401
    gate = guarded._server._gate
    assert gate is not None
    assert gate.cached_verdict(basic("prometheus", "right horse")["Authorization"]) is True
    assert fetch(guarded, "/metrics", headers=basic("prometheus", "right horse")).status == 200


def test_reload_needs_the_lifecycle_flag(source: FakeSource) -> None:
    """Without --web.enable-lifecycle POST /-/reload is 403 and reloads nothing (SIGHUP is the way)."""
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False))
    try:
        reply = fetch(running, "/-/reload", method="POST")
    finally:
        running.close()
    assert reply.status == 403
    assert "--web.enable-lifecycle" in reply.body
    assert source.reloads == 0


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, False),
    ({"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"}, False),
    ({"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),
    ({}, True),  # curl, promtool, scripts: no browser headers
])
def test_cross_origin_reloads_are_refused(server: WebServer, source: FakeSource, headers: dict[str, str],
                                          allowed: bool) -> None:
    """A browser's cross-origin simple POST (Origin or Sec-Fetch-Site of another site) gets 403 and reloads
    nothing; a same-origin one and one with no browser headers reload."""
    reply = fetch(server, "/-/reload", method="POST", headers=headers)
    assert (reply.status == 200) is allowed, reply
    assert source.reloads == (1 if allowed else 0)


def test_a_same_origin_reload_from_the_status_page_passes(server: WebServer, source: FakeSource) -> None:
    """Origin naming the listener itself (the Host the browser used) is same-origin: allowed."""
    reply = fetch(server, "/-/reload", method="POST", headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert reply.status == 200
    assert source.reloads == 1


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65_536 + b"\r\n\r\n", b"431"),
])
def test_a_malformed_or_oversized_head_is_answered_and_closed(server: WebServer, request_bytes: bytes,
                                                              status: bytes) -> None:
    """Not HTTP, or a head of 64 KiB (over MAX_HEAD, 16 KiB): an error status, then the connection closes; the
    listener goes on."""
    answer = raw_exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
    assert fetch(server, "/-/healthy").status == 200
