"""The probe's data flow, step by step: submit -> ledger -> confirm -> ledger (DESIGN.md).

The one-shot check and the daemon both drive these functions; neither decides a verdict itself.
What happens is reported to an ``Observer`` (metrics, logs, the check's table).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from probe.carrier import carried_by
from probe.config import Config, MailboxConfig, RouteConfig, SmartHostConfig
from probe.dsn import DsnAction, read_report
from probe.ledger import Arrival, Decision, Ledger, ReportArrival
from probe.mailbox.base import Mailbox, ReportCandidate, SearchResult, Sighting
from probe.message import build_probe_message
from probe.smtp import SubmitResult, submit
from probe.submit.connector import Submission, submit_connector_probe
from probe.vocabulary import CONNECTOR_PAIR, LocalResource, UnknownReason

Carriers = Mapping[str, Sequence[SmartHostConfig]]
"""Each route's smart hosts, by route name: what a connector probe's Received chain is read against."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """One (route, smart host) pair: what one probe is sent through and where it should land.

    A direct probe has its ``smart_host``; a route's connector probe has none (the source forest's Send
    connector picks one) and is the pair ``(route, "@connector")``, sent from ``source`` with ``submit: ews``.
    """

    route: RouteConfig
    mailbox: MailboxConfig
    recipient: str
    smart_host: SmartHostConfig | None = None
    source: MailboxConfig | None = None  # the connector probe's sender mailbox (submit: ews)
    bounces: str | None = None  # the mailbox the route's NDRs come back to (Config.bounces_mailbox_of)

    @property
    def via(self) -> str:
        """Return the pair's smart_host label: the smart host's name, or "@connector"."""
        return self.smart_host.name if self.smart_host is not None else CONNECTOR_PAIR

    @property
    def key(self) -> tuple[str, str]:
        """Return (route name, smart host name or "@connector")."""
        return (self.route.name, self.via)


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
    """Return every (route, smart host) pair of the chosen routes (all when ``routes`` is None), each route's
    connector probe after its smart hosts."""
    wanted = None if routes is None else set(routes)
    chosen: list[Target] = []
    for route in config.routes:
        if wanted is not None and route.name not in wanted:
            continue
        mailbox, recipient = config.mailboxes[route.mailbox], config.recipient_of(route)
        bounces = config.bounces_mailbox_of(route)
        chosen += [Target(route=route, smart_host=host, mailbox=mailbox, recipient=recipient, bounces=bounces)
                   for host in route.smart_hosts]
        if route.connector is not None:
            chosen.append(Target(route=route, mailbox=mailbox, recipient=recipient, bounces=bounces,
                                 source=config.sender_mailbox(route)))
    return chosen


def carriers(config: Config) -> dict[str, tuple[SmartHostConfig, ...]]:
    """Return each route's smart hosts by route name (what ``confirm`` reads connector probes' chains against)."""
    return {route.name: route.smart_hosts for route in config.routes}


def _submit(target: Target, message: bytes) -> SubmitResult:
    """Submit straight to the target's smart host, or into the source forest for a connector probe."""
    sender = target.route.sender
    if target.smart_host is not None:
        return submit(host=target.smart_host, sender=sender, recipient=target.recipient, message=message)
    if target.route.connector is None:
        raise ValueError(f"route {target.route.name} has no connector")
    return submit_connector_probe(Submission(connector=target.route.connector, source=target.source, sender=sender,
                                             recipient=target.recipient, message=message))


def send_probe(target: Target, *, key: bytes, ledger: Ledger, observer: Observer,
               timeout: float | None = None, clock: Callable[[], float] = time.time) -> Decision | None:
    """Build, record and submit one probe; return the send_failed (or local unknown) decision, or None when accepted."""
    message = build_probe_message(key=key, route=target.route.name, smart_host=target.via,
                                  sender=target.route.sender, recipient=target.recipient)
    ledger.open_probe(probe_id=message.probe_id, route=target.route.name, smart_host=target.via,
                      mailbox=target.mailbox.name, message_id=message.message_id,
                      deadline=clock() + (timeout if timeout is not None else target.route.timeout),
                      bounce_mailbox=target.bounces)
    result = _submit(target, message.raw)
    detail = submit_detail(result)
    if result.local is not None:  # the host failed, not the smart host: unknown (local), no send counted
        observer.on_local_fault(result.local, f"sending through {target.via}")
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
            late_window: float, cleanup: bool = True, search_deadline: float | None = None,
            carriers: Carriers | None = None) -> list[Decision]:
    """Search one mailbox once for every probe in flight to it and every report of the probes bouncing to it;
    record what it saw; clean up.

    ``carriers`` (each route's smart hosts) lets a connector probe's arrival record which smart host carried it.
    """
    probe_ids, since = ledger.watch_list(mailbox_name, late_window=late_window)
    report_ids, reports_since = ledger.report_watch_list(mailbox_name, late_window=late_window)
    oldest = min((t for t in (since, reports_since) if t is not None), default=None)
    decisions: list[Decision] = []
    if (probe_ids or report_ids) and oldest is not None:
        result = mailbox.search(probe_ids, since=oldest, deadline=search_deadline, reports_for=report_ids)
        reports, forged = _read_reports(result.reports, key)
        observer.on_search(mailbox_name, replace(result, forged=result.forged + forged) if forged else result)
        decisions = _record_sightings(ledger, result.sightings, observer, carriers or {})
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


def _record_sightings(ledger: Ledger, sightings: Sequence[Sighting], observer: Observer,
                      carriers: Carriers) -> list[Decision]:
    """Record a search's sightings in one transaction, then report each verdict it decided."""
    pairs = ledger.pairs_of([s.probe_id for s in sightings if s.hops]) if carriers else {}
    decisions = ledger.record_arrivals(Arrival(
        probe_id=s.probe_id, item=s.item, folder=str(s.folder),
        received_at=s.received_local, seen_at=s.first_seen_local,
        detail={"hops": [hop.to_json() for hop in s.hops], "folder": str(s.folder),
                "received_server": s.received_server.isoformat(),
                **_carried(pairs.get(s.probe_id), s, carriers)},
    ) for s in sightings)
    for decision in decisions:
        observer.on_decision(decision)
    return decisions


def _carried(pair: tuple[str, str] | None, sighting: Sighting, carriers: Carriers) -> dict[str, Any]:
    """Return ``{"carried_by": name or None}`` for a connector probe's arrival, read from its Received chain."""
    if pair is None or pair[1] != CONNECTOR_PAIR or pair[0] not in carriers:
        return {}
    return {"carried_by": carried_by(sighting.hops, carriers[pair[0]])}


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
