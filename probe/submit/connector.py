"""A route's connector probe, submitted into the source forest the way its ``connector:`` section says.

One row per way of submitting (DESIGN.md: ``submit: ews | smtp``); each gives a SubmitResult like a direct
submission's, so the rest of the flow (ledger, metrics, report) is the same for both kinds of probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from probe.config import ConnectorConfig, MailboxConfig, SmartHostConfig, SubmitWay
from probe.smtp import SubmitResult, submit
from probe.submit.ews import send_from_mailbox
from probe.vocabulary import CONNECTOR_PAIR


@dataclass(frozen=True, kw_only=True)
class Submission:
    """One connector probe to submit: how, from whom (and which mailbox, for ews), to whom, what."""

    connector: ConnectorConfig
    source: MailboxConfig | None  # the sender's own mailbox (submit: ews)
    sender: str
    recipient: str
    message: bytes


def submission_host(connector: ConnectorConfig) -> SmartHostConfig:
    """Return the source forest's submission server (``submit: smtp``) as the SMTP submit step reaches it."""
    if connector.host is None:
        raise ValueError("submit: smtp needs a host")
    return SmartHostConfig(
        name=CONNECTOR_PAIR, host=connector.host, port=connector.port, tls=connector.tls,
        username=connector.username, password=connector.password, ca_file=connector.ca_file,
        server_name=connector.server_name, verify=connector.verify, allow_insecure=connector.allow_insecure,
        timeout=connector.timeout, helo=connector.helo,
    )


def _by_ews(submission: Submission) -> SubmitResult:
    if submission.source is None:
        raise ValueError("submit: ews needs the sender's mailbox")
    return send_from_mailbox(submission.source, message=submission.message)


def _by_smtp(submission: Submission) -> SubmitResult:
    return submit(host=submission_host(submission.connector), sender=submission.sender,
                  recipient=submission.recipient, message=submission.message)


SUBMITTERS: Final[dict[SubmitWay, Callable[[Submission], SubmitResult]]] = {"ews": _by_ews, "smtp": _by_smtp}


def submit_connector_probe(submission: Submission) -> SubmitResult:
    """Submit a connector probe the way its route's connector says; never raise for the network."""
    return SUBMITTERS[submission.connector.submit](submission)
