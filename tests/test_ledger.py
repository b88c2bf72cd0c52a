"""The ledger decides every verdict, exactly once (DESIGN.md, "Verdicts")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from probe.ledger import APPLICATION_ID, SCHEMA_VERSION, Arrival, Ledger, LedgerError
from probe.mailbox.base import ItemRef
from probe.vocabulary import Verdict
from tests.test_state_migration import probe_row, write_schema_1


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    return Ledger(tmp_path / "state.db", clock=clock)


def _open(ledger: Ledger, probe_id: str = "p1", *, deadline: float = 1_300.0, mailbox: str = "fc") -> None:
    ledger.open_probe(probe_id=probe_id, route="c2f", smart_host="edge-1", mailbox=mailbox,
                      message_id=f"<{probe_id}@x>", deadline=deadline)


def _arrival(probe_id: str = "p1", *, item: str = "item-1", at: float = 1_002.5) -> Arrival:
    return Arrival(probe_id=probe_id, item=ItemRef(item, "ck"), folder="inbox", received_at=at, seen_at=at)


def test_an_accepted_probe_found_in_time_is_delivered_with_latency_from_the_final_250(ledger: Ledger) -> None:
    """Latency runs from the smart host's final 250 to the mailbox's receipt."""
    _open(ledger)
    ledger.record_accepted("p1", accepted_at=1_000.5)
    decision = ledger.record_arrival(_arrival(at=1_002.5))
    assert decision is not None
    assert decision.verdict is Verdict.DELIVERED
    assert decision.latency == pytest.approx(2.0)
    assert ledger.open_probes() == []


def test_a_duplicate_delivery_counts_once_but_both_copies_are_cleaned_up(ledger: Ledger) -> None:
    """The second copy of a delivered probe decides nothing, yet is queued for cleanup."""
    _open(ledger)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    assert ledger.record_arrival(_arrival(item="a")) is not None
    assert ledger.record_arrival(_arrival(item="b")) is None
    assert ledger.record_arrival(_arrival(item="a")) is None
    assert sorted(ledger.pending_cleanup("fc"), key=lambda i: i.key) == [ItemRef("a", "ck"), ItemRef("b", "ck")]
    ledger.mark_cleaned("fc", [ItemRef("a", "ck"), ItemRef("b", "ck")])
    assert ledger.pending_cleanup("fc") == []


def test_one_searchs_sightings_are_recorded_together_each_decided_as_alone(ledger: Ledger) -> None:
    """A batch decides what each arrival would alone: a verdict per new probe, none for a copy, a hold if submitting."""
    for probe_id in ("p1", "p2", "p3"):
        _open(ledger, probe_id)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    ledger.record_accepted("p2", accepted_at=1_001.0)
    decisions = ledger.record_arrivals([_arrival("p1", item="a"), _arrival("p1", item="a2"),
                                        _arrival("p2", item="b", at=1_004.0), _arrival("p3", item="c"),
                                        _arrival("nobody", item="z")])
    assert [(d.probe_id, d.verdict) for d in decisions] == [("p1", Verdict.DELIVERED), ("p2", Verdict.DELIVERED)]
    assert [d.latency for d in decisions] == pytest.approx([2.5, 3.0])
    held = ledger.record_accepted("p3", accepted_at=1_002.0)  # seen before its 250: decided with it
    assert held is not None
    assert held.verdict is Verdict.DELIVERED
    assert sorted(i.key for i in ledger.pending_cleanup("fc")) == ["a", "a2", "b", "c"]


def test_a_send_failure_is_decided_once_with_stage_reason_and_code(ledger: Ledger) -> None:
    """send_failed carries where and why; news of it again decides nothing."""
    _open(ledger)
    first = ledger.record_send_failure("p1", stage="rcpt", reason="tempfail", smtp_code=451)
    again = ledger.record_send_failure("p1", stage="rcpt", reason="tempfail", smtp_code=451)
    assert first is not None
    assert (first.verdict, first.stage, first.reason, first.smtp_code) == (Verdict.SEND_FAILED, "rcpt", "tempfail", 451)
    assert again is None


def test_a_probe_is_lost_only_when_its_mailbox_was_searched_after_the_deadline(ledger: Ledger,
                                                                                clock: Clock) -> None:
    """Past the deadline with no search since, nothing is decided yet; a search that started later decides lost."""
    _open(ledger, deadline=1_300.0)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    ledger.record_observation("fc", ok=True, started_at=1_250.0, finished_at=1_251.0)
    clock.now = 1_301.0
    assert ledger.expire(unknown_after=300.0) == []
    ledger.record_observation("fc", ok=True, started_at=1_301.0, finished_at=1_302.0)
    decided = ledger.expire(unknown_after=300.0)
    assert [d.verdict for d in decided] == [Verdict.LOST]
    assert ledger.expire(unknown_after=300.0) == []


def test_an_unobservable_mailbox_gives_unknown_never_lost(ledger: Ledger, clock: Clock) -> None:
    """Failed searches after the deadline never make a probe lost; after the grace it is unknown."""
    _open(ledger, deadline=1_300.0)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    ledger.record_observation("fc", ok=False, started_at=1_301.0, finished_at=1_302.0, reason="unauthorized")
    clock.now = 1_400.0
    assert ledger.expire(unknown_after=300.0) == []
    clock.now = 1_600.0
    assert [d.verdict for d in ledger.expire(unknown_after=300.0)] == [Verdict.UNKNOWN]


def test_a_lost_probe_found_later_is_late_and_counted_once_more(ledger: Ledger, clock: Clock) -> None:
    """late follows lost once; further copies decide nothing."""
    _open(ledger, deadline=1_300.0)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    ledger.record_observation("fc", ok=True, started_at=1_305.0, finished_at=1_306.0)
    clock.now = 1_310.0
    assert [d.verdict for d in ledger.expire()] == [Verdict.LOST]
    late = ledger.record_arrival(_arrival(item="x", at=1_320.0))
    assert late is not None
    assert late.verdict is Verdict.LATE
    assert late.latency == pytest.approx(320.0)
    assert ledger.record_arrival(_arrival(item="y", at=1_321.0)) is None
    assert "p1" not in ledger.watch_list("fc", late_window=3600)[0]


def test_an_unknown_probe_found_with_an_in_time_receipt_is_delivered(ledger: Ledger, clock: Clock) -> None:
    """When the mailbox comes back, the receipt time decides between delivered and late."""
    _open(ledger, "early", deadline=1_300.0)
    _open(ledger, "tardy", deadline=1_300.0)
    for pid in ("early", "tardy"):
        ledger.record_accepted(pid, accepted_at=1_000.0)
    clock.now = 1_400.0
    assert {d.verdict for d in ledger.expire(unknown_after=0)} == {Verdict.UNKNOWN}
    assert set(ledger.watch_list("fc", late_window=3600)[0]) == {"early", "tardy"}
    early = ledger.record_arrival(_arrival("early", item="e", at=1_010.0))
    tardy = ledger.record_arrival(_arrival("tardy", item="t", at=1_350.0))
    assert early is not None
    assert tardy is not None
    assert (early.verdict, tardy.verdict) == (Verdict.DELIVERED, Verdict.LATE)


def test_a_probe_interrupted_during_submission_is_resolved_after_a_restart(tmp_path: Path, clock: Clock) -> None:
    """A row written before submission survives a crash; found, it is delivered; never found, unknown."""
    first = Ledger(tmp_path / "state.db", clock=clock)
    _open(first, "found")
    _open(first, "never")
    first.close()
    second = Ledger(tmp_path / "state.db", clock=clock)
    assert second.recover_interrupted() == []
    assert {p.probe_id for p in second.open_probes()} == {"found", "never"}
    found = second.record_arrival(_arrival("found", at=1_004.0))
    assert found is not None
    assert found.verdict is Verdict.DELIVERED
    second.record_observation("fc", ok=True, started_at=1_301.0, finished_at=1_302.0)
    clock.now = 1_302.0
    assert [d.verdict for d in second.expire(unknown_after=0)] == [Verdict.UNKNOWN]


def test_probes_of_another_mailbox_are_not_lost_by_this_mailboxs_searches(ledger: Ledger, clock: Clock) -> None:
    """Observation is per mailbox."""
    _open(ledger, "p1", mailbox="fc")
    ledger.record_accepted("p1", accepted_at=1_000.0)
    ledger.record_observation("contoso", ok=True, started_at=1_301.0, finished_at=1_302.0)
    clock.now = 1_302.0
    assert ledger.expire(unknown_after=600) == []


def test_a_corrupt_state_file_is_a_clear_error_and_is_left_untouched(tmp_path: Path) -> None:
    """Junk where the state file should be is refused, byte for byte unchanged."""
    path = tmp_path / "state.db"
    junk = b"this is not sqlite\n" * 100
    path.write_bytes(junk)
    with pytest.raises(LedgerError, match="corrupt"):
        Ledger(path)
    assert path.read_bytes() == junk


def test_a_state_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A newer schema is not downgraded."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(LedgerError, match="newer mailflow-probe"):
        Ledger(path)


def test_a_state_file_whose_directory_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    """A parent path that is a file, not a directory, gives an error naming the state file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(LedgerError, match=r"state file .*blocker/sub/state.db"):
        Ledger(blocker / "sub" / "state.db")


def test_a_state_file_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A directory in the state file's place is named in the error."""
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger(tmp_path)


def test_an_open_probe_received_after_its_deadline_is_late_not_delivered(ledger: Ledger) -> None:
    """A message found before the lost verdict, but received after the deadline, was not delivered in time."""
    _open(ledger, deadline=1_300.0)
    ledger.record_accepted("p1", accepted_at=1_000.0)
    decision = ledger.record_arrival(_arrival(at=1_300.5))
    assert decision is not None
    assert decision.verdict is Verdict.LATE


def test_an_arrival_seen_before_the_250_is_recorded_waits_for_it(ledger: Ledger) -> None:
    """A fast delivery found while the sender is still reading the 250 is decided by the 250, timed from it."""
    _open(ledger)
    assert ledger.record_arrival(_arrival(at=1_000.8)) is None
    decision = ledger.record_accepted("p1", accepted_at=1_000.5)
    assert decision is not None
    assert decision.verdict is Verdict.DELIVERED
    assert decision.latency == pytest.approx(0.3)
    assert decision.smtp_code == 250
    assert ledger.record_arrival(_arrival(item="again", at=1_000.9)) is None


def test_an_interrupted_probe_already_seen_is_delivered_on_recovery(tmp_path: Path, clock: Clock) -> None:
    """A crash between the mailbox's sighting and the 250's record: the restart decides it delivered, once."""
    first = Ledger(tmp_path / "state.db", clock=clock)
    _open(first)
    first.record_arrival(_arrival(at=1_001.0))
    first.close()
    second = Ledger(tmp_path / "state.db", clock=clock)
    decided = second.recover_interrupted()
    assert [d.verdict for d in decided] == [Verdict.DELIVERED]
    assert second.recover_interrupted() == []
    assert second.open_probes() == []


def test_the_next_deadline_is_the_soonest_future_one_of_the_mailboxs_open_probes(ledger: Ledger) -> None:
    """Past deadlines, decided probes and other mailboxes do not count."""
    _open(ledger, "past", deadline=900.0)
    _open(ledger, "soon", deadline=1_200.0)
    _open(ledger, "later", deadline=1_400.0)
    _open(ledger, "elsewhere", deadline=1_100.0, mailbox="contoso")
    _open(ledger, "failed", deadline=1_050.0)
    ledger.record_send_failure("failed", stage="rcpt", reason="rejected", smtp_code=550)
    assert ledger.next_deadline("fc", after=1_000.0) == 1_200.0
    assert ledger.next_deadline("fc", after=1_500.0) is None


def _foreign_database(path: Path, *, application_id: int) -> bytes:
    """Make another application's SQLite database (its own tables, rollback journal) and return its bytes."""
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id = {application_id}")
    db.execute("PRAGMA user_version = 7")
    db.execute("CREATE TABLE bookmarks (id INTEGER PRIMARY KEY, url TEXT NOT NULL)")
    db.executemany("INSERT INTO bookmarks (url) VALUES (?)", [("https://example.org/",), ("about:blank",)])
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("application_id", [0, 0x0F055112])
def test_another_applications_database_is_refused_and_left_untouched(tmp_path: Path, application_id: int) -> None:
    """A state_file that is (a symlink to) another application's SQLite database is refused with one clear line;
    the database keeps its bytes: no table added, no WAL switch, no user_version or application_id change."""
    other = tmp_path / "other-app" / "app.db"
    other.parent.mkdir()
    before = _foreign_database(other, application_id=application_id)
    link = tmp_path / "state.db"
    link.symlink_to(other)
    with pytest.raises(LedgerError, match=r"another application's SQLite database") as refused:
        Ledger(link)
    assert "\n" not in str(refused.value)
    assert other.read_bytes() == before
    assert sorted(p.name for p in other.parent.iterdir()) == ["app.db"]  # no -wal, no -shm, no journal left
    db = sqlite3.connect(other)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["bookmarks"]
    db.close()


def test_a_new_state_file_carries_the_probes_application_id(tmp_path: Path) -> None:
    """A state file the probe creates is marked with its application_id ("MFLP")."""
    path = tmp_path / "state.db"
    Ledger(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x4D464C50
    db.close()
    assert path.read_bytes()[68:72] == b"MFLP"


def test_a_state_file_from_before_the_mark_is_adopted_with_its_probes(tmp_path: Path) -> None:
    """A schema 1 state file written before the application_id existed opens, keeps its probes, and is marked."""
    path = tmp_path / "state.db"
    write_schema_1(path, probes=[probe_row("p-1", state="in_flight", accepted_at=999.0)], sightings=[])
    adopted = Ledger(path)
    assert [p.probe_id for p in adopted.open_probes()] == ["p-1"]
    adopted.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
