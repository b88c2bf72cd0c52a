"""The connector probe's EWS submission (CreateItem SendOnly from the sender's mailbox) against the lab's endpoint:
what it sends, when it counts as accepted, and each failure in the send vocabulary, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from probe.config import Config, load_config
from probe.lab import Lab
from probe.message import build_probe_message
from probe.submit.ews import send_from_mailbox
from probe.vocabulary import SendReason, Stage

SENDER = "mailflow.probe@contoso.test"
RECIPIENT = "mailflow.probe@fourthcoffee.test"

pytestmark = pytest.mark.usefixtures("fresh_exchangelib")


@pytest.fixture
def config(lab: Lab, tmp_path: Path) -> Config:
    return load_config(lab.write_probe_config(tmp_path / "p.yaml", interval=60, timeout=10, jitter=1,
                                              connector="ews"))


def probe(sender: str = SENDER) -> bytes:
    return build_probe_message(key=b"k" * 32, route="contoso-to-fourthcoffee", smart_host="@connector",
                               sender=sender, recipient=RECIPIENT).raw


def test_an_accepted_submission_is_timed_at_the_createitem_answer(lab: Lab, config: Config) -> None:
    """A good submission is ok, accepted between the call and its return, one CreateItem, its transcript without
    credentials (the NTLM handshake's 401s and the 200s) and the source server's Date."""
    before = lab.stats.ews_requests("CreateItem", "contoso")
    start = time.time()
    result = send_from_mailbox(config.mailboxes["contoso"], message=probe())
    assert result.ok, result.error
    assert result.accepted_at is not None
    assert start <= result.accepted_at <= time.time()
    assert lab.stats.ews_requests("CreateItem", "contoso") == before + 1
    assert any(line.startswith("S: 200") for line in result.transcript)
    assert result.transcript[-1].startswith("source server Date: ")
    password = lab.forests["contoso"].ews_password.reveal()
    assert not any(password in line for line in result.transcript)


@pytest.mark.parametrize(("fault", "stage", "reason"), [
    ({"kind": "unauthorized"}, Stage.AUTH, SendReason.AUTH_FAILED),
    ({"kind": "unreachable"}, Stage.CONNECT, SendReason.REFUSED),
    ({"kind": "server_error"}, Stage.DATA, SendReason.TEMPFAIL),
    ({"kind": "server_busy", "back_off_ms": 10}, Stage.DATA, SendReason.TEMPFAIL),
], ids=lambda v: v["kind"] if isinstance(v, dict) else None)
def test_a_source_endpoint_fault_is_a_send_failure_in_the_send_vocabulary(
        lab: Lab, config: Config, fault: dict[str, object], stage: Stage, reason: SendReason) -> None:
    """The source forest's EWS refusing or failing: a result with DESIGN.md's stage and reason, no traceback."""
    lab.add_fault(target="ews/contoso", **fault)  # type: ignore[arg-type]
    result = send_from_mailbox(config.mailboxes["contoso"], message=probe())
    assert (result.ok, result.stage, result.reason) == (False, stage, reason), result.error
    assert result.error is not None
    assert "Traceback" not in result.error


def test_a_message_the_mailbox_may_not_send_is_rejected_at_data(lab: Lab, config: Config) -> None:
    """ErrorSendAsDenied (a From that is not the mailbox) is the server refusing the message: data/rejected."""
    result = send_from_mailbox(config.mailboxes["contoso"], message=probe(sender="ceo@contoso.test"))
    assert (result.ok, result.stage, result.reason) == (False, Stage.DATA, SendReason.REJECTED)
    assert "ErrorSendAsDenied" in (result.smtp_reply or "")


def test_a_mailbox_without_an_ews_section_is_a_callers_mistake(config: Config) -> None:
    """Only an EWS mailbox can send over EWS: asking another is a programming error, raised at once."""
    from dataclasses import replace

    mailbox = replace(config.mailboxes["contoso"], backend=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="has no ews: section"):
        send_from_mailbox(mailbox, message=probe())


def test_the_servers_version_is_guessed_once_per_endpoint(lab: Lab, config: Config) -> None:
    """Without a configured version the first submission asks for it; the next ones reuse its answer (one EWS
    request a submission: the CreateItem)."""
    mailbox = config.mailboxes["contoso"]
    counts = []
    for _ in range(3):
        before = lab.stats.ews_requests(forest="contoso")
        assert send_from_mailbox(mailbox, message=probe()).ok
        counts.append(lab.stats.ews_requests(forest="contoso") - before)
    assert counts == [2, 1, 1]
