"""The pipeline reports every verdict the ledger decides, even when a later step fails."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from probe.ledger import Decision, Ledger, LedgerError
from probe.mailbox.base import CleanupResult, ItemRef, SearchResult, Sighting
from probe.mailbox.clock import OffsetEstimate
from probe.pipeline import NullObserver, confirm
from probe.vocabulary import MailboxFolder, Verdict


class _OneSightingMailbox:
    """A mailbox whose every search finds probe ``p1`` (a stand-in collaborator; the pipeline is under test)."""

    clock_uncertainty = 0.0

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        sighting = Sighting(probe_id="p1", tag="MFP-p1", mailbox="fc", folder=MailboxFolder.INBOX,
                            item=ItemRef("i1", "ck"), message_id="<p1@x>", subject="s",
                            received_server=datetime.fromtimestamp(1_001.0, tz=UTC), received_precise=True,
                            received_local=1_001.0, received_uncertainty=0.0, first_seen_local=1_001.1)
        return SearchResult(ok=True, started_at=1_001.2, finished_at=1_001.3, sightings=[sighting])

    def cleanup(self, items: Sequence[ItemRef]) -> CleanupResult:
        return CleanupResult(ok=True, deleted=len(items))

    def watch(self, on_new_mail: Callable[[float], None]) -> Any:
        raise NotImplementedError

    def calibrate_clock(self, *, target_uncertainty: float = 0.05,
                        budget_seconds: float = 5.0) -> OffsetEstimate | None:
        return None

    def close(self) -> None:
        """Nothing to close."""


class _FullDiskLedger(Ledger):
    """A ledger whose observation record fails, as on a full disk after the verdict was committed."""

    def record_observation(self, mailbox: str, **kwargs: Any) -> None:
        raise LedgerError("state file :memory:: the disk is full")


class _Collect(NullObserver):
    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)


def test_a_verdict_is_reported_even_when_recording_the_search_then_fails() -> None:
    """The decision the ledger committed reaches the observer (metrics, log line) before the failing step."""
    ledger = _FullDiskLedger(":memory:", clock=lambda: 1_000.0)
    ledger.open_probe(probe_id="p1", route="c2f", smart_host="edge-1", mailbox="fc", message_id="<p1@x>",
                      deadline=1_300.0)
    ledger.record_accepted("p1", accepted_at=1_000.5)
    observer = _Collect()
    with pytest.raises(LedgerError):
        confirm("fc", _OneSightingMailbox(), key=b"K" * 32, ledger=ledger, observer=observer, late_window=60)
    assert [d.verdict for d in observer.decisions] == [Verdict.DELIVERED]
