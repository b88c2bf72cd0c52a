"""The submit step against the lab's smart hosts: real smtplib, real sockets, real TLS from the lab CA."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from probe.config import SmartHostConfig
from probe.lab import Lab, LabSmartHost
from probe.secret import Secret
from probe.smtp import SubmitResult, _queue_id, submit
from probe.vocabulary import SendReason, Stage

SENDER = "mailflow.probe@contoso.test"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Start one lab for the module; each test clears the faults it set."""
    with Lab.start(tmp_path_factory.mktemp("lab"), tarpit_seconds=0.5) as started:
        yield started


@pytest.fixture(autouse=True)
def _no_faults_after(lab: Lab) -> Iterator[None]:
    yield
    lab.clear_faults()


@pytest.fixture
def edge(lab: Lab) -> LabSmartHost:
    return lab.forests["fourthcoffee"].smart_hosts[0]


@pytest.fixture
def config(lab: Lab, edge: LabSmartHost) -> SmartHostConfig:
    return SmartHostConfig(name=edge.name, host=edge.host, port=edge.port, username=edge.username,
                           password=edge.password, ca_file=lab.ca_file, timeout=5.0)


@pytest.fixture
def recipient(lab: Lab) -> str:
    return lab.forests["fourthcoffee"].mailboxes[0]


def _message(recipient: str) -> tuple[bytes, str]:
    message_id = f"<{uuid.uuid4().hex}@probe.contoso.test>"
    raw = (f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: mailflow probe\r\n"
           f"Message-ID: {message_id}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n"
           "A probe from contoso through fourthcoffee-edge-1.\r\n").encode()
    return raw, message_id


def _send(config: SmartHostConfig, recipient: str) -> SubmitResult:
    raw, _ = _message(recipient)
    return submit(host=config, sender=SENDER, recipient=recipient, message=raw)


def _secret_forms(username: str, password: str) -> list[str]:
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return [password, b64(password), b64(username), b64(f"\0{username}\0{password}")]


def _assert_no_secrets(result: SubmitResult, username: str, password: str) -> None:
    shown = "\n".join([*result.transcript, result.error or "", result.smtp_reply or "", repr(result)])
    for form in _secret_forms(username, password):
        assert form not in shown


def _stored(lab: Lab, recipient: str, message_id: str) -> Any:
    deadline = time.monotonic() + 5.0  # delivery follows the 250 on the lab's own thread
    while time.monotonic() < deadline:
        found = [i for i in lab.store.items(recipient, ["inbox"]) if i.message_id == message_id]
        if found:
            return found[0]
        time.sleep(0.01)
    return None


def test_delivers_with_facts_timings_and_queue_id(lab: Lab, config: SmartHostConfig, recipient: str) -> None:
    """A healthy smart host accepts the probe: queue id, TLS facts, every stage timed, message stored."""
    raw, message_id = _message(recipient)
    before = time.time()
    result = submit(host=config, sender=SENDER, recipient=recipient, message=raw)
    after = time.time()
    assert result.ok, result.error
    assert (result.stage, result.reason, result.error) == (None, None, None)
    assert result.smtp_code == 250
    assert result.enhanced_code == "2.6.0"
    assert result.accepted_at is not None
    assert before <= result.accepted_at <= after
    assert result.queue_id is not None
    assert f"[InternalId={result.queue_id}, Hostname={config.name}.fourthcoffee.test]" in (result.smtp_reply or "")
    assert set(result.stage_seconds) == set(Stage)
    assert all(seconds >= 0 for seconds in result.stage_seconds.values())
    tls = result.tls
    assert tls is not None
    assert tls.verified
    assert tls.version.startswith("TLSv1.")
    assert tls.cipher
    assert tls.not_after is not None
    assert tls.not_after.tzinfo is not None
    assert tls.not_after > datetime.now(UTC)
    assert "CN=fourthcoffee-edge-1" in (tls.subject or "")
    assert "mailflow-probe lab CA" in (tls.issuer or "")
    item = _stored(lab, recipient, message_id)
    assert item is not None
    assert result.transcript[0].startswith("S: 220 ")
    assert "C: STARTTLS" in result.transcript
    assert result.transcript[-2:] == ("C: quit", "S: 221 2.0.0 Service closing transmission channel")


def test_transcript_redacts_auth(config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """The transcript shows the AUTH command but neither the password nor the base64 AUTH payload."""
    result = _send(config, recipient)
    assert result.ok, result.error
    assert "C: AUTH LOGIN <secret>" in result.transcript  # Exchange offers LOGIN, not PLAIN
    assert result.transcript[result.transcript.index("C: AUTH LOGIN <secret>") + 2] == "C: <secret>"
    _assert_no_secrets(result, edge.username, edge.password.reveal())


def test_no_starttls_sends_no_credentials(lab: Lab, config: SmartHostConfig, recipient: str,
                                         edge: LabSmartHost) -> None:
    """A smart host that does not offer STARTTLS is never sent credentials."""
    lab.add_fault(target=edge.target, kind="no_starttls")
    ehlos, auths = lab.stats.smarthost(edge.name, "ehlo"), lab.stats.smarthost(edge.name, "auth_attempts")
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_UNAVAILABLE)
    assert lab.stats.smarthost(edge.name, "ehlo") > ehlos  # it did talk to the host
    assert lab.stats.smarthost(edge.name, "auth_attempts") == auths
    assert not any(line.startswith("C: AUTH") for line in result.transcript)
    assert result.tls is None


@pytest.mark.parametrize("kind", ["untrusted_cert", "expired_cert"])
def test_bad_certificate(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost,
                         kind: str) -> None:
    """An untrusted or expired certificate fails at starttls as tls_certificate, before any AUTH."""
    lab.add_fault(target=edge.target, kind=kind)
    auths = lab.stats.smarthost(edge.name, "auth_attempts")
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_CERTIFICATE)
    assert lab.stats.smarthost(edge.name, "auth_attempts") == auths


def test_server_name_is_verified(config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """The certificate is checked against server_name: the host's DNS name passes, a wrong one fails."""
    right = _send(replace(config, server_name=edge.fqdn), recipient)
    assert right.ok, right.error
    wrong = _send(replace(config, server_name="mail.northwind.test"), recipient)
    assert (wrong.ok, wrong.stage, wrong.reason) == (False, Stage.STARTTLS, SendReason.TLS_CERTIFICATE)


def test_auth_reject(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """Rejected credentials fail at auth as auth_failed with the 535, and the password stays hidden."""
    lab.add_fault(target=edge.target, kind="auth_reject")
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.AUTH, SendReason.AUTH_FAILED)
    assert (result.smtp_code, result.enhanced_code) == (535, "5.7.3")
    _assert_no_secrets(result, edge.username, edge.password.reveal())


def test_tempfail_at_rcpt(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """A 451 at RCPT is a tempfail at stage rcpt, with its code and enhanced code."""
    lab.add_fault(target=edge.target, kind="tempfail", stage="rcpt", code=451)
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.RCPT, SendReason.TEMPFAIL)
    assert (result.smtp_code, result.enhanced_code) == (451, "4.7.0")
    assert result.accepted_at is None
    # it still said goodbye
    assert result.transcript[-2:] == ("C: quit", "S: 221 2.0.0 Service closing transmission channel")


def test_reject_at_data(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """A 5xx after the message is rejected at stage data, and the message is not counted accepted."""
    lab.add_fault(target=edge.target, kind="reject", stage="data")
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.DATA, SendReason.REJECTED)
    assert result.smtp_code == 554
    assert (result.accepted_at, result.queue_id) == (None, None)


def test_refused_connection(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost) -> None:
    """A connection reset before the banner is refused at stage connect."""
    lab.add_fault(target=edge.target, kind="refuse_connections")
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.CONNECT, SendReason.REFUSED)


def test_nothing_listening_is_refused(lab: Lab, config: SmartHostConfig, recipient: str) -> None:
    """A port nobody listens on is refused at stage connect."""
    result = _send(replace(config, host="127.0.0.1", port=_unused_port()), recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.CONNECT, SendReason.REFUSED)
    assert result.transcript == ()


@pytest.mark.parametrize("stage", [Stage.BANNER, Stage.DATA])
def test_slow_stage_times_out(lab: Lab, config: SmartHostConfig, recipient: str, edge: LabSmartHost,
                              stage: Stage) -> None:
    """A smart host slower than the timeout at a stage fails as timeout at that stage, without hanging."""
    lab.add_fault(target=edge.target, kind="slow", stage=stage.value, seconds=4)
    result = _send(replace(config, timeout=1.0), recipient)
    assert (result.ok, result.stage, result.reason) == (False, stage, SendReason.TIMEOUT)


def test_unknown_name_is_dns(config: SmartHostConfig, recipient: str) -> None:
    """A smart host name that does not resolve fails as dns at stage connect, with nothing sent."""
    result = _send(replace(config, host="fc-edge-9.fourthcoffee.invalid"), recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.CONNECT, SendReason.DNS)
    assert result.transcript == ()


def test_tls_none_needs_allow_insecure(lab: Lab, config: SmartHostConfig, recipient: str,
                                       edge: LabSmartHost) -> None:
    """tls none without allow_insecure is refused before any connection is made."""
    connections = lab.stats.smarthost(edge.name, "connections")
    result = _send(replace(config, tls="none"), recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_UNAVAILABLE)
    assert "allow_insecure" in (result.error or "")
    assert lab.stats.smarthost(edge.name, "connections") == connections
    assert result.transcript == ()


def test_tls_none_with_allow_insecure_talks_plain(lab: Lab, config: SmartHostConfig, recipient: str,
                                                  edge: LabSmartHost) -> None:
    """tls none with allow_insecure skips STARTTLS; the lab offers no AUTH in the clear: auth_unavailable."""
    auths = lab.stats.smarthost(edge.name, "auth_attempts")
    result = _send(replace(config, tls="none", allow_insecure=True), recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.AUTH, SendReason.AUTH_UNAVAILABLE)
    assert "C: STARTTLS" not in result.transcript
    assert result.tls is None
    assert lab.stats.smarthost(edge.name, "auth_attempts") == auths


def test_unreadable_ca_file_is_a_result(config: SmartHostConfig, recipient: str, tmp_path: Path) -> None:
    """A ca_file that is not a certificate gives a tls_certificate result, not a traceback."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    result = _send(replace(config, ca_file=bad), recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_CERTIFICATE)


@pytest.mark.parametrize(("reply", "queue_id"), [
    ("2.0.0 Ok: queued as 4F1B2C3D5E", "4F1B2C3D5E"),
    ("OK id=1rAbCd-000Xyz-7Q", "1rAbCd-000Xyz-7Q"),
    ("2.6.0 <a1@probe.contoso.test> [InternalId=98784247809, Hostname=EX01.fourthcoffee.com] "
     "Queued mail for delivery", "98784247809"),
    # Exchange 2016/2019 and Exchange Online: size and rate after the brackets
    ("2.6.0 <a1@probe.contoso.test> [InternalId=105849469029151, Hostname=AS8PR07MB7669.eurprd07.prod.outlook.com] "
     "29353 bytes in 0.060, 472.320 KB/sec Queued mail for delivery", "105849469029151"),
    # Exchange 2010: the InternalId alone
    ("2.6.0 <20111025103822.7F94E1C0299@nagios.fourthcoffee.com> [InternalId=274498] Queued mail for delivery",
     "274498"),
    ("2.0.0 OK", None),
])
def test_queue_id_forms(reply: str, queue_id: str | None) -> None:
    """The queue id is read from the Postfix, Exim and Exchange forms of the final 250."""
    assert _queue_id(reply) == queue_id


# -- implicit TLS: the lab's smart hosts speak STARTTLS only, so a small aiosmtpd server serves TLS from byte one.

@dataclass
class _ImplicitServer:
    host: str
    port: int
    username: str
    password: Secret
    received: list[bytes]


class _ExchangeLikeHandler:
    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append(bytes(envelope.original_content or b""))
        return ("250 2.6.0 <a1@probe.contoso.test> [InternalId=12884901889, Hostname=EX01.fourthcoffee.test] "
                "Queued mail for delivery")


@pytest.fixture
def implicit_server(lab: Lab) -> Iterator[_ImplicitServer]:
    """Serve SMTP over implicit TLS, certificate from the lab CA, AUTH LOGIN only."""
    username, password = "relay@fourthcoffee.test", Secret("implicit-" + uuid.uuid4().hex)
    context = lab.ca.issue("implicit-edge", ["127.0.0.1"]).server_context()
    received: list[bytes] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == username.encode() \
            and data.password == password.reveal().encode()
        return AuthResult(success=ok, handled=False)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    factory = lambda: SMTP(_ExchangeLikeHandler(received), hostname="implicit-edge", loop=loop,  # noqa: E731
                           authenticator=authenticate, auth_required=True, auth_require_tls=False,
                           auth_exclude_mechanism=["PLAIN"])
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(factory, "127.0.0.1", 0, ssl=context), loop).result(10)
    try:
        yield _ImplicitServer("127.0.0.1", server.sockets[0].getsockname()[1], username, password, received)
    finally:
        async def shut() -> None:  # on the loop's own thread: asyncio servers are not thread-safe
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


_AUTH_WITHOUT_TLS_WARNING = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning")  # aiosmtpd's; the server is TLS throughout


@_AUTH_WITHOUT_TLS_WARNING
def test_implicit_tls_with_auth_login(lab: Lab, implicit_server: _ImplicitServer, recipient: str) -> None:
    """Implicit TLS speaks TLS from the first byte, authenticates with LOGIN hidden, reads Exchange's queue id."""
    config = SmartHostConfig(name="implicit-edge", host=implicit_server.host, port=implicit_server.port,
                             tls="implicit", username=implicit_server.username,
                             password=implicit_server.password, ca_file=lab.ca_file, timeout=5.0)
    result = _send(config, recipient)
    assert result.ok, result.error
    assert result.queue_id == "12884901889"
    assert result.enhanced_code == "2.6.0"
    assert result.tls is not None
    assert result.tls.verified
    assert Stage.STARTTLS in result.stage_seconds  # the handshake, timed as the TLS stage
    assert "C: STARTTLS" not in result.transcript
    assert "C: AUTH LOGIN <secret>" in result.transcript
    assert "C: <secret>" in result.transcript  # the password line of LOGIN
    assert len(implicit_server.received) == 1
    _assert_no_secrets(result, implicit_server.username, implicit_server.password.reveal())


@_AUTH_WITHOUT_TLS_WARNING
def test_implicit_tls_checks_the_certificate(implicit_server: _ImplicitServer, recipient: str) -> None:
    """Implicit TLS without the lab CA trusted fails at starttls as tls_certificate, before any SMTP."""
    config = SmartHostConfig(name="implicit-edge", host=implicit_server.host, port=implicit_server.port,
                             tls="implicit", username=implicit_server.username,
                             password=implicit_server.password, timeout=5.0)
    result = _send(config, recipient)
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_CERTIFICATE)
    assert result.transcript == ()
    assert implicit_server.received == []


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
