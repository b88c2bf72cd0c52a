"""The confirm step over IMAP (RFC 3501/9051), with IMAPClient: search, cleanup, clock, watch.

Each folder keeps a connection selected on it. A poll of a folder is a NOOP (a session learns of new mail
only as a command ends) and one ``UID FETCH`` of the header fields of the UIDs above the highest it has
looked at, for every probe in flight at once; once a minute (and first, and after a UIDVALIDITY change) it
is a ``UID SEARCH UNDELETED SINCE <day> SUBJECT MFP-`` instead, with a fetch of the matches not screened
before. A folder that IDLE has watched without a word since its last search costs nothing (at most a
minute). The receipt stamp is the message's INTERNALDATE (whole seconds); the server clock's offset is
measured from the INTERNALDATE of a small message the probe APPENDs (flagged ``\\Deleted``) and removes by
UID EXPUNGE. The same search covers the delivery status reports of the probes whose NDRs come back here
(``reports_for``): an NDR's subject is ``Undeliverable: <the probe's subject>``, its ``Content-Type``
``multipart/report``; the whole message (``BODY.PEEK[]``, up to probe.dsn's limit) is fetched once per
report, in one UID FETCH per folder, and handed over raw for probe.dsn to read. Cleanup is UID MOVE to the
trash mailbox, or ``\\Deleted`` + UID EXPUNGE of exactly the probes' UIDs (UIDPLUS), of items whose tag
this mailbox verified itself (others are fetched and verified first). A connection that fails is reopened
once per operation; the watch reopens its own with a growing pause.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from imapclient import IMAPClient

from probe import message as probe_message
from probe.config import MailboxConfig
from probe.dsn import MAX_BYTES as REPORT_BYTES
from probe.local_faults import local_fault
from probe.mailbox.base import CleanupResult, ItemRef, ReportCandidate, SearchResult, Sighting
from probe.mailbox.clock import ClockOffset, OffsetEstimate, calibrate, local_arrival
from probe.mailbox.imap_session import (
    Folder,
    Folders,
    ImapError,
    classify,
    connect,
    describe,
    header_pairs,
    imap_section,
    logout,
    resolve_folders,
    shut,
)
from probe.mailbox.imap_watch import ImapWatch
from probe.mailbox.received import parse_received
from probe.vocabulary import MailboxReason

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TRIES: Final = 3  # attempts per operation when the server says it is busy
SEARCH_MARGIN: Final = timedelta(days=1)  # SINCE is a date on the server's calendar: a day's margin
DEFAULT_LOOKBACK: Final = 86400.0
BUSY_PAUSE: Final = 1.0  # IMAP gives no back-off: the pause before a throttled command is tried again
NEWER_UIDS: Final = 500  # UIDs above the highest seen that one poll's UID FETCH asks for (more: the next poll)
FULL_SEARCH_EVERY: Final = 60.0  # seconds: a quiet folder is searched again at least this often anyway
HEADER_FIELDS: Final = b"BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID X-MAILFLOW-PROBE RECEIVED CONTENT-TYPE)]"
_HEADER_KEY: Final = b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID X-MAILFLOW-PROBE RECEIVED CONTENT-TYPE)]"
WHOLE: Final = f"BODY.PEEK[]<0.{REPORT_BYTES}>".encode()  # a report's raw content, as far as probe.dsn reads
_WHOLE_KEY: Final = b"BODY[]<0>"
MAX_REPORTS_KEPT: Final = 1000  # raw reports kept between polls (a delay notification is looked at until decided)
_REPORT_TYPE: Final = re.compile(r"^\s*multipart/report\b", re.IGNORECASE)
_DELETED: Final = b"\\Deleted"
_SEEN: Final = b"\\Seen"
_APPENDUID: Final = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_CLOCK_MESSAGE: Final = (b"From: <mailflow-probe@localhost>\r\nSubject: mailflow-probe clock reading\r\n"
                         b"Auto-Submitted: auto-generated\r\n\r\n"
                         b"Removed at once; it only reads the server's clock.\r\n")
_CONNECTION_FAULTS: Final = frozenset({MailboxReason.UNREACHABLE, MailboxReason.TIMEOUT})


@dataclass(frozen=True, kw_only=True)
class _Fetched:
    """One matched message as the server described it, screened for a tag."""

    ref: ItemRef
    folder: Folder
    received: datetime | None
    subject: str
    message_id: str
    headers: tuple[tuple[str, str], ...]
    probe_id: str | None  # its tag verifies (subject and header); None for foreign or forged mail
    forged: bool  # a tag-shaped subject whose MAC does not verify
    report: bool = False  # a delivery status report (Content-Type multipart/report): never a sighting


def item_key(uidvalidity: int, uid: int, folder: str) -> str:
    """Return an item's key: UIDVALIDITY, UID and mailbox name (UIDs are per mailbox and validity)."""
    return f"{uidvalidity}:{uid}:{folder}"


def parse_key(key: str) -> tuple[int, int, str] | None:
    """Return (uidvalidity, uid, folder) of an item key, or None for one this backend did not make."""
    validity, _, rest = key.partition(":")
    uid, _, folder = rest.partition(":")
    if not (validity.isdigit() and uid.isdigit() and folder):
        return None
    return int(validity), int(uid), folder


class _Connections:
    """One authenticated connection per mailbox name, kept selected on it; reopened when one fails."""

    def __init__(self, config: MailboxConfig) -> None:
        self._config = config
        self._imap = imap_section(config)
        self._open: dict[str, tuple[IMAPClient, int]] = {}
        self.folders: Folders | None = None

    def selected(self, name: str) -> tuple[IMAPClient, int]:
        """Return the connection selected on ``name`` and the mailbox's UIDVALIDITY, opening it if need be."""
        if name not in self._open:
            client = connect(self._imap)
            try:
                if self.folders is None:
                    self.folders = resolve_folders(client, self._config)
                status = client.select_folder(name)
            except BaseException:
                shut(client)
                raise
            self._open[name] = (client, int(status[b"UIDVALIDITY"]))
        return self._open[name]

    def resolved(self) -> Folders:
        """Return the configured folders as the server names them (one connection is opened to learn them)."""
        if self.folders is None:
            self.selected("INBOX")
        assert self.folders is not None
        return self.folders

    def drop(self, name: str | None = None) -> None:
        """Close one connection (or all) at once; the next use opens it again."""
        names = list(self._open) if name is None else [name]
        for each in names:
            entry = self._open.pop(each, None)
            if entry is not None:
                shut(entry[0])
        if name is None:
            self.folders = None

    def close(self) -> None:
        """Log out of every connection."""
        for client, _validity in self._open.values():
            logout(client)
        self._open.clear()


class ImapMailbox:
    """A probe mailbox reached over IMAP: search, cleanup, clock, watch."""

    def __init__(self, config: MailboxConfig, *, key: bytes) -> None:
        self._config = config
        self._imap = imap_section(config)
        self._key = key
        self.clock = ClockOffset()
        self._busy = threading.RLock()  # IMAPClient connections are not thread-safe: one operation at a time
        self._connections = _Connections(config)
        self._screened: dict[str, _Fetched] = {}  # by item key: what matched the last search of each folder
        self._first_seen: dict[str, float] = {}
        self._watches: list[ImapWatch] = []
        self._searched_at: dict[str, float] = {}  # by mailbox name: when its last UID SEARCH began (monotonic)
        self._marks: dict[str, tuple[int, int]] = {}  # by mailbox name: UIDVALIDITY and the highest UID looked at
        self._raw: dict[str, bytes] = {}  # by item key: the raw content of reports fetched, until cleaned up

    @property
    def name(self) -> str:
        """Return the configured name of the mailbox."""
        return self._config.name

    # -- running an operation --------------------------------------------------------------------

    def _attempt(self, action: Callable[[], T], deadline: float) -> T:
        """Run ``action``; reopen a failed connection once, and wait out a busy server a bounded number of times."""
        reconnected = False
        for attempt in range(1, MAX_TRIES + 1):
            try:
                return action()
            except Exception as exc:
                reason = classify(exc)
                if reason in _CONNECTION_FAULTS and not reconnected and time.time() < deadline:
                    self._connections.drop()
                    reconnected = True
                    continue
                if reason is not MailboxReason.THROTTLED or attempt == MAX_TRIES or \
                        time.time() + BUSY_PAUSE > deadline:
                    if reason in _CONNECTION_FAULTS:
                        self._connections.drop()
                    raise
                log.info("mailbox %s: server busy, retrying in %.1f s", self.name, BUSY_PAUSE)
                time.sleep(BUSY_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- clock ------------------------------------------------------------------------------------

    @property
    def clock_uncertainty(self) -> float | None:
        """Return how far, in seconds, the server clock offset may be off now; None when it is unknown."""
        estimate = self.clock.estimate(now=time.time())
        return None if estimate is None else estimate.uncertainty

    def calibrate_clock(self, *, target_uncertainty: float = 0.05,
                        budget_seconds: float = 5.0) -> OffsetEstimate | None:
        """Narrow the server clock offset with timed APPENDs read back by INTERNALDATE; never raise.

        Each reading appends a small untagged message flagged ``\\Deleted`` to INBOX and reads its INTERNALDATE
        (two commands); one UID EXPUNGE removes them all at the end. A server without UIDPLUS is not read so.
        """
        deadline = time.time() + budget_seconds
        appended: list[int] = []
        with self._busy:
            try:
                return calibrate(self.clock, lambda at: self._timed_append(at, deadline, appended),
                                 target=target_uncertainty, budget=budget_seconds)
            except Exception as exc:  # calibration is an optimisation: a failure leaves the estimate as it was
                log.warning("mailbox %s: clock calibration failed: %s", self.name, describe(exc))
                self._connections.drop()
                return self.clock.estimate(now=time.time())
            finally:
                self._expunge_readings(appended)

    def _expunge_readings(self, uids: list[int]) -> None:
        """Remove the clock readings appended to INBOX, all with one UID EXPUNGE (they are \\Deleted already)."""
        if not uids:
            return
        try:
            client, _validity = self._connections.selected("INBOX")
            client.uid_expunge(uids)
        except Exception as exc:  # they stay flagged \Deleted, unseen by any search, until the next calibration
            log.warning("mailbox %s: clock readings not expunged: %s", self.name, describe(exc))
            self._connections.drop()

    def _timed_append(self, send_at: float, deadline: float, appended: list[int]) -> float | None:
        """APPEND the clock message no earlier than ``send_at``; feed its INTERNALDATE to the clock; return the RTT."""
        if time.time() >= deadline:
            return None
        client, _validity = self._connections.selected("INBOX")
        if not client.has_capability("UIDPLUS"):
            return None
        time.sleep(max(0.0, send_at - time.time()))
        sent = time.time()
        reply = client.append("INBOX", _CLOCK_MESSAGE, flags=(_SEEN, _DELETED))
        received = time.time()
        match = _APPENDUID.search(reply if isinstance(reply, bytes) else str(reply).encode())
        if match is None:
            return None
        uid = int(match[2])
        appended.append(uid)
        stamp = client.fetch([uid], [b"INTERNALDATE"]).get(uid, {}).get(b"INTERNALDATE")
        if isinstance(stamp, datetime) and stamp.tzinfo is not None:
            self.clock.observe_stamp(sent_at=sent, received_at=received, server=stamp.timestamp())
        return received - sent

    # -- search -------------------------------------------------------------------------------------

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        """Find the probes in flight (and the reports about ``reports_for``) with one UID SEARCH or FETCH per
        folder, and one UID FETCH per folder of the reports' content not fetched before; never raise."""
        started = time.time()
        deadline = deadline if deadline is not None else started + 2 * self._imap.timeout
        since = since if since is not None else started - DEFAULT_LOOKBACK
        wanted_reports = set(reports_for)
        try:
            with self._busy:
                found = self._attempt(lambda: self._search_all(since), deadline)
                reports = [f for f in found if f.report and f.probe_id in wanted_reports]
                self._attempt(lambda: self._fetch_raw(reports), deadline)
            seen_at = time.time()
            sightings = self._sightings(found, set(probe_ids), seen_at)
            candidates = self._report_candidates(reports, seen_at)
        except Exception as exc:  # a failed search is a result, never a raise
            return self._failed(started, exc)
        estimate = self.clock.estimate()
        return SearchResult(
            ok=True, started_at=started, finished_at=time.time(), sightings=sightings, reports=candidates,
            foreign_skipped=sum(1 for f in found if f.probe_id is None and not f.forged),
            forged=sum(1 for f in found if f.forged),
            clock_offset=None if estimate is None else estimate.offset,
            clock_uncertainty=None if estimate is None else estimate.uncertainty,
        )

    def _failed(self, started: float, exc: BaseException) -> SearchResult:
        local, text = local_fault(exc), describe(exc)
        if local is not None:  # the probe's own host failed: not the mailbox's error
            return SearchResult(ok=False, started_at=started, finished_at=time.time(), local=local, error=text)
        reason = classify(exc)
        log.warning("mailbox %s: search failed (%s): %s", self.name, reason, text)
        return SearchResult(ok=False, started_at=started, finished_at=time.time(), error_reason=reason, error=text)

    def _search_all(self, since: float) -> list[_Fetched]:
        estimate = self.clock.estimate()
        skew = 0.0 if estimate is None else estimate.offset
        day = (datetime.fromtimestamp(since + skew, tz=UTC) - SEARCH_MARGIN).date()
        found: list[_Fetched] = []
        for folder in self._connections.resolved().searched:
            found += self._search_folder(folder, day)
        return found

    def _quiet(self, name: str) -> bool:
        """Say whether a folder's last findings still hold: IDLE heard nothing there since, within a minute."""
        recent = time.monotonic() - self._searched_at.get(name, float("-inf")) < FULL_SEARCH_EVERY
        return recent and any(watch.quiet(name) for watch in self._watches)

    def _found_in(self, name: str) -> list[_Fetched]:
        return [f for key, f in self._screened.items() if (parse_key(key) or (0, 0, ""))[2] == name]

    def _search_folder(self, folder: Folder, day: object) -> list[_Fetched]:
        """Look for probes in one folder: nothing to send when IDLE says it is unchanged; else a NOOP, then a
        UID FETCH of the UIDs above the highest seen, or (first, after a UIDVALIDITY change, and every minute)
        the folder's UID SEARCH."""
        name = folder.imap_name
        if self._quiet(name):
            return self._found_in(name)
        for watch in self._watches:
            watch.searching(name)
        client, validity = self._connections.selected(name)
        client.noop()  # a session learns of new mail only as a command ends: this one, so what follows sees it
        mark = self._marks.get(name)
        if mark is None or mark[0] != validity or time.monotonic() - self._searched_at.get(name, 0.0) \
                >= FULL_SEARCH_EVERY:
            return self._full_search(client, validity, folder, day)
        return self._newer(client, validity, mark[1], folder)

    def _full_search(self, client: IMAPClient, validity: int, folder: Folder, day: object) -> list[_Fetched]:
        """Run the folder's UID SEARCH; fetch the header fields of matches not screened before."""
        name = folder.imap_name
        self._searched_at[name] = time.monotonic()
        uids = client.search([b"UNDELETED", b"SINCE", day, b"SUBJECT", probe_message.tag_search_prefix()])
        keys = {uid: item_key(validity, uid, name) for uid in uids}
        new = [uid for uid, key in keys.items() if key not in self._screened]
        if new:
            for uid, data in client.fetch(new, [b"INTERNALDATE", HEADER_FIELDS]).items():
                if uid in keys:
                    self._screened[keys[uid]] = self._screen(keys[uid], folder, data)
        current = set(keys.values())
        for stale in [k for k in self._found_in(name) if k.ref.key not in current]:
            del self._screened[stale.ref.key]  # gone, or no longer matching: forget it
            self._raw.pop(stale.ref.key, None)
        highest = self._marks.get(name, (validity, 0))[1] if self._marks.get(name, (0, 0))[0] == validity else 0
        self._marks[name] = (validity, max([highest, *uids]))
        return [self._screened[key] for key in keys.values() if key in self._screened]

    def _newer(self, client: IMAPClient, validity: int, highest: int, folder: Folder) -> list[_Fetched]:
        """Fetch the header fields of every message above the highest UID seen; keep those the search would match."""
        name = folder.imap_name
        prefix = probe_message.tag_search_prefix().lower()
        wanted = list(range(highest + 1, highest + 1 + NEWER_UIDS))  # IMAPClient takes no "n:*"; UIDs only grow
        for uid, data in client.fetch(wanted, [b"FLAGS", b"INTERNALDATE", HEADER_FIELDS]).items():
            highest = max(highest, uid)
            key = item_key(validity, uid, name)
            screened = self._screen(key, folder, data)
            flags = data.get(b"FLAGS", ())
            if prefix in screened.subject.lower() and _DELETED not in flags:
                self._screened[key] = screened
        self._marks[name] = (validity, highest)
        return self._found_in(name)

    def _fetch_raw(self, reports: Sequence[_Fetched]) -> None:
        """Fetch the raw content of the reports not fetched before: one UID FETCH per folder."""
        by_folder: dict[str, list[int]] = {}
        for item in reports:
            parsed = parse_key(item.ref.key)
            if parsed is not None and item.ref.key not in self._raw:
                by_folder.setdefault(parsed[2], []).append(parsed[1])
        for name, uids in by_folder.items():
            client, validity = self._connections.selected(name)
            for uid, data in client.fetch(uids, [WHOLE]).items():
                raw = data.get(_WHOLE_KEY)
                if isinstance(raw, bytes):
                    self._raw[item_key(validity, uid, name)] = raw
        while len(self._raw) > MAX_REPORTS_KEPT:  # the oldest go first; they are fetched again if still wanted
            del self._raw[next(iter(self._raw))]

    def _report_candidates(self, reports: Sequence[_Fetched], seen_at: float) -> list[ReportCandidate]:
        """Return the reports' raw content with their arrival, for probe.dsn to read (never parsed here)."""
        estimate = self.clock.estimate()
        candidates = []
        for item in reports:
            raw = self._raw.get(item.ref.key)
            if raw is None or item.received is None or item.probe_id is None:
                continue
            first_seen = self._first_seen.setdefault(item.ref.key, seen_at)
            arrival = local_arrival(received_server=item.received.timestamp(), precise=False,
                                    first_seen_local=first_seen, offset=estimate)
            candidates.append(ReportCandidate(
                probe_id=item.probe_id, mailbox=self.name, folder=item.folder.reported, item=item.ref, raw=raw,
                received_server=item.received, received_local=arrival.at, first_seen_local=first_seen))
        return candidates

    def _screen(self, key: str, folder: Folder, data: dict[bytes, object]) -> _Fetched:
        raw = data.get(_HEADER_KEY)
        headers = tuple(header_pairs(raw)) if isinstance(raw, bytes) else ()
        subject = next((v for k, v in headers if k.lower() == "subject"), "")
        tag = probe_message.parse_tag(subject)
        forged = tag is not None and not probe_message.verify_tag(self._key, tag)
        genuine = None if tag is None or forged else probe_message.probe_id_if_genuine(self._key, subject, headers)
        received = data.get(b"INTERNALDATE")
        return _Fetched(
            ref=ItemRef(key), folder=folder, subject=subject, headers=headers,
            received=received.astimezone(UTC) if isinstance(received, datetime) and received.tzinfo else None,
            message_id=next((v.strip() for k, v in headers if k.lower() == "message-id"), ""),
            probe_id=genuine, forged=forged or (tag is not None and genuine is None),
            report=any(k.lower() == "content-type" and _REPORT_TYPE.match(v) for k, v in headers),
        )

    def _sightings(self, found: Sequence[_Fetched], wanted: set[str], seen_at: float) -> list[Sighting]:
        estimate = self.clock.estimate()
        sightings = []
        for item in found:
            if item.probe_id is None or item.probe_id not in wanted or item.received is None or item.report:
                continue  # a report names its probe in its subject, but is not the probe
            first_seen = self._first_seen.setdefault(item.ref.key, seen_at)
            arrival = local_arrival(received_server=item.received.timestamp(), precise=False,
                                    first_seen_local=first_seen, offset=estimate)
            tag = probe_message.parse_tag(item.subject)
            sightings.append(Sighting(
                probe_id=item.probe_id, tag=str(tag), mailbox=self.name, folder=item.folder.reported, item=item.ref,
                message_id=item.message_id, subject=item.subject, received_server=item.received,
                received_precise=False, received_local=arrival.at,
                received_uncertainty=(arrival.latest - arrival.earliest) / 2, first_seen_local=first_seen,
                hops=parse_received([v for k, v in item.headers if k.lower() == "received"]),
            ))
        return sightings

    # -- cleanup --------------------------------------------------------------------------------------

    def cleanup(self, items: Sequence[ItemRef]) -> CleanupResult:
        """Move or expunge verified probes, by UID, a folder at a time; never raise.

        An item this mailbox did not itself find with a verified tag (one from the ledger after a restart) is
        fetched first and touched only if its tag verifies; an item whose mailbox's UIDVALIDITY changed is
        counted gone (its UID no longer names it). UID MOVE and UID EXPUNGE ignore UIDs already gone.
        """
        if not items or self._config.cleanup == "keep":
            return CleanupResult(ok=True)
        by_folder: dict[str, list[tuple[ItemRef, int, int]]] = {}
        refused = 0
        for ref in items:
            parsed = parse_key(ref.key)
            if parsed is None:
                refused += 1
                continue
            by_folder.setdefault(parsed[2], []).append((ref, parsed[0], parsed[1]))
        deadline = time.time() + 2 * self._imap.timeout
        gone: list[ItemRef] = []
        deleted = 0
        try:
            with self._busy:
                for folder, refs in by_folder.items():
                    outcome = self._attempt(lambda f=folder, r=refs: self._clean_folder(f, r), deadline)  # type: ignore[misc]
                    deleted += outcome[0]
                    refused += outcome[1]
                    gone += outcome[2]
        except Exception as exc:  # a failed cleanup is tried again on the next poll
            reason, text = classify(exc), describe(exc)
            log.warning("mailbox %s: cleanup failed (%s): %s", self.name, reason, text)
            return CleanupResult(ok=False, error_reason=reason, error=text)
        return CleanupResult(ok=True, deleted=deleted, missing=len(gone) - deleted, refused=refused,
                             gone=tuple(gone))

    def _clean_folder(self, folder: str,
                      refs: Sequence[tuple[ItemRef, int, int]]) -> tuple[int, int, list[ItemRef]]:
        """Return (deleted, refused, gone) for one folder's items."""
        client, validity = self._connections.selected(folder)
        gone = [ref for ref, ref_validity, _uid in refs if ref_validity != validity]
        known = [(ref, uid) for ref, ref_validity, uid in refs if ref_validity == validity and self._genuine(ref)]
        current = [(ref, uid) for ref, ref_validity, uid in refs if ref_validity == validity
                   and not self._genuine(ref)]
        fetched = client.fetch([uid for _ref, uid in current], [HEADER_FIELDS]) if current else {}
        unseen = [uid for _ref, uid in current if uid not in fetched]
        if unseen:  # this session may not have heard of the newest messages yet: NOOP, then look again
            client.noop()
            fetched.update(client.fetch(unseen, [HEADER_FIELDS]))
        genuine, refused = list(known), 0
        for ref, uid in current:
            data = fetched.get(uid)
            if data is None:
                gone.append(ref)
                continue
            raw = data.get(_HEADER_KEY)
            headers = header_pairs(raw) if isinstance(raw, bytes) else []
            subject = next((v for k, v in headers if k.lower() == "subject"), "")
            if probe_message.probe_id_if_genuine(self._key, subject, headers) is None:
                refused += 1
            else:
                genuine.append((ref, uid))
        if genuine:
            self._remove(client, [uid for _ref, uid in genuine])
            gone = [ref for ref, _uid in genuine] + gone
            for ref, _uid in genuine:
                self._screened.pop(ref.key, None)
                self._first_seen.pop(ref.key, None)
                self._raw.pop(ref.key, None)
        return len(genuine), refused, gone

    def _genuine(self, ref: ItemRef) -> bool:
        """Say whether this mailbox itself found the item, and its tag verified (it need not be read again)."""
        found = self._screened.get(ref.key)
        return found is not None and found.probe_id is not None

    def _remove(self, client: IMAPClient, uids: list[int]) -> None:
        """Move the UIDs to the trash mailbox, or flag and expunge exactly them."""
        if self._config.cleanup == "move_to_deleted_items":
            trash = self._connections.resolved().trash
            if trash is None:
                raise ImapError(MailboxReason.PROTOCOL, "no mailbox is marked \\Trash; set imap.trash_folder, or "
                                "cleanup: hard_delete")
            if client.has_capability("MOVE"):
                client.move(uids, trash)
                return
            self._require_uidplus(client)
            client.copy(uids, trash)
        else:
            self._require_uidplus(client)
        client.add_flags(uids, [_DELETED], silent=True)
        client.uid_expunge(uids)

    @staticmethod
    def _require_uidplus(client: IMAPClient) -> None:
        if not client.has_capability("UIDPLUS"):
            raise ImapError(MailboxReason.PROTOCOL, "the server has no UIDPLUS: without UID EXPUNGE, deleting the "
                            "probes would expunge other \\Deleted mail too; nothing was deleted")

    # -- watch ----------------------------------------------------------------------------------------

    def watch(self, on_new_mail: Callable[[float], None]) -> ImapWatch:
        """IDLE on each searched folder (a connection each) and call ``on_new_mail(time)`` on new mail."""
        with self._busy:
            try:
                folders = [f.imap_name for f in self._connections.resolved().searched]
            except Exception as exc:
                log.warning("mailbox %s: cannot list its folders for IDLE yet: %s", self.name, describe(exc))
                self._connections.drop()
                folders = []
        watch = ImapWatch(imap=self._imap, folders=folders, on_new_mail=on_new_mail, name=self.name,
                          resolve=self._folder_names)
        self._watches.append(watch)
        watch.start()
        return watch

    def _folder_names(self) -> list[str]:
        with self._busy:
            return [f.imap_name for f in self._connections.resolved().searched]

    def close(self) -> None:
        """Stop every watch and log out of every connection."""
        watches, self._watches = self._watches, []
        for watch in watches:
            watch.stop()
        with self._busy:
            self._connections.close()
