"""The submit step against a real Postfix smart host (Debian's, with Dovecot SASL) relaying to the lab.

One Postfix offers STARTTLS with a lab certificate and AUTH only under TLS, and relays fourthcoffee.test
to the lab's fourthcoffee-edge-1 with STARTTLS and AUTH of its own; a second one has TLS off and offers
AUTH in the clear, a downgraded host that invites credentials. Both share one Dovecot for SASL.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from exchangelib.protocol import close_connections

from probe.check import CheckOptions, run_check
from probe.config import SmartHostConfig, load_config
from probe.lab import Lab
from probe.lab.store import StoredItem
from probe.message import ProbeMessage, build_probe_message
from probe.secret import Secret
from probe.smtp import MECHANISMS as PLAIN_FIRST
from probe.smtp import SubmitResult, submit
from probe.vocabulary import SendReason, Stage, Verdict
from tests.postfix import (
    DovecotAuth,
    PostfixSmartHost,
    Relay,
    missing_parts,
    process_tree,
    reachable_directory,
    smtpd_sessions,
    tcp_listeners,
)

pytestmark = pytest.mark.postfix

ROUTE = "contoso-to-fourthcoffee"
SENDER = "mailflow.probe@contoso.test"
RECIPIENT = "mailflow.probe@fourthcoffee.test"
RELAY_TARGET = "fourthcoffee-edge-1"
TLS_ADDRESS = "127.0.0.55"  # 127.0.0.53 and .54 are systemd-resolved's on machines that have it
PLAIN_ADDRESS = "127.0.0.56"
USERNAME = "probe-relay@contoso.test"
UTF8_USERNAME = "probe-utf8@contoso.test"
UTF8_PASSWORD = Secret("Pässwörd-2026")  # Dovecot's passwd-file holds it in UTF-8, as SASL PLAIN sends it
WAIT = 15.0

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Rig:
    """The lab, the two Postfix smart hosts in front of it, Dovecot, and the probe's account."""

    lab: Lab
    postfix: PostfixSmartHost
    plain: PostfixSmartHost
    dovecot: DovecotAuth
    password: Secret
    directory: Path


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """Start the lab, two private Postfix instances and Dovecot; stop them all at the end, even on failure."""
    missing = missing_parts()
    if missing:
        pytest.fail("the Postfix smart host tests need " + "; ".join(missing), pytrace=False)
    directory = reachable_directory("mailflow-postfix-")  # not tmp_path: see its docstring; removed below
    password = Secret(secrets.token_urlsafe(18))
    try:
        with ExitStack() as stack:
            lab = stack.enter_context(Lab.start(directory / "lab", smart_hosts_per_forest=1))
            edge = lab.smart_host(RELAY_TARGET)
            relay = Relay(domain=edge.domain, host=edge.host, port=edge.port, username=edge.username,
                          password=edge.password, ca_file=lab.ca_file)
            postfix, plain = (
                PostfixSmartHost.configure(directory / name, address=address, relay=relay, tls=tls,
                                           cert=lab.ca.issue(f"postfix-{name}", [address]))
                for name, address, tls in (("tls", TLS_ADDRESS, True), ("plain", PLAIN_ADDRESS, False)))
            dovecot = stack.enter_context(DovecotAuth.start(
                directory / "dovecot", users={USERNAME: password, UTF8_USERNAME: UTF8_PASSWORD},
                sockets=[postfix.auth_socket, plain.auth_socket]))
            for instance in (postfix, plain):
                stack.enter_context(instance.start())  # ~2 s each, mostly postfix-script's checks
            yield Rig(lab=lab, postfix=postfix, plain=plain, dovecot=dovecot, password=password,
                      directory=directory)
    finally:
        close_connections()
        shutil.rmtree(directory, ignore_errors=True)


def smart_host(rig: Rig, postfix: PostfixSmartHost, *, password: Secret | None = None) -> SmartHostConfig:
    """Return the probe's view of ``postfix``: STARTTLS, the lab CA, the Dovecot account."""
    return SmartHostConfig(name=f"postfix-{postfix.directory.name}", host=postfix.address, port=postfix.port,
                           tls="starttls", username=USERNAME, password=password or rig.password,
                           ca_file=rig.lab.ca_file, timeout=20)


def send(rig: Rig, host: SmartHostConfig) -> tuple[ProbeMessage, SubmitResult]:
    """Build a probe message for ``host`` and submit it there."""
    message = build_probe_message(key=b"k" * 32, route=ROUTE, smart_host=host.name, sender=SENDER,
                                  recipient=RECIPIENT)
    return message, submit(host=host, sender=SENDER, recipient=RECIPIENT, message=message.raw)


def wait_for(produce: Callable[[], T | None], what: str, *, timeout: float = WAIT) -> T:
    """Return ``produce()``'s first value that is not None, or fail naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while (value := produce()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.1)
    return value


def arrived(rig: Rig, message_id: str) -> StoredItem | None:
    """Return the item with ``message_id`` in the recipient's inbox at the lab, if it is there."""
    items = rig.lab.store.items(RECIPIENT, ["inbox"])
    return next((i for i in items if i.message_id == message_id), None)


def new_sessions(postfix: PostfixSmartHost, since: int) -> list[list[str]]:
    """Return the finished smtpd sessions Postfix logged after byte ``since`` of its maillog."""
    sessions = smtpd_sessions(postfix.maillog()[since:])
    return [s for s in sessions if "disconnect from " in s[-1]]


def test_the_probe_delivers_through_postfix_to_the_lab(rig: Rig) -> None:
    """Postfix takes the probe after STARTTLS and AUTH, says its queue id, and relays it on to the mailbox."""
    message, result = send(rig, smart_host(rig, rig.postfix))
    assert result.ok, result
    assert result.smtp_code == 250
    assert result.queue_id is not None
    assert f"S: 250 2.0.0 Ok: queued as {result.queue_id}" in result.transcript
    item = wait_for(lambda: arrived(rig, message.message_id), "probe message in the lab mailbox")
    postfix_received = [v for k, v in item.headers if k.lower() == "received" and "(Postfix)" in v]
    assert len(postfix_received) == 1, item.headers
    assert re.search(rf"by postfix\.contoso\.test \(Postfix\) with ESMTPSA id {result.queue_id}\b",
                     " ".join(postfix_received[0].split()))
    sent = wait_for(lambda: re.search(rf"{result.queue_id}: to=<{RECIPIENT}>, relay=.*status=sent",
                                      rig.postfix.maillog()), "relay line in the maillog")
    assert f"[{rig.lab.smart_host(RELAY_TARGET).host}]" in sent.group(0)


def test_check_delivers_through_postfix(rig: Rig) -> None:
    """The whole check (submit, search, verdict) through Postfix, configured from YAML, comes out delivered."""
    password_file = rig.directory / "postfix-password"
    password_file.write_text(rig.password.reveal() + "\n")
    password_file.chmod(0o600)
    path = rig.lab.write_probe_config(rig.directory / "probe.yaml", interval=60, timeout=20, jitter=1,
                                      routes=[ROUTE])
    data = yaml.safe_load(path.read_text())
    data["routes"][0]["smart_hosts"] = [{
        "name": "postfix", "host": rig.postfix.address, "port": rig.postfix.port, "tls": "starttls",
        "username": USERNAME, "password_file": str(password_file), "ca_file": str(rig.lab.ca_file),
        "timeout": "20s"}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    outcome = run_check(load_config(path), CheckOptions(poll_seconds=0.25))
    assert [(d.smart_host, d.verdict, d.smtp_code) for d in outcome.decisions] == [
        ("postfix", Verdict.DELIVERED, 250)], outcome.decisions


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_non_ascii_password_delivers_through_postfix(rig: Rig, mechanism: str) -> None:
    """Pässwörd-2026 goes to Postfix/Dovecot in UTF-8 (RFC 4616) with PLAIN and with LOGIN: accepted, relayed,
    in the mailbox; the transcript shows neither the password nor its encoding."""
    host = replace(smart_host(rig, rig.postfix, password=UTF8_PASSWORD), username=UTF8_USERNAME)
    original = PLAIN_FIRST[:]
    PLAIN_FIRST[:] = [mechanism]
    try:
        message, result = send(rig, host)
    finally:
        PLAIN_FIRST[:] = original
    assert result.ok, result
    assert any(line.startswith(f"C: AUTH {mechanism}") for line in result.transcript), result.transcript
    assert not any(UTF8_PASSWORD.reveal() in line for line in result.transcript)
    wait_for(lambda: arrived(rig, message.message_id), "the probe sent with a non-ASCII password in the mailbox")


def test_a_wrong_password_is_auth_failed(rig: Rig) -> None:
    """Dovecot turns the password down: Postfix answers 535, the probe says auth_failed at stage auth."""
    since = len(rig.dovecot.log_text())
    _, result = send(rig, smart_host(rig, rig.postfix, password=Secret("not-the-password")))
    assert (result.ok, result.stage, result.reason, result.smtp_code) == (
        False, Stage.AUTH, SendReason.AUTH_FAILED, 535), result
    assert not any("not-the-password" in line for line in result.transcript)
    wait_for(lambda: "Password mismatch" in rig.dovecot.log_text()[since:] or None,
             "password mismatch in Dovecot's log")


def test_postfix_without_tls_is_tls_unavailable_and_never_sees_auth(rig: Rig) -> None:
    """Postfix with TLS off offers AUTH in the clear; the probe stops at starttls and sends no AUTH."""
    since_postfix, since_dovecot = len(rig.plain.maillog()), len(rig.dovecot.log_text())
    _, result = send(rig, smart_host(rig, rig.plain))
    assert (result.ok, result.stage, result.reason) == (False, Stage.STARTTLS, SendReason.TLS_UNAVAILABLE)
    assert any(line.startswith("S: 250") and "AUTH PLAIN LOGIN" in line for line in result.transcript)
    assert not any(line.startswith("C: AUTH") for line in result.transcript)
    sessions = wait_for(lambda: new_sessions(rig.plain, since_postfix) or None, "smtpd session in the maillog")
    assert len(sessions) == 1, sessions
    session = "\n".join(sessions[0])
    assert re.search(r"disconnect from unknown\[127\.0\.0\.1\] ehlo=1 quit=1 commands=2$", session), session
    assert "sasl" not in session.lower()
    assert "auth" not in session.lower()
    assert "auth" not in rig.dovecot.log_text()[since_dovecot:].lower()


def test_nothing_listens_off_loopback(rig: Rig) -> None:
    """Postfix listens on its one loopback address and port, Dovecot on no TCP port at all."""
    for postfix in (rig.postfix, rig.plain):
        pid = int((postfix.queue_dir / "pid" / "master.pid").read_text().split()[0])
        assert tcp_listeners(process_tree(pid)) == [(postfix.address, postfix.port)]
    pid = int(rig.dovecot.pid_file.read_text().split()[0])
    assert tcp_listeners(process_tree(pid)) == []
