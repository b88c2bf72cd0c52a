"""The ledger's ``bounced`` verdict and delay warnings, from verified delivery status reports (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from probe.ledger import Arrival, Ledger, ReportArrival
from probe.mailbox.base import ItemRef
from probe.vocabulary import Verdict
from tests.test_ledger import Clock

FACTS: dict[str, Any] = {"action": "failed", "status": "5.1.1", "reason": "recipient",
                         "reporting_mta": "FC-MBX-1.fourthcoffee.com", "remote_mta": None,
                         "diagnostic": "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    return Ledger(tmp_path / "state.db", clock=clock)


def _open(ledger: Ledger, probe_id: str = "p1", *, accepted: bool = True, deadline: float = 1_300.0) -> None:
    ledger.open_probe(probe_id=probe_id, route="c2f", smart_host="edge-1", mailbox="fc", message_id=f"<{probe_id}@x>",
                      deadline=deadline, bounce_mailbox="co")
    if accepted:
        ledger.record_accepted(probe_id, accepted_at=1_000.5)


def _report(probe_id: str = "p1", *, item: str = "ndr-1", delayed: bool = False, status: str = "5.1.1",
            reason: str = "recipient", at: float = 1_005.0) -> ReportArrival:
    facts = {**FACTS, "status": status, "action": "delayed" if delayed else "failed"}
    return ReportArrival(probe_id=probe_id, mailbox="co", item=ItemRef(item, "ck"), folder="inbox", received_at=at,
                         seen_at=at + 0.2, delayed=delayed, reason=reason, facts=facts)


def test_an_ndr_decides_bounced_with_its_code_reason_mta_and_diagnostic(ledger: Ledger) -> None:
    """A verified NDR of a probe in flight decides bounced, reason from the status class, and keeps the report."""
    _open(ledger)
    recorded = ledger.record_reports([_report()])
    assert recorded.delayed == []
    [decision] = recorded.decisions
    assert (decision.verdict, decision.stage, decision.reason) == (Verdict.BOUNCED, None, "recipient")
    assert (decision.status_code, decision.reporting_mta, decision.diagnostic) == (
        "5.1.1", "FC-MBX-1.fourthcoffee.com", "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")
    as_json = decision.to_json()
    assert (as_json["verdict"], as_json["status_code"], as_json["reporting_mta"]) == (
        "bounced", "5.1.1", "FC-MBX-1.fourthcoffee.com")
    held = ledger.probe("p1")
    assert held is not None
    assert held["detail"]["bounce"]["received_at"] == 1_005.0
    assert held["detail"]["bounce"]["mailbox"] == "co"
    assert ledger.open_probes() == []


def test_bounced_counts_once_and_wins_over_the_deadline(ledger: Ledger, clock: Clock) -> None:
    """A second NDR, the deadline, and the probe turning up after all decide nothing more."""
    _open(ledger)
    assert len(ledger.record_reports([_report()]).decisions) == 1
    assert ledger.record_reports([_report(item="ndr-2", status="5.4.1", reason="routing")]).decisions == []
    clock.now = 2_000.0
    ledger.record_observation("fc", ok=True, started_at=1_900.0, finished_at=1_901.0)
    ledger.record_observation("co", ok=True, started_at=1_900.0, finished_at=1_901.0)
    assert ledger.expire() == []
    late = Arrival(probe_id="p1", item=ItemRef("msg", "ck"), folder="inbox", received_at=1_950.0, seen_at=1_950.0)
    assert ledger.record_arrival(late) is None
    row = ledger.probe("p1")
    assert row is not None
    assert (row["state"], row["reason"], row["detail"]["bounce"]["status"]) == ("bounced", "recipient", "5.1.1")


def test_an_ndr_after_lost_turns_it_bounced_once(ledger: Ledger, clock: Clock) -> None:
    """Lost is decided (and counted) once; the NDR that comes later decides bounced, once."""
    _open(ledger)
    clock.now = 1_400.0
    ledger.record_observation("fc", ok=True, started_at=1_350.0, finished_at=1_351.0)
    ledger.record_observation("co", ok=True, started_at=1_350.0, finished_at=1_351.0)
    assert [d.verdict for d in ledger.expire()] == [Verdict.LOST]
    assert ledger.report_watch_list("co", late_window=600.0) == (["p1"], 1_000.0)
    clock.now = 1_500.0
    [decision] = ledger.record_reports([_report(at=1_450.0)]).decisions
    assert decision.verdict is Verdict.BOUNCED
    assert decision.decided_at == 1_500.0
    assert ledger.record_reports([_report(item="ndr-2", at=1_460.0)]).decisions == []
    assert ledger.report_watch_list("co", late_window=600.0) == ([], None)


def test_an_ndr_of_an_unknown_probe_decides_bounced(ledger: Ledger, clock: Clock) -> None:
    """A probe declared unknown (its mailbox down) that bounced is bounced: the NDR tells what happened."""
    _open(ledger)
    clock.now = 1_400.0
    assert [d.verdict for d in ledger.expire(unknown_after=0.0)] == [Verdict.UNKNOWN]
    assert [d.verdict for d in ledger.record_reports([_report()]).decisions] == [Verdict.BOUNCED]


def test_an_ndr_before_the_250_is_recorded_waits_for_it(ledger: Ledger) -> None:
    """The mailbox can see the NDR before the sending thread records the 250: bounced is decided then."""
    _open(ledger, accepted=False)
    assert ledger.record_reports([_report()]).decisions == []
    decision = ledger.record_accepted("p1", accepted_at=1_000.5)
    assert decision is not None
    assert (decision.verdict, decision.status_code) == (Verdict.BOUNCED, "5.1.1")


def test_an_ndr_after_delivery_decides_nothing_but_is_cleaned_up(ledger: Ledger) -> None:
    """Delivered stays delivered; the NDR (verified) is queued for cleanup in the bounces mailbox."""
    _open(ledger)
    arrival = Arrival(probe_id="p1", item=ItemRef("msg", "ck"), folder="inbox", received_at=1_002.0, seen_at=1_002.0)
    assert ledger.record_arrival(arrival) is not None
    assert ledger.record_reports([_report()]).decisions == []
    assert ledger.pending_cleanup("co") == [ItemRef("ndr-1", "ck")]
    assert ledger.pending_cleanup("fc") == [ItemRef("msg", "ck")]


def test_a_report_of_a_probe_the_ledger_does_not_know_is_left_alone(ledger: Ledger) -> None:
    """A report naming a probe this ledger never sent decides nothing and is never queued for deletion."""
    recorded = ledger.record_reports([_report("0000000000000000")])
    assert (recorded.decisions, recorded.delayed) == ([], [])
    assert ledger.pending_cleanup("co") == []


def test_a_delay_notification_is_a_warning_never_a_verdict(ledger: Ledger) -> None:
    """Delay notifications are kept on the probe (the latest, and how many); the probe still arrives delivered."""
    _open(ledger)
    first = ledger.record_reports([_report(item="d-1", delayed=True, status="4.4.7", reason="routing")])
    assert (first.decisions, first.delayed) == ([], ["p1"])
    again = ledger.record_reports([_report(item="d-1", delayed=True, status="4.4.7"),
                                   _report(item="d-2", delayed=True, status="4.4.7", at=1_010.0)])
    assert (again.decisions, again.delayed) == ([], [])
    row = ledger.probe("p1")
    assert row is not None
    assert row["state"] == "in_flight"
    assert (row["detail"]["delayed_dsn"]["count"], row["detail"]["delayed_dsn"]["item"]) == (2, "d-2")
    arrival = Arrival(probe_id="p1", item=ItemRef("msg", "ck"), folder="inbox", received_at=1_020.0, seen_at=1_020.0)
    decision = ledger.record_arrival(arrival)
    assert decision is not None
    assert decision.verdict is Verdict.DELIVERED
    assert sorted(ref.key for ref in ledger.pending_cleanup("co")) == ["d-1", "d-2"]


def test_lost_waits_until_the_bounces_mailbox_was_searched_past_the_deadline(ledger: Ledger, clock: Clock) -> None:
    """An NDR that came back in time must have had its chance to be seen: lost only once the bounces mailbox was
    searched after the deadline too (or is failing)."""
    _open(ledger, "p1")
    _open(ledger, "p2")
    clock.now = 1_400.0
    ledger.record_observation("fc", ok=True, started_at=1_350.0, finished_at=1_351.0)
    ledger.record_observation("co", ok=True, started_at=1_250.0, finished_at=1_251.0)  # before the deadline
    assert ledger.expire(unknown_after=600.0) == []
    ledger.record_reports([_report("p1", at=1_290.0)])
    ledger.record_observation("co", ok=True, started_at=1_360.0, finished_at=1_361.0)
    assert [(d.probe_id, d.verdict) for d in ledger.expire(unknown_after=600.0)] == [("p2", Verdict.LOST)]


def test_a_failing_bounces_mailbox_does_not_hold_lost_back(ledger: Ledger, clock: Clock) -> None:
    """When the bounces mailbox cannot be searched, not finding the probe still means lost."""
    _open(ledger)
    clock.now = 1_400.0
    ledger.record_observation("fc", ok=True, started_at=1_350.0, finished_at=1_351.0)
    ledger.record_observation("co", ok=False, started_at=1_340.0, finished_at=1_341.0, reason="unreachable")
    assert [d.verdict for d in ledger.expire(unknown_after=600.0)] == [Verdict.LOST]


def test_the_bounces_mailbox_waits_on_its_routes_probes(ledger: Ledger) -> None:
    """A mailbox that receives a route's NDRs is awaited and woken at that route's deadlines."""
    _open(ledger, deadline=1_300.0)
    assert ledger.awaits("co")
    assert ledger.awaits("fc")
    assert not ledger.awaits("elsewhere")
    assert ledger.next_deadline("co", after=1_000.0) == 1_300.0
    assert ledger.watch_list("co", late_window=600.0) == ([], None)
    assert ledger.report_watch_list("co", late_window=600.0)[0] == ["p1"]
    assert ledger.report_watch_list("fc", late_window=600.0) == ([], None)
