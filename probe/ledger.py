"""The ledger: probes in flight and their verdicts, in SQLite. The only place verdicts are decided.

Every transition is a conditional UPDATE, so a verdict is decided exactly once however often, and
from however many threads or restarts, the same news arrives. Callers observe metrics and write
log lines only for the ``Decision`` objects the ledger returns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from probe.hops import slowest_hop
from probe.local_faults import local_fault
from probe.mailbox.base import ItemRef
from probe.vocabulary import LocalResource, UnknownReason, Verdict

SCHEMA_VERSION: Final = 3  # 2: a sighting's item is an opaque reference (was EWS's item id and change key);
# 3: a probe knows the mailbox its NDRs come back to (bounce_mailbox)
# PRAGMA application_id of every state file (the bytes "MFLP" at offset 68 of the file; see sqlite.org/fileformat2):
# a file that carries another id is another application's and is never opened for writing. `file state.db` shows
# it as "SQLite 3.x database, application id 1296452688".
APPLICATION_ID: Final = 0x4D464C50
_TABLES: Final = frozenset({"probes", "sightings", "observations"})

# Probe states: the six verdicts plus the two states before one.
SUBMITTING: Final = "submitting"  # the row exists, the smart host has not answered yet
IN_FLIGHT: Final = "in_flight"  # accepted by the smart host, not yet found
_OPEN_STATES: Final = (SUBMITTING, IN_FLIGHT)

_PROBES: Final = """
CREATE TABLE IF NOT EXISTS probes (
    probe_id     TEXT PRIMARY KEY,
    route        TEXT NOT NULL,
    smart_host   TEXT NOT NULL,
    mailbox      TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    created_at   REAL NOT NULL,
    deadline     REAL NOT NULL,
    state        TEXT NOT NULL,
    accepted_at  REAL,
    stage        TEXT,
    reason       TEXT,
    smtp_code    INTEGER,
    latency      REAL,
    received_at  REAL,
    folder       TEXT,
    decided_at   REAL,
    late_at      REAL,
    detail       TEXT,
    bounce_mailbox TEXT
);
CREATE INDEX IF NOT EXISTS probes_open ON probes (state, mailbox);
CREATE INDEX IF NOT EXISTS probes_pair ON probes (route, smart_host, decided_at);
CREATE INDEX IF NOT EXISTS probes_bounce ON probes (bounce_mailbox, state);
"""
_SIGHTINGS: Final = """
CREATE TABLE IF NOT EXISTS sightings (
    mailbox      TEXT NOT NULL,
    item_key     TEXT NOT NULL,
    probe_id     TEXT NOT NULL,
    item_ref     TEXT NOT NULL,
    seen_at      REAL NOT NULL,
    cleaned      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, item_key)
);
CREATE INDEX IF NOT EXISTS sightings_pending ON sightings (mailbox, cleaned);
"""
_OBSERVATIONS: Final = """
CREATE TABLE IF NOT EXISTS observations (
    mailbox      TEXT PRIMARY KEY,
    ok_started   REAL,
    ok_finished  REAL,
    error_at     REAL,
    error_reason TEXT
);
"""
_SCHEMA: Final = _PROBES + _SIGHTINGS + _OBSERVATIONS


class LedgerError(Exception):
    """The state file cannot be used; the message says which file and why.

    ``resource`` is set when the cause is the host's own (a full disk, no memory): probe.local_faults.
    """

    def __init__(self, message: str, *, resource: LocalResource | None = None) -> None:
        super().__init__(message)
        self.resource = resource


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A verdict the ledger has just decided, once, for one probe."""

    probe_id: str
    route: str
    smart_host: str
    mailbox: str
    message_id: str
    verdict: Verdict
    stage: str | None = None
    reason: str | None = None
    smtp_code: int | None = None
    latency: float | None = None
    decided_at: float = 0.0
    carried_by: str | None = None  # a connector probe's: the smart host its Received chain names
    status_code: str | None = None  # bounced: the NDR's enhanced status code, e.g. 5.1.1
    reporting_mta: str | None = None  # bounced: the server that wrote the NDR
    diagnostic: str | None = None  # bounced: the refusing server's words
    slowest_hop: tuple[str, float] | None = None  # delivered or late: the Received chain's slowest hop (host, s)

    def to_json(self) -> dict[str, Any]:
        """Return the decision in the JSON shape of ``check --format json``."""
        return {
            "route": self.route, "smart_host": self.smart_host, "verdict": str(self.verdict),
            "stage": self.stage, "reason": self.reason, "smtp_code": self.smtp_code,
            "latency_seconds": self.latency, "message_id": self.message_id, "probe_id": self.probe_id,
            "status_code": self.status_code, "reporting_mta": self.reporting_mta, "diagnostic": self.diagnostic,
        }


@dataclass(frozen=True, kw_only=True)
class OpenProbe:
    """A probe still waiting for its verdict."""

    probe_id: str
    route: str
    smart_host: str
    mailbox: str
    message_id: str
    created_at: float
    accepted_at: float | None
    deadline: float


@dataclass(frozen=True, kw_only=True)
class Arrival:
    """What the confirm step saw of one probe in the mailbox."""

    probe_id: str
    item: ItemRef
    folder: str
    received_at: float  # arrival on the probe's clock (offset-corrected)
    seen_at: float  # when the probe first saw it (local clock)
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ReportArrival:
    """A delivery status report (probe.dsn) about one probe, its tag verified, as the confirm step found it."""

    probe_id: str
    mailbox: str  # the mailbox the report lies in (the route's bounces mailbox)
    item: ItemRef
    folder: str
    received_at: float  # the report's arrival, on the probe's clock
    seen_at: float
    delayed: bool  # a delay notification (a warning), not a non-delivery report (the verdict bounced)
    reason: str  # the bounce reason class (probe.vocabulary.BounceReason)
    facts: dict[str, Any]  # what the report says (probe.dsn.DeliveryReport.to_json())


@dataclass(frozen=True, kw_only=True)
class ReportsRecorded:
    """What recording a search's reports came to: the verdicts decided, and the probes newly warned of a delay."""

    decisions: list[Decision]
    delayed: list[str]


_DETAILED: Final = frozenset({Verdict.BOUNCED, Verdict.DELIVERED, Verdict.LATE})  # decisions that carry detail
_DECISION_COLUMNS: Final = ("probe_id, route, smart_host, mailbox, message_id, state, stage, reason, smtp_code,"
                            " latency, detail")


def _decision(row: sqlite3.Row, decided_at: float) -> Decision:
    state = row["state"]
    detail = json.loads(row["detail"] or "{}") if state in _DETAILED else {}
    bounce = detail.get("bounce") or {} if state == Verdict.BOUNCED else {}
    hops = detail.get("hops") if state in (Verdict.DELIVERED, Verdict.LATE) else None
    return Decision(
        probe_id=row["probe_id"], route=row["route"], smart_host=row["smart_host"], mailbox=row["mailbox"],
        message_id=row["message_id"], verdict=Verdict(row["state"]), stage=row["stage"], reason=row["reason"],
        smtp_code=row["smtp_code"], latency=row["latency"], decided_at=decided_at, carried_by=detail.get("carried_by"),
        status_code=bounce.get("status"), reporting_mta=bounce.get("reporting_mta"),
        diagnostic=bounce.get("diagnostic"), slowest_hop=slowest_hop(hops) if isinstance(hops, list) else None,
    )


def _open_probe(row: sqlite3.Row) -> OpenProbe:
    return OpenProbe(
        probe_id=row["probe_id"], route=row["route"], smart_host=row["smart_host"], mailbox=row["mailbox"],
        message_id=row["message_id"], created_at=row["created_at"], accepted_at=row["accepted_at"],
        deadline=row["deadline"],
    )


class Ledger:
    """Probes and verdicts in one SQLite file (WAL); ``":memory:"`` for a throwaway ledger."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = self._connect()

    # -- opening ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            _check_location(Path(self.path))
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.row_factory = sqlite3.Row
            _migrate(db, self.path)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"state file {self.path}: {_explain(exc)}; it was left untouched") from None
        return db

    def close(self) -> None:
        """Close the state file."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.OperationalError, MemoryError) as exc:
                raise LedgerError(f"state file {self.path}: {_explain(exc)}", resource=local_fault(exc)) from None

    # -- the life of a probe ------------------------------------------------------------------------

    def open_probe(self, *, probe_id: str, route: str, smart_host: str, mailbox: str, message_id: str,
                   deadline: float, bounce_mailbox: str | None = None) -> None:
        """Record a probe before it is submitted, so a crash during submission never loses it.

        ``bounce_mailbox`` is the mailbox its NDRs come back to (the route's sender's), when one is configured.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO probes (probe_id, route, smart_host, mailbox, message_id, created_at, deadline,"
                " state, bounce_mailbox) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (probe_id, route, smart_host, mailbox, message_id, self._clock(), deadline, SUBMITTING,
                 bounce_mailbox),
            )

    def record_accepted(self, probe_id: str, *, accepted_at: float, smtp_code: int | None = 250,
                        detail: dict[str, Any] | None = None) -> Decision | None:
        """Note that the smart host accepted the probe (its final 250) at ``accepted_at``.

        The mailbox can see a fast delivery before the sending thread gets here; such an arrival was
        held back, and is decided now, with the latency from this 250.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM probes WHERE probe_id = ?", (probe_id,)).fetchone()
            if row is None or row["state"] != SUBMITTING:
                return None
            merged = {**(detail or {}), **json.loads(row["detail"] or "{}")}
            db.execute("UPDATE probes SET state = ?, accepted_at = ?, smtp_code = ?, detail = ? WHERE probe_id = ?",
                       (IN_FLIGHT, accepted_at, smtp_code, _dump(merged), probe_id))
            return self._decide_held(db, probe_id)

    def recover_interrupted(self) -> list[Decision]:
        """After a restart, open the probes whose submission was cut short; decide those already seen.

        Whether the smart host accepted such a probe is not known: found, it is delivered (latency from
        when it was made); never found, it ends as unknown, never lost.
        """
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT probe_id FROM probes WHERE state = ?", (SUBMITTING,))]
            db.execute("UPDATE probes SET state = ? WHERE state = ?", (IN_FLIGHT, SUBMITTING))
            decided = [self._decide_held(db, probe_id) for probe_id in ids]
        return [d for d in decided if d is not None]

    def _decide_held(self, db: sqlite3.Connection, probe_id: str) -> Decision | None:
        """Decide what was seen of a probe before its 250 was recorded: its arrival, else an NDR of it."""
        row = db.execute("SELECT * FROM probes WHERE probe_id = ?", (probe_id,)).fetchone()
        if row["received_at"] is None:
            held = json.loads(row["detail"] or "{}").get("bounce")
            return None if held is None else self._decide_bounce(db, row, held)
        held = Arrival(probe_id=probe_id, item=ItemRef(""), folder=row["folder"],
                       received_at=row["received_at"], seen_at=row["received_at"])
        verdict = _verdict_on_arrival(row, held)
        return None if verdict is None else self._decide_arrival(db, row, held, verdict)

    def record_send_failure(self, probe_id: str, *, stage: str, reason: str, smtp_code: int | None,
                            detail: dict[str, Any] | None = None) -> Decision | None:
        """Decide ``send_failed`` for a probe the smart host did not accept."""
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE probes SET state = ?, stage = ?, reason = ?, smtp_code = ?, decided_at = ?, detail = ?"
                " WHERE probe_id = ? AND state = ?",
                (str(Verdict.SEND_FAILED), stage, reason, smtp_code, now, _dump(detail), probe_id, SUBMITTING),
            )
            return self._fetch_decision(db, probe_id, now) if cur.rowcount else None

    def record_local_failure(self, probe_id: str, *, resource: LocalResource,
                             detail: dict[str, Any] | None = None) -> Decision | None:
        """Decide ``unknown`` (reason ``local``) for a probe the host itself could not submit.

        The smart host was not (fully) tried, so nothing is said about it: no stage, no send failure.
        """
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE probes SET state = ?, stage = NULL, reason = ?, decided_at = ?, detail = ?"
                " WHERE probe_id = ? AND state = ?",
                (str(Verdict.UNKNOWN), str(UnknownReason.LOCAL), now,
                 _dump({**(detail or {}), "local": str(resource)}), probe_id, SUBMITTING),
            )
            return self._fetch_decision(db, probe_id, now) if cur.rowcount else None

    def record_arrival(self, arrival: Arrival) -> Decision | None:
        """Record a verified sighting; decide delivered (or late) the first time, nothing on a duplicate."""
        with self._tx() as db:
            return self._record_arrival(db, arrival)

    def record_arrivals(self, arrivals: Iterable[Arrival]) -> list[Decision]:
        """Record the verified sightings of one search in one transaction; return the verdicts it decided."""
        with self._tx() as db:
            return [d for d in (self._record_arrival(db, arrival) for arrival in arrivals) if d is not None]

    def _record_arrival(self, db: sqlite3.Connection, arrival: Arrival) -> Decision | None:
        db.execute(
            "INSERT OR IGNORE INTO sightings (mailbox, item_key, probe_id, item_ref, seen_at)"
            " SELECT mailbox, ?, probe_id, ?, ? FROM probes WHERE probe_id = ?",
            (arrival.item.key, arrival.item.dumps(), arrival.seen_at, arrival.probe_id),
        )
        row = db.execute("SELECT * FROM probes WHERE probe_id = ?", (arrival.probe_id,)).fetchone()
        if row is None:
            return None
        if row["state"] == SUBMITTING:
            self._hold_arrival(db, row, arrival)
            return None
        verdict = _verdict_on_arrival(row, arrival)
        if verdict is None:
            return None
        return self._decide_arrival(db, row, arrival, verdict)

    def _hold_arrival(self, db: sqlite3.Connection, row: sqlite3.Row, arrival: Arrival) -> None:
        """Keep an arrival seen before the sending thread recorded the 250, to decide it then."""
        detail = {**json.loads(row["detail"] or "{}"), **(arrival.detail or {})}
        db.execute("UPDATE probes SET received_at = ?, folder = ?, detail = ? WHERE probe_id = ? AND state = ?"
                   " AND received_at IS NULL",
                   (arrival.received_at, arrival.folder, _dump(detail), row["probe_id"], SUBMITTING))

    def _decide_arrival(self, db: sqlite3.Connection, row: sqlite3.Row, arrival: Arrival,
                        verdict: Verdict) -> Decision | None:
        now = self._clock()
        start = row["accepted_at"] if row["accepted_at"] is not None else row["created_at"]
        latency = max(0.0, arrival.received_at - start)
        detail = {**json.loads(row["detail"] or "{}"), **(arrival.detail or {})}
        cur = db.execute(
            "UPDATE probes SET state = ?, latency = ?, received_at = ?, folder = ?, stage = NULL,"
            " reason = NULL, decided_at = COALESCE(decided_at, ?), late_at = ?, detail = ?"
            " WHERE probe_id = ? AND state = ?",
            (str(verdict), latency, arrival.received_at, arrival.folder, now,
             now if verdict is Verdict.LATE else None, _dump(detail), row["probe_id"], row["state"]),
        )
        return self._fetch_decision(db, row["probe_id"], now) if cur.rowcount else None

    def record_reports(self, reports: Iterable[ReportArrival]) -> ReportsRecorded:
        """Record the verified delivery status reports of one search in one transaction.

        A non-delivery report decides ``bounced`` for a probe in flight, lost or unknown (a lost one was counted
        as lost already and now counts once as bounced); it wins over a later deadline, and never follows a
        delivered, late, failed or bounced verdict. A delay notification is a warning kept on the probe. Every
        report of a known probe is queued for cleanup, whatever it decided.
        """
        decisions: list[Decision] = []
        delayed: list[str] = []
        with self._tx() as db:
            for report in reports:
                row = self._report_sighting(db, report)
                if row is None:
                    continue
                if report.delayed:
                    if self._note_delay(db, row, report):
                        delayed.append(report.probe_id)
                    continue
                decision = self._bounce(db, row, report)
                if decision is not None:
                    decisions.append(decision)
        return ReportsRecorded(decisions=decisions, delayed=delayed)

    def _report_sighting(self, db: sqlite3.Connection, report: ReportArrival) -> sqlite3.Row | None:
        """Queue a report of a known probe for cleanup; return the probe's row (None: not a probe of this ledger)."""
        row: sqlite3.Row | None = db.execute("SELECT * FROM probes WHERE probe_id = ?", (report.probe_id,)).fetchone()
        if row is not None:
            db.execute("INSERT OR IGNORE INTO sightings (mailbox, item_key, probe_id, item_ref, seen_at)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (report.mailbox, report.item.key, report.probe_id, report.item.dumps(), report.seen_at))
        return row

    def _note_delay(self, db: sqlite3.Connection, row: sqlite3.Row, report: ReportArrival) -> bool:
        """Keep a delay notification on the probe (the latest, and how many); return whether it is the first."""
        detail = json.loads(row["detail"] or "{}")
        seen = detail.get("delayed_dsn") or {}
        if seen.get("item") == report.item.key:
            return False
        detail["delayed_dsn"] = {**_report_facts(report), "count": int(seen.get("count", 0)) + 1}
        db.execute("UPDATE probes SET detail = ? WHERE probe_id = ?", (_dump(detail), row["probe_id"]))
        return not seen

    def _bounce(self, db: sqlite3.Connection, row: sqlite3.Row, report: ReportArrival) -> Decision | None:
        """Decide bounced now, or hold the NDR until the 250 is recorded; nothing after another verdict."""
        facts = {**_report_facts(report), "reason": report.reason}
        if row["state"] == SUBMITTING:
            detail = json.loads(row["detail"] or "{}")
            detail.setdefault("bounce", facts)
            db.execute("UPDATE probes SET detail = ? WHERE probe_id = ? AND state = ?",
                       (_dump(detail), row["probe_id"], SUBMITTING))
            return None
        if row["state"] not in (IN_FLIGHT, Verdict.LOST, Verdict.UNKNOWN):
            return None
        return self._decide_bounce(db, row, facts)

    def _decide_bounce(self, db: sqlite3.Connection, row: sqlite3.Row, facts: dict[str, Any]) -> Decision | None:
        now = self._clock()
        detail = {**json.loads(row["detail"] or "{}"), "bounce": {**facts, "decided_at": now}}
        cur = db.execute(
            "UPDATE probes SET state = ?, stage = NULL, reason = ?, decided_at = COALESCE(decided_at, ?), detail = ?"
            " WHERE probe_id = ? AND state = ?",
            (str(Verdict.BOUNCED), facts["reason"], now, _dump(detail), row["probe_id"], row["state"]),
        )
        return self._fetch_decision(db, row["probe_id"], now) if cur.rowcount else None

    def record_observation(self, mailbox: str, *, ok: bool, started_at: float, finished_at: float,
                           reason: str | None = None) -> None:
        """Record that a search of ``mailbox`` ran from ``started_at`` to ``finished_at``, and whether it worked."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO observations (mailbox) VALUES (?)", (mailbox,))
            if ok:
                db.execute("UPDATE observations SET ok_started = ?, ok_finished = ? WHERE mailbox = ?"
                           " AND (ok_started IS NULL OR ok_started < ?)",
                           (started_at, finished_at, mailbox, started_at))
            else:
                db.execute("UPDATE observations SET error_at = ?, error_reason = ? WHERE mailbox = ?",
                           (finished_at, reason, mailbox))

    def expire(self, *, now: float | None = None, unknown_after: float = 0.0) -> list[Decision]:
        """Decide probes past their deadline: lost if their mailbox was searched since, else unknown.

        A probe is lost only when a search of its mailbox that *started* after the deadline worked and
        did not find it, and its bounces mailbox (if any) was searched after the deadline too, or is failing:
        an NDR that came back in time makes it bounced, never lost. While its mailbox cannot be observed it
        stays open for ``unknown_after`` more seconds, then is declared unknown (never lost).
        """
        now = self._clock() if now is None else now
        decided: list[Decision] = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT p.*, o.ok_started, b.ok_started AS bounce_ok_started, b.error_at AS bounce_error_at"
                " FROM probes p LEFT JOIN observations o ON o.mailbox = p.mailbox"
                " LEFT JOIN observations b ON b.mailbox = p.bounce_mailbox"
                " WHERE p.state IN (?, ?) AND p.deadline <= ?", (*_OPEN_STATES, now),
            ).fetchall()
            for row in rows:
                verdict = _verdict_at_expiry(row, now, unknown_after)
                if verdict is None:
                    continue
                db.execute("UPDATE probes SET state = ?, decided_at = ? WHERE probe_id = ? AND state = ?",
                           (str(verdict), now, row["probe_id"], row["state"]))
                decided.append(self._fetch_decision(db, row["probe_id"], now))
        return decided

    # -- reading ------------------------------------------------------------------------------------

    def open_probes(self, mailbox: str | None = None) -> list[OpenProbe]:
        """Return the probes still waiting for a verdict (of one mailbox, or all)."""
        query = "SELECT * FROM probes WHERE state IN (?, ?)"
        params: tuple[Any, ...] = _OPEN_STATES
        if mailbox is not None:
            query += " AND mailbox = ?"
            params = (*params, mailbox)
        with self._lock:
            return [_open_probe(r) for r in self._db.execute(query + " ORDER BY created_at", params)]

    def watch_list(self, mailbox: str, *, late_window: float) -> tuple[list[str], float | None]:
        """Return the probe ids a search of ``mailbox`` should look for (open ones and recent lost/unknown),
        and when the oldest of them was created (None when there is none)."""
        since = self._clock() - late_window
        with self._lock:
            rows = self._db.execute(
                "SELECT probe_id, created_at FROM probes WHERE mailbox = ? AND (state IN (?, ?)"
                " OR (state IN (?, ?) AND decided_at >= ?))",
                (mailbox, *_OPEN_STATES, str(Verdict.LOST), str(Verdict.UNKNOWN), since),
            ).fetchall()
        oldest = min((float(r["created_at"]) for r in rows), default=None)
        return [r["probe_id"] for r in rows], oldest

    def report_watch_list(self, mailbox: str, *, late_window: float) -> tuple[list[str], float | None]:
        """Return the probe ids whose NDRs a search of ``mailbox`` should look for (open ones, and recent lost or
        unknown ones: an NDR may come after the deadline), and when the oldest of them was created."""
        since = self._clock() - late_window
        with self._lock:
            rows = self._db.execute(
                "SELECT probe_id, created_at FROM probes WHERE bounce_mailbox = ? AND (state IN (?, ?)"
                " OR (state IN (?, ?) AND decided_at >= ?))",
                (mailbox, *_OPEN_STATES, str(Verdict.LOST), str(Verdict.UNKNOWN), since),
            ).fetchall()
        oldest = min((float(r["created_at"]) for r in rows), default=None)
        return [r["probe_id"] for r in rows], oldest

    def awaits(self, mailbox: str) -> bool:
        """Say whether a probe without a verdict waits on ``mailbox``: to arrive there, or for its NDRs there."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM probes WHERE state IN (?, ?) AND (mailbox = ? OR bounce_mailbox = ?)"
                                   " LIMIT 1", (*_OPEN_STATES, mailbox, mailbox)).fetchone()
        return row is not None

    def next_deadline(self, mailbox: str, *, after: float) -> float | None:
        """Return the soonest deadline after ``after`` of the probes still open that wait on ``mailbox``
        (sent to it, or bouncing to it), if any."""
        with self._lock:
            row = self._db.execute("SELECT MIN(deadline) FROM probes WHERE (mailbox = ? OR bounce_mailbox = ?)"
                                   " AND state IN (?, ?) AND deadline > ?",
                                   (mailbox, mailbox, *_OPEN_STATES, after)).fetchone()
        return None if row[0] is None else float(row[0])

    def open_counts(self) -> dict[tuple[str, str], int]:
        """Return how many probes are waiting for a verdict, per (route, smart host)."""
        with self._lock:
            rows = self._db.execute("SELECT route, smart_host, COUNT(*) FROM probes WHERE state IN (?, ?)"
                                    " GROUP BY route, smart_host", _OPEN_STATES).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    def pairs_of(self, probe_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Return the (route, smart host) of each of these probes that the ledger knows."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(probe_ids), 500):  # well under SQLite's limit of bound parameters
            chunk = tuple(probe_ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT probe_id, route, smart_host FROM probes WHERE probe_id IN ({marks})"  # noqa: S608 - ? only
            with self._lock:
                rows = self._db.execute(query, chunk).fetchall()
            found.update((r["probe_id"], (r["route"], r["smart_host"])) for r in rows)
        return found

    def pending_cleanup(self, mailbox: str, *, limit: int = 100) -> list[ItemRef]:
        """Return the items of verified sightings in ``mailbox`` not yet cleaned up."""
        with self._lock:
            rows = self._db.execute("SELECT item_ref FROM sightings WHERE mailbox = ? AND cleaned = 0"
                                    " ORDER BY seen_at LIMIT ?", (mailbox, limit)).fetchall()
        return [ItemRef.loads(r["item_ref"]) for r in rows]

    def mark_cleaned(self, mailbox: str, items: Sequence[ItemRef]) -> None:
        """Note that these items of ``mailbox`` were cleaned up (or are gone)."""
        with self._tx() as db:
            db.executemany("UPDATE sightings SET cleaned = 1 WHERE mailbox = ? AND item_key = ?",
                           [(mailbox, item.key) for item in items])

    def probe(self, probe_id: str) -> dict[str, Any] | None:
        """Return everything the ledger holds about one probe, with its detail decoded."""
        with self._lock:
            row = self._db.execute("SELECT * FROM probes WHERE probe_id = ?", (probe_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["detail"] = json.loads(data["detail"] or "{}")
        return data

    def history(self, route: str, smart_host: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """Return the latest decided probes of one (route, smart host), newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM probes WHERE route = ? AND smart_host = ? AND decided_at IS NOT NULL"
                " ORDER BY decided_at DESC LIMIT ?", (route, smart_host, limit)).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    def waiting(self, route: str, smart_host: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """Return the probes of one (route, smart host) still awaiting a verdict, newest first, detail decoded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM probes WHERE route = ? AND smart_host = ? AND state IN (?, ?)"
                " ORDER BY created_at DESC LIMIT ?", (route, smart_host, *_OPEN_STATES, limit)).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    def counts(self) -> dict[str, int]:
        """Return how many probes are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM probes GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def prune(self, *, older_than: float) -> int:
        """Forget decided probes (and their cleaned sightings) decided before ``older_than``."""
        with self._tx() as db:
            db.execute("DELETE FROM sightings WHERE cleaned = 1 AND probe_id IN (SELECT probe_id FROM probes"
                       " WHERE decided_at < ? AND state NOT IN (?, ?))", (older_than, *_OPEN_STATES))
            cur = db.execute("DELETE FROM probes WHERE decided_at < ? AND state NOT IN (?, ?) AND probe_id NOT IN"
                             " (SELECT probe_id FROM sightings)", (older_than, *_OPEN_STATES))
            return cur.rowcount

    def _fetch_decision(self, db: sqlite3.Connection, probe_id: str, decided_at: float) -> Decision:
        row = db.execute(f"SELECT {_DECISION_COLUMNS} FROM probes WHERE probe_id = ?",  # noqa: S608 - fixed columns
                         (probe_id,)).fetchone()
        return _decision(row, decided_at)


def _verdict_on_arrival(row: sqlite3.Row, arrival: Arrival) -> Verdict | None:
    state = row["state"]
    if state == Verdict.LOST:
        return Verdict.LATE
    if state in (*_OPEN_STATES, Verdict.UNKNOWN):
        # Delivered means received within the timeout: the receipt time decides, not when we looked.
        return Verdict.LATE if arrival.received_at > row["deadline"] else Verdict.DELIVERED
    return None  # delivered, late, send_failed: a duplicate or a stray copy counts nothing


def _verdict_at_expiry(row: sqlite3.Row, now: float, unknown_after: float) -> Verdict | None:
    observed_after_deadline = row["ok_started"] is not None and row["ok_started"] >= row["deadline"]
    accepted = row["accepted_at"] is not None  # an interrupted submission may never have been accepted
    if row["state"] == IN_FLIGHT and accepted and observed_after_deadline and _bounces_looked_at(row):
        return Verdict.LOST
    if now >= row["deadline"] + unknown_after:
        return Verdict.UNKNOWN
    return None


def _bounces_looked_at(row: sqlite3.Row) -> bool:
    """Say whether the probe's bounces mailbox (if any) was searched since the deadline, or is failing now: then
    an NDR that came back in time would have been seen, and not finding the probe means lost."""
    if row["bounce_mailbox"] is None:
        return True
    deadline, ok_started, error_at = row["deadline"], row["bounce_ok_started"], row["bounce_error_at"]
    if ok_started is not None and ok_started >= deadline:
        return True
    return error_at is not None and error_at >= deadline and (ok_started is None or error_at > ok_started)


def _report_facts(report: ReportArrival) -> dict[str, Any]:
    """Return what the ledger keeps of a report: its facts, where it lies and when it came."""
    return {**report.facts, "item": report.item.key, "mailbox": report.mailbox, "folder": report.folder,
            "received_at": report.received_at}


def _dump(detail: dict[str, Any] | None) -> str | None:
    return None if detail is None else json.dumps(detail, default=str)


def _check_location(path: Path) -> None:
    if path.is_dir():
        raise LedgerError(f"state file {path} is a directory")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"state file {path}: cannot create its directory: {exc.strerror}") from None


def _identify(db: sqlite3.Connection, path: str) -> bool:
    """Return whether the file must be marked as the probe's (new, or a state file from before the mark);
    raise LedgerError, writing nothing, for another application's database. Reads only."""
    app = int(db.execute("PRAGMA application_id").fetchone()[0])
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app == APPLICATION_ID:
        return False
    if app == 0 and ((not tables and version == 0) or (version == 1 and tables >= _TABLES)):
        return True  # empty, or schema 1 written by this program before it marked its files: adopted
    shown = ", ".join(sorted(tables)[:5]) or "none"
    db.close()
    raise LedgerError(f"state file {path} is another application's SQLite database (application_id {app:#x}, "
                      f"user_version {version}, tables: {shown}), not mailflow-probe's; it was left untouched:"
                      " give state_file a path of its own")


def _migrate(db: sqlite3.Connection, path: str) -> None:
    mark = _identify(db, path)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.close()
        raise LedgerError(f"state file {path} was written by a newer mailflow-probe (schema {version}, this one"
                          f" knows {SCHEMA_VERSION}); it was left untouched")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    if version == 0:
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif version < SCHEMA_VERSION:
        _upgrade(db, version)
    if mark:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("SELECT COUNT(*) FROM probes").fetchone()  # a corrupt file fails here, not later


def _sightings_to_item_refs(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: a sighting's EWS (item_id, change_key) becomes the reference the EWS backend makes of them."""
    rows = db.execute("SELECT item_id, probe_id, mailbox, change_key, seen_at, cleaned FROM sightings").fetchall()
    db.execute("DROP INDEX IF EXISTS sightings_pending")
    db.execute("ALTER TABLE sightings RENAME TO sightings_v1")
    for statement in _SIGHTINGS.split(";")[:-1]:
        db.execute(statement)
    db.executemany(
        "INSERT OR IGNORE INTO sightings (mailbox, item_key, probe_id, item_ref, seen_at, cleaned)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(r["mailbox"], r["item_id"], r["probe_id"], ItemRef(r["item_id"], r["change_key"]).dumps(), r["seen_at"],
          r["cleaned"]) for r in rows])
    db.execute("DROP TABLE sightings_v1")


def _probes_know_their_bounce_mailbox(db: sqlite3.Connection) -> None:
    """Schema 2 -> 3: probes get the mailbox their NDRs come back to (none for those made before)."""
    db.execute("ALTER TABLE probes ADD COLUMN bounce_mailbox TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS probes_bounce ON probes (bounce_mailbox, state)")


_UPGRADES: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {
    1: _sightings_to_item_refs, 2: _probes_know_their_bounce_mailbox,
}
"""From each schema version, the step to the next; a step runs in the same transaction as the version bump."""


def _upgrade(db: sqlite3.Connection, version: int) -> None:
    """Bring a state file of an older schema up to this one, one step at a time, each all or nothing."""
    for step in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            _UPGRADES[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _explain(exc: sqlite3.Error | MemoryError) -> str:
    text = str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    if "not a database" in text or "malformed" in text:
        return "not a mailflow-probe state file or corrupt (move it aside to start afresh)"
    if "readonly" in text or "unable to open" in text:
        return f"cannot be written ({text}); check the permissions of the file and its directory"
    if "disk" in text and "full" in text:
        return "the disk is full"
    return text
