"""The results of a mailbox search, built the same way by every backend.

A backend finds messages its own way; what it hands the confirm step is the same: a ``Sighting`` per probe,
a ``ReportCandidate`` per report, their arrival on the probe's clock (probe.mailbox.clock's
``local_arrival``), and a ``SearchResult`` with the clock offset estimate, or why the search failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from probe.local_faults import local_fault
from probe.mailbox.base import ItemRef, ReportCandidate, SearchResult, Sighting
from probe.mailbox.clock import ClockOffset, OffsetEstimate, local_arrival
from probe.mailbox.received import parse_received
from probe.vocabulary import MailboxFolder, MailboxReason


def sighting(*, probe_id: str, tag: str, mailbox: str, folder: MailboxFolder | str, item: ItemRef,
             message_id: str, subject: str, received: datetime, precise: bool, first_seen: float,
             estimate: OffsetEstimate | None, headers: Sequence[tuple[str, str]]) -> Sighting:
    """Return a probe's sighting: its arrival on the probe's clock, and its hops from the Received headers."""
    arrival = local_arrival(received_server=received.timestamp(), precise=precise, first_seen_local=first_seen,
                            offset=estimate)
    return Sighting(
        probe_id=probe_id, tag=tag, mailbox=mailbox, folder=folder, item=item, message_id=message_id,
        subject=subject, received_server=received, received_precise=precise, received_local=arrival.at,
        received_uncertainty=(arrival.latest - arrival.earliest) / 2, first_seen_local=first_seen,
        hops=parse_received([v for k, v in headers if k.lower() == "received"]))


def report_candidate(*, probe_id: str, mailbox: str, folder: MailboxFolder | str, item: ItemRef, raw: bytes,
                     received: datetime, precise: bool, first_seen: float,
                     estimate: OffsetEstimate | None) -> ReportCandidate:
    """Return a report's raw content with its arrival on the probe's clock, for probe.dsn to read."""
    arrival = local_arrival(received_server=received.timestamp(), precise=precise, first_seen_local=first_seen,
                            offset=estimate)
    return ReportCandidate(probe_id=probe_id, mailbox=mailbox, folder=folder, item=item, raw=raw,
                           received_server=received, received_local=arrival.at, first_seen_local=first_seen)


def found(*, started: float, sightings: list[Sighting], reports: list[ReportCandidate], foreign_skipped: int,
          forged: int, clock: ClockOffset) -> SearchResult:
    """Return what a search found, with the server clock's offset as it is estimated now."""
    estimate = clock.estimate()
    return SearchResult(
        ok=True, started_at=started, finished_at=time.time(), sightings=sightings, reports=reports,
        foreign_skipped=foreign_skipped, forged=forged,
        clock_offset=None if estimate is None else estimate.offset,
        clock_uncertainty=None if estimate is None else estimate.uncertainty)


def failed(*, mailbox: str, started: float, exc: BaseException, classify: Callable[[BaseException], MailboxReason],
           describe: Callable[[BaseException], str], log: logging.Logger) -> SearchResult:
    """Return why a search failed: the probe's own host (no mailbox reason, not logged here), or the mailbox."""
    local, text = local_fault(exc), describe(exc)
    if local is not None:  # the probe's own host failed: not the mailbox's error (the observer logs it)
        return SearchResult(ok=False, started_at=started, finished_at=time.time(), local=local, error=text)
    reason = classify(exc)
    log.warning("mailbox %s: search failed (%s): %s", mailbox, reason, text)
    return SearchResult(ok=False, started_at=started, finished_at=time.time(), error_reason=reason, error=text)
