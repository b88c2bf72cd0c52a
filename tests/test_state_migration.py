"""State files written before the mailbox seam (schema 1: EWS item id and change key) open, and their probes resolve."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from probe.config import load_config
from probe.lab import Lab
from probe.ledger import SCHEMA_VERSION, Arrival, Ledger, LedgerError
from probe.mailbox.base import ItemRef
from probe.message import build_probe_message
from probe.signing import load_or_create_key
from probe.vocabulary import Verdict
from tests.daemon_harness import running_daemon, states, wait_for

# The schema of mailflow-probe's state files before the seam (ledger.py at 460e6eb), as they exist on disk.
SCHEMA_1 = """
CREATE TABLE probes (
    probe_id TEXT PRIMARY KEY, route TEXT NOT NULL, smart_host TEXT NOT NULL, mailbox TEXT NOT NULL,
    message_id TEXT NOT NULL, created_at REAL NOT NULL, deadline REAL NOT NULL, state TEXT NOT NULL,
    accepted_at REAL, stage TEXT, reason TEXT, smtp_code INTEGER, latency REAL, received_at REAL, folder TEXT,
    decided_at REAL, late_at REAL, detail TEXT
);
CREATE INDEX probes_open ON probes (state, mailbox);
CREATE INDEX probes_pair ON probes (route, smart_host, decided_at);
CREATE TABLE sightings (
    item_id TEXT PRIMARY KEY, probe_id TEXT NOT NULL, mailbox TEXT NOT NULL, change_key TEXT NOT NULL,
    seen_at REAL NOT NULL, cleaned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sightings_pending ON sightings (mailbox, cleaned);
CREATE TABLE observations (
    mailbox TEXT PRIMARY KEY, ok_started REAL, ok_finished REAL, error_at REAL, error_reason TEXT
);
PRAGMA user_version = 1;
"""


def write_schema_1(path: Path, *, probes: list[dict[str, Any]], sightings: list[tuple[str, str, str, str]],
                   schema: str = SCHEMA_1) -> None:
    """Write a schema-1 state file with these probes and (item_id, probe_id, mailbox, change_key) sightings."""
    db = sqlite3.connect(path)
    try:
        db.executescript(schema)
        for probe in probes:
            db.execute(f"INSERT INTO probes ({', '.join(probe)}) VALUES ({', '.join('?' * len(probe))})",  # noqa: S608
                       tuple(probe.values()))
        if sightings:
            db.executemany("INSERT INTO sightings (item_id, probe_id, mailbox, change_key, seen_at)"
                           " VALUES (?, ?, ?, ?, 1)", sightings)
        db.commit()
    finally:
        db.close()


def probe_row(probe_id: str, *, state: str, mailbox: str = "fc", now: float = 1_000.0, **more: Any) -> dict[str, Any]:
    return {"probe_id": probe_id, "route": "c2f", "smart_host": "edge-1", "mailbox": mailbox,
            "message_id": f"<{probe_id}@x>", "created_at": now - 2, "deadline": now + 300, "state": state, **more}


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_schema_1_file_opens_and_its_probes_and_cleanups_carry_on(tmp_path: Path) -> None:
    """The sightings become item references (id and change key kept), the in-flight probe is decided on arrival."""
    path = tmp_path / "state.db"
    write_schema_1(path, probes=[probe_row("p1", state="in_flight", accepted_at=999.0),
                                 probe_row("p0", state="delivered", decided_at=990.0)],
                   sightings=[("AAMkOld=", "p0", "fc", "CQAAABYA")])
    ledger = Ledger(path, clock=lambda: 1_000.0)
    try:
        assert user_version(path) == SCHEMA_VERSION == 3
        assert ledger.pending_cleanup("fc") == [ItemRef("AAMkOld=", "CQAAABYA")]
        decision = ledger.record_arrival(Arrival(probe_id="p1", item=ItemRef("AAMkNew=", "CQAAAAB"), folder="inbox",
                                                 received_at=1_001.5, seen_at=1_001.6))
        assert decision is not None
        assert decision.verdict is Verdict.DELIVERED
        assert decision.latency == pytest.approx(2.5)
        ledger.mark_cleaned("fc", [ItemRef("AAMkOld=", "CQAAABYA")])
        assert ledger.pending_cleanup("fc") == [ItemRef("AAMkNew=", "CQAAAAB")]
    finally:
        ledger.close()
    again = Ledger(path)  # a second opening migrates nothing more
    try:
        assert user_version(path) == SCHEMA_VERSION
        assert again.pending_cleanup("fc") == [ItemRef("AAMkNew=", "CQAAAAB")]
    finally:
        again.close()


def test_in_flight_probes_of_a_schema_1_file_expire_as_they_would_have(tmp_path: Path) -> None:
    """A probe open in the old file and never found is lost after a search past its deadline, never dropped."""
    path = tmp_path / "state.db"
    write_schema_1(path, probes=[probe_row("p1", state="in_flight", accepted_at=999.0)], sightings=[])
    ledger = Ledger(path, clock=lambda: 1_400.0)
    try:
        ledger.record_observation("fc", ok=True, started_at=1_350.0, finished_at=1_351.0)
        assert [(d.probe_id, d.verdict) for d in ledger.expire()] == [("p1", Verdict.LOST)]
    finally:
        ledger.close()


def test_a_schema_2_file_gains_bounce_mailboxes_and_its_probes_expire_as_before(tmp_path: Path) -> None:
    """2 -> 3: the probes of an older file have no bounces mailbox; lost after a search of their own mailbox."""
    path = tmp_path / "state.db"
    write_schema_1(path, probes=[probe_row("p1", state="in_flight", accepted_at=999.0)], sightings=[])
    Ledger(path).close()
    db = sqlite3.connect(path)  # step it back to a schema-2 file, as the previous release wrote it
    try:
        db.execute("DROP INDEX probes_bounce")
        db.execute("ALTER TABLE probes DROP COLUMN bounce_mailbox")
        db.execute("PRAGMA user_version = 2")
        db.commit()
    finally:
        db.close()
    ledger = Ledger(path, clock=lambda: 1_400.0)
    try:
        assert user_version(path) == SCHEMA_VERSION
        assert ledger.report_watch_list("fc", late_window=600) == ([], None)
        ledger.record_observation("fc", ok=True, started_at=1_350.0, finished_at=1_351.0)
        assert [(d.probe_id, d.verdict) for d in ledger.expire()] == [("p1", Verdict.LOST)]
    finally:
        ledger.close()


def test_a_migration_that_fails_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """Every step is all or nothing: a schema-1 file the step cannot read stays schema 1, its rows untouched."""
    path = tmp_path / "state.db"
    broken = SCHEMA_1.replace("change_key TEXT NOT NULL,", "")  # not a file any release wrote
    write_schema_1(path, probes=[probe_row("p1", state="in_flight")], sightings=[], schema=broken)
    with pytest.raises(LedgerError, match="change_key"):
        Ledger(path)
    assert user_version(path) == 1
    db = sqlite3.connect(path)
    try:
        assert [r[0] for r in db.execute("SELECT name FROM pragma_table_info('sightings')")] == [
            "item_id", "probe_id", "mailbox", "seen_at", "cleaned"]
        assert db.execute("SELECT probe_id, state FROM probes").fetchall() == [("p1", "in_flight")]
    finally:
        db.close()


@pytest.mark.usefixtures("fresh_exchangelib")
def test_the_daemon_resolves_the_probes_of_a_schema_1_file_on_the_lab(lab: Lab, tmp_path: Path) -> None:
    """Started on an old state file: its in-flight probe is delivered, and its old sighting is cleaned from the
    mailbox with the item id and change key the old file held."""
    config_path = lab.write_probe_config(tmp_path / "probe.yaml", interval=3600, timeout=60, jitter=0,
                                         watch="polling", poll_interval=1, routes=["contoso-to-fourthcoffee"])
    config = load_config(config_path)
    key = load_or_create_key(config.signing_key_file)
    route = config.routes[0]
    address = config.recipient_of(route)
    now = time.time()
    made = [build_probe_message(key=key, route=route.name, smart_host=route.smart_hosts[0].name,
                                sender=route.sender, recipient=address) for _ in range(2)]
    stored = [lab.store.deliver(address, m.raw, folder="inbox", accepted_at=now - 1) for m in made]
    write_schema_1(config.state_file, probes=[
        probe_row(made[0].probe_id, state="in_flight", mailbox=route.mailbox, now=now, accepted_at=now - 1,
                  message_id=made[0].message_id, route=route.name, smart_host=route.smart_hosts[0].name),
        probe_row(made[1].probe_id, state="delivered", mailbox=route.mailbox, now=now - 60, decided_at=now - 50,
                  message_id=made[1].message_id, route=route.name, smart_host=route.smart_hosts[0].name),
    ], sightings=[(stored[1].item_id, made[1].probe_id, route.mailbox, stored[1].change_key)])
    with running_daemon(config_path):
        wait_for(lambda: states(config.state_file)[made[0].probe_id] == "delivered", timeout=30,
                 what="the old file's in-flight probe delivered")
        wait_for(lambda: (lab.store.get(stored[1].item_id) or stored[1]).folder == "deleteditems", timeout=30,
                 what="the old file's sighting cleaned up")
    assert user_version(config.state_file) == SCHEMA_VERSION
    assert [item.item_id for item in lab.store.items(address, ["inbox"])] == []  # the new sighting cleaned too
