"""TLS session resumption per smart host: cheaper probes, and every certificate verified every few minutes."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import pytest

from probe.config import SmartHostConfig
from probe.lab import Lab
from probe.smtp import SubmitResult, _tls_context, submit
from probe.tls_sessions import FULL_HANDSHAKE_EVERY, TlsSessions
from probe.vocabulary import SendReason, Stage

SENDER = "mailflow.probe@contoso.test"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sessions = TlsSessions(clock=self)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """Return a clock the test moves, with the sessions the test's submissions keep (on that clock)."""
    return Clock()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.start(tmp_path_factory.mktemp("lab")) as started:
        yield started


@pytest.fixture(autouse=True)
def _no_faults_after(lab: Lab) -> Iterator[None]:
    yield
    lab.clear_faults()


def host_config(lab: Lab, index: int = 0, *, tls: str = "starttls") -> SmartHostConfig:
    edge = lab.forests["fourthcoffee"].smart_hosts[index]
    config = SmartHostConfig(name=edge.name, host=edge.host, port=edge.port, username=edge.username,
                             password=edge.password, ca_file=lab.ca_file, timeout=5.0)
    return replace(config, tls=tls)  # type: ignore[arg-type]


def send(lab: Lab, config: SmartHostConfig, clock: Clock) -> SubmitResult:
    recipient = lab.forests["fourthcoffee"].mailboxes[0]
    raw = (f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: probe\r\nMessage-ID: <{uuid.uuid4().hex}@contoso.test>"
           "\r\n\r\nA probe.\r\n").encode()
    return submit(host=config, sender=SENDER, recipient=recipient, message=raw, sessions=clock.sessions)


def test_a_smart_host_session_is_resumed_until_a_full_handshake_is_due(lab: Lab, clock: Clock) -> None:
    """The first probe does a full handshake, the next ones resume it with the same certificate facts, and
    once FULL_HANDSHAKE_EVERY has passed since the full one, the next probe does a full handshake again."""
    config = host_config(lab)
    first = send(lab, config, clock)
    clock.now += 60
    second, third = send(lab, config, clock), send(lab, config, clock)
    clock.now += FULL_HANDSHAKE_EVERY - 60
    fourth = send(lab, config, clock)
    clock.now += 1
    fifth = send(lab, config, clock)
    results = [first, second, third, fourth, fifth]
    assert all(r.ok for r in results), [r.error for r in results]
    resumed = [r.tls.resumed for r in results if r.tls is not None]
    assert resumed == [False, True, True, False, True]
    facts = {(r.tls.not_after, r.tls.subject, r.tls.issuer, r.tls.verified) for r in results if r.tls is not None}
    assert len(facts) == 1
    assert next(iter(facts))[3] is True  # verified


def test_a_session_is_never_offered_to_another_smart_host_or_with_another_context(lab: Lab, clock: Clock) -> None:
    """Each smart host resumes only its own sessions; a changed CA file (a new context) starts afresh."""
    one, two = host_config(lab, 0), host_config(lab, 1)
    assert send(lab, one, clock).tls.resumed is False  # type: ignore[union-attr]
    assert send(lab, two, clock).tls.resumed is False  # type: ignore[union-attr]
    assert send(lab, one, clock).tls.resumed is True  # type: ignore[union-attr]
    sessions = clock.sessions
    key = (one.host, one.port, one.host)
    context = _tls_context(one)
    assert sessions.offer(key, context) is not None
    assert sessions.offer(key, ssl.create_default_context(cafile=str(lab.ca_file))) is None


def test_a_certificate_that_fails_is_caught_and_the_session_dropped(lab: Lab, clock: Clock) -> None:
    """After a good probe, the host presents an untrusted certificate: the probe fails (tls_certificate) and its
    host's session is gone, so the probe after the fault is lifted does a full handshake."""
    config = host_config(lab)
    assert send(lab, config, clock).ok
    lab.add_fault(target=f"smarthost/{lab.forests['fourthcoffee'].smart_hosts[0].name}", kind="untrusted_cert")
    failed = send(lab, config, clock)
    assert (failed.ok, failed.stage, failed.reason) == (False, Stage.STARTTLS, SendReason.TLS_CERTIFICATE)
    lab.clear_faults()
    after = send(lab, config, clock)
    assert after.ok
    assert after.tls is not None
    assert after.tls.resumed is False


def test_the_session_store_alone() -> None:
    """offer/keep/forget: a full handshake's session is offered until FULL_HANDSHAKE_EVERY after it, never with
    another context, and forget drops it."""
    clock = Clock()
    sessions = TlsSessions(max_age=300, clock=clock)
    context = ssl.create_default_context()
    key = ("edge", 25, "edge")
    full, newer = cast(ssl.SSLSession, object()), cast(ssl.SSLSession, object())
    assert sessions.offer(key, context) is None
    sessions.keep(key, context, full)
    assert sessions.offer(key, context) is full
    clock.now += 299
    assert sessions.offer(key, context) is full
    assert sessions.offer(key, ssl.create_default_context()) is None  # another context: dropped
    assert sessions.offer(key, context) is None
    sessions.keep(key, context, full)
    clock.now += 300
    assert sessions.offer(key, context) is None
    sessions.keep(key, context, newer)
    assert sessions.offer(key, context) is newer
    sessions.forget(key)
    assert sessions.offer(key, context) is None


def test_a_store_that_never_resumes_makes_every_handshake_full(lab: Lab) -> None:
    """With max_age 0 (bench/submit.py's full-handshake row) every probe does a full handshake."""
    clock = Clock()
    clock.sessions = TlsSessions(max_age=0, clock=clock)
    results = [send(lab, host_config(lab), clock) for _ in range(3)]
    assert [r.tls.resumed for r in results if r.tls] == [False, False, False]
    assert not clock.sessions.resumes
