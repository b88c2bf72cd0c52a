"""The probe's data flow, step by step: submit -> ledger -> confirm -> ledger (DESIGN.md).

The one-shot check and the daemon both drive these functions; neither decides a verdict itself.
What happens is reported to an ``Observer`` (metrics, logs, the check's table).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from probe.config import Config, MailboxConfig, RouteConfig, SmartHostConfig
from probe.dsn import DsnAction, read_report
from probe.ledger import Arrival, Decision, Ledger, ReportArrival
from probe.mailbox.base import Mailbox, ReportCandidate, SearchResult, Sighting
from probe.message import build_probe_message
from probe.smtp import SubmitResult, submit
from probe.vocabulary import LocalResource, UnknownReason


@dataclass(frozen=True, kw_only=True)
class Target:
    """One (route, smart host) pair: what one probe is sent through and where it should land."""

    route: RouteConfig
    smart_host: SmartHostConfig
    mailbox: MailboxConfig
    recipient: str
    bounces: str | None = None  # the mailbox the route's NDRs come back to (Config.bounces_mailbox_of)

    @property
    def key(self) -> tuple[str, str]:
        """Return (route name, smart host name)."""
        return (self.route.name, self.smart_host.name)


class Observer(Protocol):
    """What wants to hear of each step: metrics, logs, a report."""

    def on_submit(self, target: Target, result: SubmitResult) -> None:
        """Hear the outcome of one submission."""

    def on_search(self, mailbox: str, result: SearchResult) -> None:
        """Hear the outcome of one mailbox search."""

    def on_decision(self, decision: Decision) -> None:
        """Hear a verdict the ledger has decided."""

    def on_delayed(self, probe_id: str, report: dict[str, Any]) -> None:
        """Hear that a probe's delivery was reported delayed (a warning, never a verdict)."""

    def on_local_fault(self, resource: LocalResource, what: str) -> None:
        """Hear that the probe's own host ran out of ``resource`` while doing ``what`` (probe.local_faults)."""


class NullObserver:
    """An observer that ignores everything."""

    def on_submit(self, target: Target, result: SubmitResult) -> None:
        """Ignore a submission."""

    def on_search(self, mailbox: str, result: SearchResult) -> None:
        """Ignore a search."""

    def on_decision(self, decision: Decision) -> None:
        """Ignore a decision."""

    def on_delayed(self, probe_id: str, report: dict[str, Any]) -> None:
        """Ignore a delay notification."""

    def on_local_fault(self, resource: LocalResource, what: str) -> None:
        """Ignore a local fault."""


def targets(config: Config, routes: Iterable[str] | None = None) -> list[Target]:
    """Return every (route, smart host) pair of the chosen routes (all when ``routes`` is None)."""
    wanted = None if routes is None else set(routes)
    return [
        Target(route=route, smart_host=host, mailbox=config.mailboxes[route.mailbox],
               recipient=config.recipient_of(route), bounces=config.bounces_mailbox_of(route))
        for route in config.routes if wanted is None or route.name in wanted
        for host in route.smart_hosts
    ]


def send_probe(target: Target, *, key: bytes, ledger: Ledger, observer: Observer,
               timeout: float | None = None, clock: Callable[[], float] = time.time) -> Decision | None:
    """Build, record and submit one probe; return the send_failed (or local unknown) decision, or None when accepted."""
    message = build_probe_message(key=key, route=target.route.name, smart_host=target.smart_host.name,
                                  sender=target.route.sender, recipient=target.recipient)
    ledger.open_probe(probe_id=message.probe_id, route=target.route.name, smart_host=target.smart_host.name,
                      mailbox=target.mailbox.name, message_id=message.message_id,
                      deadline=clock() + (timeout if timeout is not None else target.route.timeout),
                      bounce_mailbox=target.bounces)
    result = submit(host=target.smart_host, sender=target.route.sender, recipient=target.recipient,
                    message=message.raw)
    detail = submit_detail(result)
    if result.local is not None:  # the host failed, not the smart host: unknown (local), no send counted
        observer.on_local_fault(result.local, f"sending through {target.smart_host.name}")
        local = ledger.record_local_failure(message.probe_id, resource=result.local, detail=detail)
        if local is not None:
            observer.on_decision(local)
        return local
    observer.on_submit(target, result)
    if result.ok and result.accepted_at is not None:
        early = ledger.record_accepted(message.probe_id, accepted_at=result.accepted_at,
                                       smtp_code=result.smtp_code, detail=detail)
        if early is not None:  # the mailbox saw it before this thread got the 250 recorded
            observer.on_decision(early)
        return None
    decision = ledger.record_send_failure(
        message.probe_id, stage=str(result.stage or "connect"), reason=str(result.reason or "protocol"),
        smtp_code=result.smtp_code, detail=detail)
    if decision is not None:
        observer.on_decision(decision)
    return decision


def submit_detail(result: SubmitResult) -> dict[str, Any]:
    """Return what the debug view shows of a submission: transcript, TLS facts, timings, reply."""
    tls = result.tls
    return {
        "transcript": list(result.transcript),
        "smtp_reply": result.smtp_reply,
        "enhanced_code": result.enhanced_code,
        "queue_id": result.queue_id,
        "error": result.error,
        "stage_seconds": {str(k): round(v, 6) for k, v in result.stage_seconds.items()},
        "tls": None if tls is None else {
            "version": tls.version, "cipher": tls.cipher,
            "not_after": tls.not_after.isoformat() if tls.not_after else None, "resumed": tls.resumed,
        },
    }


def confirm(mailbox_name: str, mailbox: Mailbox, *, key: bytes, ledger: Ledger, observer: Observer,
            late_window: float, cleanup: bool = True, search_deadline: float | None = None) -> list[Decision]:
    """Search one mailbox once for every probe in flight to it and every report of the probes bouncing to it;
    record what it saw; clean up."""
    probe_ids, since = ledger.watch_list(mailbox_name, late_window=late_window)
    report_ids, reports_since = ledger.report_watch_list(mailbox_name, late_window=late_window)
    oldest = min((t for t in (since, reports_since) if t is not None), default=None)
    decisions: list[Decision] = []
    if (probe_ids or report_ids) and oldest is not None:
        result = mailbox.search(probe_ids, since=oldest, deadline=search_deadline, reports_for=report_ids)
        reports, forged = _read_reports(result.reports, key)
        observer.on_search(mailbox_name, replace(result, forged=result.forged + forged) if forged else result)
        decisions = _record_sightings(ledger, result.sightings, observer)
        decisions += _record_reports(ledger, reports, observer)
        ledger.record_observation(mailbox_name, ok=result.ok, started_at=result.started_at,
                                  finished_at=result.finished_at,
                                  reason=_observation_reason(result))
    if cleanup:
        clean_up(mailbox_name, mailbox, ledger=ledger)
    return decisions


def _observation_reason(result: SearchResult) -> str | None:
    if result.error_reason is not None:
        return str(result.error_reason)
    return None if result.local is None else str(UnknownReason.LOCAL)


def _record_sightings(ledger: Ledger, sightings: Sequence[Sighting], observer: Observer) -> list[Decision]:
    """Record a search's sightings in one transaction, then report each verdict it decided."""
    decisions = ledger.record_arrivals(Arrival(
        probe_id=s.probe_id, item=s.item, folder=str(s.folder),
        received_at=s.received_local, seen_at=s.first_seen_local,
        detail={"hops": [hop.to_json() for hop in s.hops], "folder": str(s.folder),
                "received_server": s.received_server.isoformat()},
    ) for s in sightings)
    for decision in decisions:
        observer.on_decision(decision)
    return decisions


def _read_reports(candidates: Sequence[ReportCandidate], key: bytes) -> tuple[list[ReportArrival], int]:
    """Read each candidate as a DSN (probe.dsn); return the verified reports, and how many were forged."""
    reports: list[ReportArrival] = []
    forged = 0
    for candidate in candidates:
        reading = read_report(candidate.raw, key=key)
        report = reading.report
        if report is None or report.probe_id != candidate.probe_id:
            if reading.forged or report is not None:  # a bad tag, or a report naming another probe than its subject
                forged += 1
            continue
        reports.append(ReportArrival(
            probe_id=report.probe_id, mailbox=candidate.mailbox, item=candidate.item, folder=str(candidate.folder),
            received_at=candidate.received_local, seen_at=candidate.first_seen_local,
            delayed=report.action is DsnAction.DELAYED, reason=str(report.reason),
            facts={**report.to_json(), "received_server": candidate.received_server.isoformat()}))
    return reports, forged


def _record_reports(ledger: Ledger, reports: Sequence[ReportArrival], observer: Observer) -> list[Decision]:
    """Record a search's verified reports in one transaction; report the verdicts and new delay warnings."""
    if not reports:
        return []
    recorded = ledger.record_reports(reports)
    facts = {r.probe_id: r.facts for r in reports if r.delayed}
    for probe_id in recorded.delayed:
        observer.on_delayed(probe_id, facts[probe_id])
    for decision in recorded.decisions:
        observer.on_decision(decision)
    return recorded.decisions


def clean_up(mailbox_name: str, mailbox: Mailbox, *, ledger: Ledger) -> int:
    """Delete (the configured way) verified probe messages already counted; return how many."""
    pending = ledger.pending_cleanup(mailbox_name)
    if not pending:
        return 0
    result = mailbox.cleanup(pending)
    if not result.ok:
        return 0  # kept for the next round; the mailbox error is reported by the searches
    ledger.mark_cleaned(mailbox_name, pending)
    return result.deleted


def expire(ledger: Ledger, *, observer: Observer, unknown_after: float, now: float | None = None) -> list[Decision]:
    """Decide the probes past their deadline (lost or unknown) and tell the observer."""
    decisions = ledger.expire(now=now, unknown_after=unknown_after)
    for decision in decisions:
        observer.on_decision(decision)
    return decisions
