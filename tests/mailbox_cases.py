"""What the tests of the IMAP and Graph backends share: Exchange's reports about a probe, what a search must make
of them, and the lab's mailbox faults with the reason each must give."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

from probe.dsn import DsnAction, read_report
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.mailbox.base import SearchResult
from probe.message import build_probe_message
from probe.vocabulary import MailboxFolder, MailboxReason

REPORT_TO: Final = "mailflow.probe@contoso.test"
MAILBOX_FAULTS: Final = [  # (kind, params, reason): each fault of ews|imap|graph/FOREST and the reason it gives
    ("unauthorized", {}, MailboxReason.UNAUTHORIZED),
    ("server_error", {}, MailboxReason.SERVER_ERROR),
    ("server_busy", {"back_off_ms": 100}, MailboxReason.THROTTLED),
    ("unreachable", {}, MailboxReason.UNREACHABLE),
]


def exchange_report(*, key: bytes, mailbox: str, delayed: bool = False) -> tuple[str, bytes]:
    """Return a probe id and an Exchange NDR (or delay notification) of its message, as if sent from ``mailbox``."""
    original = build_probe_message(key=key, route="fourthcoffee-to-contoso", smart_host="contoso-edge-1",
                                   sender=mailbox, recipient=REPORT_TO)
    now = datetime.now(UTC)
    notice = Notice(status="4.4.7" if delayed else "5.1.1", recipient=REPORT_TO, sender=mailbox,
                    postmaster="postmaster@contoso.test", reporting_mta="CONTOSO-MBX-1.contoso.test", arrival=now,
                    when=now)
    build = delay_notification if delayed else non_delivery_report
    return original.probe_id, build(original.raw, notice)


def assert_probe_and_reports(result: SearchResult, again: SearchResult, *, probe_id: str, bounced: str,
                             delayed: str, key: bytes) -> None:
    """Assert that a search (and the next) found the probe as a sighting and the NDR and delay notification of
    ``bounced`` and ``delayed`` as reports, which probe.dsn reads as failed and delayed, arrived just now in Inbox."""
    assert [s.probe_id for s in result.sightings] == [probe_id]
    assert sorted(r.probe_id for r in result.reports) == sorted([bounced, delayed])
    assert sorted(r.probe_id for r in again.reports) == sorted([bounced, delayed])
    actions = {r.probe_id: read_report(r.raw, key=key).report for r in result.reports}
    assert {p: (a.action if a else None) for p, a in actions.items()} == {
        bounced: DsnAction.FAILED, delayed: DsnAction.DELAYED}
    report = next(r for r in result.reports if r.probe_id == bounced)
    assert report.folder == MailboxFolder.INBOX
    assert abs(report.received_local - time.time()) < 30
