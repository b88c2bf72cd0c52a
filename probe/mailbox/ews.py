"""The confirm step over Exchange Web Services, with exchangelib 5.6 (DESIGN.md, "What one probe is", step 3).

One search per mailbox covers every probe in flight: one FindItem over Inbox and Junk (subject contains
the tag prefix, received since the oldest send), then one GetItem for the verified matches. The same two
requests cover the delivery status reports of the probes whose NDRs come back here (``reports_for``): an
NDR's subject is ``Undeliverable: <the probe's subject>``, its item class ``REPORT.IPM.Note.NDR`` (a delay
notification's ``REPORT.IPM.Note.Delayed``); when there are such candidates, the GetItem also asks for the
MIME content, handed over raw for probe.dsn to read. Requests ask
for millisecond receipt stamps (SOAP header ``t:DateTimePrecision``) and are parsed here, because
exchangelib 5.6 neither sends the header nor parses fractional-second UTC stamps.

exchangelib's knobs that matter here are global or cached (``BaseProtocol.TIMEOUT``, ``HTTP_ADAPTER_CLS``,
the protocol cache keyed by endpoint and credentials). This module sets none of them: each mailbox has its
own protocol object, made outside the cache, whose sessions mount an adapter that verifies against the
mailbox's own CA, applies the mailbox's timeout, and times every exchange for the clock offset. The
retry policy is FailFast; throttling is retried here, a bounded number of times, honouring the server's
back-off. Whatever needs a private part of exchangelib or requests is in probe.mailbox.ews_internals;
this module uses their public API only (tests/test_ews_internals.py holds both to that).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, TypeVar

import requests
import requests.adapters
from exchangelib import DELEGATE, Account, Build, Configuration, Credentials, EWSDateTime, FailFast, Q, Version
from exchangelib.errors import (
    ErrorItemNotFound,
)
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.fields import FieldPath
from exchangelib.folders import Folder
from exchangelib.items import Message
from exchangelib.properties import DistinguishedFolderId
from exchangelib.properties import Mailbox as EwsAddress
from exchangelib.restriction import Restriction
from exchangelib.services import DeleteItem, SubscribeToStreaming, Unsubscribe
from exchangelib.transport import BASIC, NTLM
from exchangelib.util import TNS

from probe import message as probe_message
from probe.config import EwsConfig, MailboxConfig
from probe.local_faults import local_fault
from probe.mailbox.base import CleanupResult, ItemRef, ReportCandidate, SearchResult, Sighting
from probe.mailbox.clock import ClockOffset, OffsetEstimate, calibrate, local_arrival
from probe.mailbox.ews_errors import classify, describe
from probe.mailbox.ews_internals import (
    FOLDER_ATTR,
    FindTagged,
    GetRaw,
    NewMailEvents,
    PingFolder,
    own_protocol,
    read_whole,
    streaming_response,
)
from probe.mailbox.received import parse_received
from probe.vocabulary import MailboxFolder, MailboxReason

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TRIES: Final = 3  # attempts per request when the server says it is busy
SEARCH_MARGIN: Final = 300.0  # seconds before the oldest send that a search still covers (clock skew, queues)
DEFAULT_LOOKBACK: Final = 86400.0  # how far back a search looks when the caller gives no ``since``
PAGE_SIZE: Final = 500
GET_CHUNK: Final = 500
WATCH_MINUTES: Final = 1  # GetStreamingEvents ConnectionTimeout; the stream is reopened after it
_EWS_FOLDERS: Final[dict[MailboxFolder | str, str]] = {  # the neutral folder names as EWS distinguished ids
    MailboxFolder.INBOX: "inbox", MailboxFolder.JUNKEMAIL: "junkemail", MailboxFolder.DELETEDITEMS: "deleteditems",
}
_NEUTRAL_FOLDERS: Final = {ews_id: MailboxFolder(folder) for folder, ews_id in _EWS_FOLDERS.items()}
_DELETE_TYPES: Final = {
    "move_to_deleted_items": "MoveToDeletedItems", "soft_delete": "SoftDelete", "hard_delete": "HardDelete",
}
_REPORT_CLASS: Final = "REPORT."  # the item classes of delivery status reports (REPORT.IPM.Note.NDR, ...)
_STAMP: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?")


def parse_ews_datetime(text: str | None) -> tuple[datetime, bool] | None:
    """Parse an EWS dateTime (``2026-11-28T09:00:01.123Z`` or whole seconds) to UTC and say if it is precise."""
    match = _STAMP.fullmatch((text or "").strip())
    if match is None:
        return None
    try:
        base = datetime.fromisoformat(match[1])
    except ValueError:
        return None
    fraction, zone = match[2], match[3] or "Z"
    micro = int((fraction + "000000")[:6]) if fraction else 0
    tz = UTC
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return base.replace(microsecond=micro, tzinfo=tz).astimezone(UTC), fraction is not None


@dataclass(frozen=True, kw_only=True)
class _RawItem:
    """An item as the server sent it, read from the XML itself."""

    item_id: str
    change_key: str
    folder: str
    subject: str
    received: str | None
    message_id: str
    headers: tuple[tuple[str, str], ...]
    item_class: str = ""
    mime: bytes | None = None  # the MIME content, when it was asked for

    @property
    def is_report(self) -> bool:
        """Say whether the item is a delivery status report (an NDR, a delay notification, a receipt)."""
        return self.item_class.upper().startswith(_REPORT_CLASS)

    @property
    def ref(self) -> ItemRef:
        """Return the item's reference outside this backend: its id, with its change key."""
        return ItemRef(self.item_id, self.change_key)


def _raw_item(elem: Any, folder: str = "") -> _RawItem:
    ident = elem.find(f"{{{TNS}}}ItemId")
    headers = tuple(
        (h.get("HeaderName", ""), h.text or "")
        for h in elem.iterfind(f"{{{TNS}}}InternetMessageHeaders/{{{TNS}}}InternetMessageHeader")
    )
    return _RawItem(
        item_id="" if ident is None else ident.get("Id", ""),
        change_key="" if ident is None else ident.get("ChangeKey", ""),
        folder=folder or elem.get(FOLDER_ATTR, ""),
        subject=elem.findtext(f"{{{TNS}}}Subject") or "",
        received=elem.findtext(f"{{{TNS}}}DateTimeReceived"),
        message_id=(elem.findtext(f"{{{TNS}}}InternetMessageId") or "").strip(),
        headers=headers, item_class=elem.findtext(f"{{{TNS}}}ItemClass") or "",
        mime=_mime(elem.findtext(f"{{{TNS}}}MimeContent")),
    )


def _mime(text: str | None) -> bytes | None:
    """Return an item's MimeContent (base64 in the XML) as bytes; None when absent or unreadable."""
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


class _Pacer(threading.local):
    """Per thread: when its next request may go out at the earliest, and how its last exchange went."""

    def __init__(self) -> None:
        self.send_at: float | None = None
        self.timeout: float | None = None
        self.last: tuple[float, float] | None = None  # (sent, response headers arrived), local time


class _ProbeAdapter(requests.adapters.HTTPAdapter):
    """Verify against this mailbox's CA, bound every request in time, and time each exchange for the clock."""

    def __init__(self, *, verify: bool | str, timeout: float, clock: ClockOffset, pacer: _Pacer) -> None:
        self._probe_verify = verify
        self._probe_timeout = timeout
        self._clock = clock
        self._pacer = pacer
        super().__init__(pool_connections=1, pool_maxsize=1, pool_block=True, max_retries=0)

    def send(self, request: requests.PreparedRequest,  # noqa: PLR0917 - HTTPAdapter.send's signature
             stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        """Send with this mailbox's verification and timeout; feed the response's Date to the clock."""
        pacer = self._pacer
        send_at, pacer.send_at = pacer.send_at, None
        if send_at is not None:
            time.sleep(max(0.0, send_at - time.time()))
        sent_at = time.time()
        response = super().send(request, stream=stream, timeout=pacer.timeout or timeout or self._probe_timeout,
                                verify=self._probe_verify, cert=cert, proxies=proxies)
        received_at = time.time()
        read_whole(response)  # the same object, with a faster iter_content (see ews_internals)
        pacer.last = (sent_at, received_at)
        self._clock.observe(sent_at=sent_at, received_at=received_at, date_header=response.headers.get("Date"))
        return response


def _build(cfg: Any) -> Version | None:
    if not cfg:
        return None
    parts = [int(p) for p in str(cfg).split(".")]
    return Version(build=Build(*parts))


def _folder_id(config: MailboxConfig, folder: MailboxFolder | str) -> DistinguishedFolderId:
    """Return the EWS distinguished folder of the mailbox that a neutral folder name stands for."""
    return DistinguishedFolderId(id=_EWS_FOLDERS[folder], mailbox=EwsAddress(email_address=config.address))


def ews_section(config: MailboxConfig) -> EwsConfig:
    """Return the mailbox's ``ews:`` section; a mailbox of another backend is a caller's mistake."""
    if not isinstance(config.backend, EwsConfig):
        raise TypeError(f"mailbox {config.name} is not an EWS mailbox")
    return config.backend


def _account(config: MailboxConfig, clock: ClockOffset, pacer: _Pacer, *, max_connections: int) -> Account:
    """Make an exchangelib Account whose protocol is this mailbox's own."""
    ews = ews_section(config)
    verify: bool | str = str(ews.ca_file) if ews.verify and ews.ca_file else ews.verify
    exconfig = Configuration(
        service_endpoint=ews.url, credentials=Credentials(ews.username, ews.password.reveal()),
        auth_type=NTLM if ews.auth == "ntlm" else BASIC, version=_build(ews.version),
        retry_policy=FailFast(), max_connections=max_connections,
    )
    account = Account(primary_smtp_address=config.address, config=exconfig, autodiscover=False,
                      access_type=DELEGATE, default_timezone=EWS_UTC)

    def adapter() -> _ProbeAdapter:
        return _ProbeAdapter(verify=verify, timeout=ews.timeout, clock=clock, pacer=pacer)

    own_protocol(account, config=exconfig, adapter=adapter, timeout=ews.timeout)
    return account


class EwsMailbox:
    """A probe mailbox reached over EWS: search, cleanup, watch."""

    def __init__(self, config: MailboxConfig, *, key: bytes) -> None:
        self._config = config
        self._ews = ews_section(config)
        self._key = key
        self.clock = ClockOffset()
        self._pacer = _Pacer()
        self._calibrating = threading.Lock()
        self._account = _account(config, self.clock, self._pacer, max_connections=2)
        self._folders = [_folder_id(config, folder) for folder in config.folders]
        self._first_seen: dict[str, float] = {}
        self._verified: set[str] = set()
        self._lock = threading.Lock()
        self._watches: list[EwsWatch] = []

    @property
    def name(self) -> str:
        """Return the configured name of the mailbox."""
        return self._config.name

    # -- clock --------------------------------------------------------------------------------------

    @property
    def clock_uncertainty(self) -> float | None:
        """Return how far, in seconds, the server clock offset may be off now; None when it is unknown."""
        estimate = self.clock.estimate(now=time.time())
        return None if estimate is None else estimate.uncertainty

    def calibrate_clock(self, *, target_uncertainty: float = 0.05,
                        budget_seconds: float = 5.0) -> OffsetEstimate | None:
        """Narrow the server clock offset to ``target_uncertainty`` with timed GetFolder requests; never raise.

        Costs nothing while the estimate is narrow enough (it stays so until its responses age out, 15
        minutes); otherwise about five requests and as many seconds at most. Returns the estimate (None
        when the server gave no usable response). One calibration runs at a time; a caller that waited
        for another's finds the estimate narrow and sends nothing.
        """
        wait = budget_seconds + self._ews.timeout
        if not self._calibrating.acquire(timeout=max(0.0, wait)):
            return self.clock.estimate(now=time.time())
        try:
            deadline = time.time() + budget_seconds
            return calibrate(self.clock, lambda at: self._timed_ping(at, deadline),
                             target=target_uncertainty, budget=budget_seconds)
        except Exception as exc:  # calibration is an optimisation: a failure leaves the estimate as it was
            log.warning("mailbox %s: clock calibration failed: %s", self._config.name, describe(exc))
            return self.clock.estimate(now=time.time())
        finally:
            self._calibrating.release()

    def _timed_ping(self, send_at: float, deadline: float) -> float | None:
        """Send one GetFolder (Inbox, IdOnly) no earlier than ``send_at``; return its round trip, or None."""
        pacer = self._pacer
        pacer.last, pacer.send_at = None, send_at
        pacer.timeout = min(self._ews.timeout, max(1.0, deadline - send_at))
        try:
            inbox = _folder_id(self._config, MailboxFolder.INBOX)
            list(PingFolder(account=self._account).call(folders=[inbox], additional_fields=[], shape="IdOnly"))
        except Exception as exc:  # an error response still carries its Date; no response ends calibration
            log.debug("mailbox %s: clock calibration request failed: %s", self._config.name, describe(exc))
        finally:
            pacer.send_at = pacer.timeout = None
        return None if pacer.last is None else pacer.last[1] - pacer.last[0]

    # -- search ---------------------------------------------------------------------------------------

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        """Find the probes in flight (and the reports about ``reports_for``) in Inbox and Junk with one FindItem
        and one GetItem; never raise."""
        started = time.time()
        deadline = deadline if deadline is not None else started + 2 * self._ews.timeout
        since = since if since is not None else started - DEFAULT_LOOKBACK
        try:
            found = self._retrying(lambda: self._find(since), deadline)
            seen_at = time.time()
            screened = self._screen(found, set(probe_ids), set(reports_for))
            wanted, reports = screened.probes, screened.reports
            details = self._retrying(lambda: self._get([w.item for w in (*wanted, *reports)], mime=bool(reports)),
                                     deadline) if wanted or reports else []
            sightings = self._sightings(wanted, details, seen_at)
            candidates = self._report_candidates(reports, details, seen_at)
        except Exception as exc:  # a failed search is a result, never a raise
            return self._failed(started, exc)
        estimate = self.clock.estimate()
        return SearchResult(
            ok=True, started_at=started, finished_at=time.time(), sightings=sightings, reports=candidates,
            foreign_skipped=screened.foreign, forged=screened.forged,
            clock_offset=None if estimate is None else estimate.offset,
            clock_uncertainty=None if estimate is None else estimate.uncertainty,
        )

    def _failed(self, started: float, exc: BaseException) -> SearchResult:
        local, text = local_fault(exc), describe(exc)
        if local is not None:  # the probe's own host failed: not the mailbox's error (the observer logs it)
            return SearchResult(ok=False, started_at=started, finished_at=time.time(), local=local, error=text)
        reason = classify(exc)
        log.warning("mailbox %s: search failed (%s): %s", self._config.name, reason, text)
        return SearchResult(ok=False, started_at=started, finished_at=time.time(), error_reason=reason, error=text)

    def _find(self, since: float) -> list[_RawItem]:
        estimate = self.clock.estimate()
        skew = 0.0 if estimate is None else estimate.offset
        floor = datetime.fromtimestamp(since + skew - SEARCH_MARGIN, tz=UTC).replace(microsecond=0)
        query = Q(subject__contains=self._subject_term()) & Q(
            datetime_received__gte=EWSDateTime.from_datetime(floor))
        service = FindTagged(account=self._account, page_size=PAGE_SIZE)
        names = ("subject", "datetime_received", "item_class")
        fields = [FieldPath(field=Message.get_field_by_fieldname(n)) for n in names]
        found = _raise_first(service.call(
            folders=self._folders, additional_fields=fields,
            restriction=Restriction(query, folders=[Folder()], applies_to=Restriction.ITEMS),
            order_fields=None, shape="IdOnly", query_string=None, depth="Shallow", calendar_view=None,
            max_items=None, offset=0,
        ))
        return [_raw_item(elem) for elem in found if elem is not None]

    def _subject_term(self) -> str:
        """Return what the subject of every probe in flight contains: one search finds them all."""
        return probe_message.tag_search_prefix()

    def _get(self, items: Sequence[_RawItem], *, mime: bool = False) -> list[_RawItem]:
        service = GetRaw(account=self._account, chunk_size=GET_CHUNK)
        names = ("subject", "datetime_received", "message_id", "headers", "item_class") + (
            ("mime_content",) if mime else ())
        fields = [FieldPath(field=Message.get_field_by_fieldname(n)) for n in names]
        results = service.call(items=[(i.item_id, i.change_key) for i in items], additional_fields=fields,
                               shape="IdOnly")
        # an item gone since FindItem is an exception among the results, and skipped
        return [_raw_item(r) for r in results if r is not None and not isinstance(r, Exception)]

    def _screen(self, found: Iterable[_RawItem], wanted: set[str], reports_for: set[str]) -> _Screened:
        """Keep items whose tag verifies and that are wanted: probes, and reports about ``reports_for``; count
        foreign and forged ones."""
        screened = _Screened()
        for item in found:
            tag = probe_message.parse_tag(item.subject)
            if tag is None:
                screened.foreign += 1
            elif not probe_message.verify_tag(self._key, tag):
                screened.forged += 1
            elif item.is_report and tag.probe_id in reports_for:
                screened.reports.append(_Candidate(item=item, probe_id=tag.probe_id, tag=str(tag)))
            elif not item.is_report and tag.probe_id in wanted:
                screened.probes.append(_Candidate(item=item, probe_id=tag.probe_id, tag=str(tag)))
        return screened

    def _report_candidates(self, reports: Sequence[_Candidate], details: Sequence[_RawItem],
                           seen_at: float) -> list[ReportCandidate]:
        """Return the reports' raw content with their arrival, for probe.dsn to read (never parsed here)."""
        by_id = {d.item_id: d for d in details}
        estimate = self.clock.estimate()
        candidates = []
        for candidate in reports:
            detail = by_id.get(candidate.item.item_id)
            stamp = parse_ews_datetime(detail.received if detail else None)
            if detail is None or detail.mime is None or stamp is None:
                continue
            with self._lock:
                first_seen = self._first_seen.setdefault(detail.item_id, seen_at)
                self._verified.add(detail.item_id)  # its subject's tag verifies: a cleanup needs no second look
            arrival = local_arrival(received_server=stamp[0].timestamp(), precise=stamp[1],
                                    first_seen_local=first_seen, offset=estimate)
            candidates.append(ReportCandidate(
                probe_id=candidate.probe_id, mailbox=self._config.name,
                folder=_NEUTRAL_FOLDERS.get(candidate.item.folder, MailboxFolder.INBOX), item=detail.ref,
                raw=detail.mime, received_server=stamp[0], received_local=arrival.at, first_seen_local=first_seen))
        return candidates

    def _sightings(self, wanted: Sequence[_Candidate], details: Sequence[_RawItem],
                   seen_at: float) -> list[Sighting]:
        by_id = {d.item_id: d for d in details}
        estimate = self.clock.estimate()
        sightings = []
        for candidate in wanted:
            detail = by_id.get(candidate.item.item_id)
            stamp = parse_ews_datetime(detail.received if detail else candidate.item.received)
            if detail is None or stamp is None:
                continue
            genuine = probe_message.probe_id_if_genuine(self._key, detail.subject, detail.headers)
            if genuine != candidate.probe_id:  # a forged header tag beside a genuine subject counts nothing
                continue
            with self._lock:
                first_seen = self._first_seen.setdefault(detail.item_id, seen_at)
                self._verified.add(detail.item_id)
            arrival = local_arrival(received_server=stamp[0].timestamp(), precise=stamp[1],
                                    first_seen_local=first_seen, offset=estimate)
            sightings.append(Sighting(
                probe_id=candidate.probe_id, tag=candidate.tag, mailbox=self._config.name,
                folder=_NEUTRAL_FOLDERS.get(candidate.item.folder, MailboxFolder.INBOX), item=detail.ref,
                message_id=detail.message_id, subject=detail.subject, received_server=stamp[0],
                received_precise=stamp[1], received_local=arrival.at,
                received_uncertainty=(arrival.latest - arrival.earliest) / 2, first_seen_local=first_seen,
                hops=parse_received([v for k, v in detail.headers if k.lower() == "received"]),
            ))
        return sightings

    def _retrying(self, action: Callable[[], T], deadline: float) -> T:
        """Run ``action``; when the server is busy, wait its back-off and try again, a bounded number of times."""
        for attempt in range(1, MAX_TRIES + 1):
            try:
                return action()
            except Exception as exc:
                if classify(exc) is not MailboxReason.THROTTLED or attempt == MAX_TRIES:
                    raise
                wait = float(getattr(exc, "back_off", None) or 1.0)
                if time.time() + wait > deadline:
                    raise
                log.info("mailbox %s: server busy, retrying in %.3f s", self._config.name, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- cleanup --------------------------------------------------------------------------------------

    def cleanup(self, items: Sequence[ItemRef]) -> CleanupResult:
        """Delete verified probe messages the configured way, in batches; never raise.

        Items this mailbox has not itself seen verified are read first and deleted only if their tag verifies.
        """
        if not items or self._config.cleanup == "keep":
            return CleanupResult(ok=True)
        deadline = time.time() + 2 * self._ews.timeout
        try:
            verified = self._retrying(lambda: self._verified_refs(items), deadline)
            deleted, missing = self._retrying(lambda: self._delete(verified), deadline) if verified else ([], [])
        except Exception as exc:  # a failed cleanup is tried again on the next poll
            reason, text = classify(exc), describe(exc)
            log.warning("mailbox %s: cleanup failed (%s): %s", self._config.name, reason, text)
            return CleanupResult(ok=False, error_reason=reason, error=text)
        return CleanupResult(ok=True, deleted=len(deleted), missing=len(missing),
                             refused=len(items) - len(verified), gone=(*deleted, *missing))

    def _verified_refs(self, items: Sequence[ItemRef]) -> list[ItemRef]:
        with self._lock:
            known = [ref for ref in items if ref.key in self._verified]
            unknown = [ref for ref in items if ref.key not in self._verified]
        if unknown:
            probes = [_RawItem(item_id=ref.key, change_key=ref.extra, folder="", subject="", received=None,
                               message_id="", headers=()) for ref in unknown]
            for item in self._get(probes):
                genuine = probe_message.probe_id_if_genuine(self._key, item.subject, item.headers)
                if genuine is not None:
                    known.append(item.ref)
        return known

    def _delete(self, refs: Sequence[ItemRef]) -> tuple[list[ItemRef], list[ItemRef]]:
        """Delete items; return those deleted and those already gone."""
        service = DeleteItem(account=self._account, chunk_size=GET_CHUNK)
        results = list(service.call(
            items=[(ref.key, ref.extra) for ref in refs], delete_type=_DELETE_TYPES[self._config.cleanup],
            send_meeting_cancellations="SendToNone", affected_task_occurrences="AllOccurrences",
            suppress_read_receipts=True,
        ))
        deleted, missing = [], []
        for ref, result in zip(refs, results, strict=False):
            if result is True:
                deleted.append(ref)
            elif isinstance(result, ErrorItemNotFound):
                missing.append(ref)
            elif isinstance(result, Exception):
                raise result
        with self._lock:
            self._verified.difference_update(ref.key for ref in (*deleted, *missing))
        return deleted, missing

    # -- watch ----------------------------------------------------------------------------------------

    def watch(self, on_new_mail: Callable[[float], None]) -> EwsWatch:
        """Open a streaming subscription on the folders and call ``on_new_mail(time)`` on each NewMail event."""
        account = _account(self._config, self.clock, self._pacer, max_connections=1)
        watch = EwsWatch(account=account, folders=self._folders, on_new_mail=on_new_mail, name=self._config.name)
        with self._lock:
            self._watches.append(watch)
        watch.start()
        return watch

    def close(self) -> None:
        """Stop every watch and close this mailbox's connections."""
        with self._lock:
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.stop()
        self._account.protocol.close()


@dataclass(frozen=True, kw_only=True)
class _Candidate:
    item: _RawItem
    probe_id: str
    tag: str


@dataclass
class _Screened:
    """What one FindItem's items came to: wanted probes, wanted reports, and how many were foreign or forged."""

    probes: list[_Candidate] = field(default_factory=list)
    reports: list[_Candidate] = field(default_factory=list)
    foreign: int = 0
    forged: int = 0


def _raise_first(results: Iterable[Any]) -> list[Any]:
    items = list(results)
    for item in items:
        if isinstance(item, Exception):
            raise item
    return items


def _shut_down(response: Any) -> None:
    """Shut the socket of a streaming response down, so a read blocked on it returns at once."""
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class EwsWatch:
    """A background thread holding a streaming subscription open, reopening it after each timeout or error."""

    RETRY_SECONDS: Final = 5.0

    def __init__(self, *, account: Account, folders: Sequence[DistinguishedFolderId],
                 on_new_mail: Callable[[float], None], name: str) -> None:
        self._account = account
        self._folders = list(folders)
        self._on_new_mail = on_new_mail
        self._name = name
        self._stopping = threading.Event()
        self._service: NewMailEvents | None = None
        self._connected = False
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"ews-watch-{name}", daemon=True)

    @property
    def connected(self) -> bool:
        """Say whether the notification stream is open now (its response headers have arrived)."""
        service = self._service
        return self._connected and service is not None and streaming_response(service) is not None

    @property
    def last_error(self) -> str | None:
        """Return the last error of the stream (redacted), if any."""
        return self._last_error

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and wait up to ``timeout`` seconds for the stream to close."""
        self._stopping.set()
        service = self._service
        if service is not None:
            _shut_down(streaming_response(service))  # wakes the reading thread; close() alone would not
        self._thread.join(timeout)
        self._account.protocol.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._subscribed()
            except Exception as exc:  # the watch outlives any one failure
                self._connected = False
                if self._stopping.is_set():
                    break
                self._last_error = f"{classify(exc)}: {describe(exc)}"
                log.warning("mailbox %s: watch stream failed: %s", self._name, self._last_error)
                self._stopping.wait(self.RETRY_SECONDS)

    def _subscribed(self) -> None:
        subscription = SubscribeToStreaming(account=self._account).get(
            folders=self._folders, event_types=["NewMailEvent"])
        try:
            while not self._stopping.is_set():
                self._stream(subscription)
        finally:
            self._connected = False
            try:
                Unsubscribe(account=self._account).get(subscription_id=subscription, expect_result=None)
            except Exception:  # the subscription expires on its own anyway
                log.debug("mailbox %s: unsubscribe failed", self._name)

    def _stream(self, subscription: str) -> None:
        self._service = service = NewMailEvents(account=self._account)
        self._connected = True
        for count in service.call(subscription_ids=[subscription], connection_timeout=WATCH_MINUTES):
            if isinstance(count, Exception):
                raise count
            if count and not self._stopping.is_set():
                self._notify()
        self._connected = False

    def _notify(self) -> None:
        try:
            self._on_new_mail(time.time())
        except Exception:
            log.exception("mailbox %s: the new-mail callback failed", self._name)
