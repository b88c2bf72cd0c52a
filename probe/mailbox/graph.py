"""The confirm step over Microsoft Graph v1.0 (app-only), with MSAL tokens and requests: search, cleanup, clock.

A search is one request per configured folder: the folder's messages received since the oldest probe in
flight was sent (``$filter=receivedDateTime ge ...``), only the fields the probe reads (``$select``), a
thousand a page, more pages by ``@odata.nextLink``. Delta queries were weighed: they also cost one request
per folder per poll, and their first round pages through the whole folder, so they save no requests here.
The receipt stamp is ``receivedDateTime`` (whole seconds); the server clock's offset comes from the HTTP
Date of every response, narrowed by timed requests. The same listings cover the delivery status reports of
the probes whose NDRs come back here (``reports_for``): each listed message comes with its message class
(``$expand`` of the extended property ``String 0x001A``, ``REPORT.IPM.Note.NDR`` for an NDR, as EWS's item
class); a report's MIME content (``/messages/{id}/$value``) is read once, one request per report, and
handed over raw for probe.dsn. ``429`` and ``503`` are retried after their
``Retry-After``, a bounded number of times; a ``401`` gets one fresh token. Cleanup acts on verified probes
twenty at a time in JSON batches (``$batch``): move to deleteditems, DELETE, or permanentDelete. There is
no push: a probe behind a firewall cannot take Graph's webhooks, so the mailbox is polled.
"""

from __future__ import annotations

import email.utils
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import requests
import requests.adapters

from probe import message as probe_message
from probe.config import GraphConfig, MailboxConfig
from probe.local_faults import local_fault
from probe.mailbox.base import CleanupResult, ItemRef, ReportCandidate, SearchResult, Sighting
from probe.mailbox.clock import ClockOffset, OffsetEstimate, calibrate, local_arrival
from probe.mailbox.graph_auth import GraphAuthError, GraphTokens
from probe.mailbox.received import parse_received as parse_hops
from probe.secret import redact
from probe.vocabulary import MailboxFolder, MailboxReason

log = logging.getLogger(__name__)

MAX_TRIES: Final = 3  # attempts per request when Graph says to come back later
MAX_WAIT: Final = 30.0  # the longest Retry-After honoured (longer ones end the attempt)
PAGE_SIZE: Final = 1000
MAX_PAGES: Final = 50
BATCH_SIZE: Final = 20  # Graph's limit of requests in one $batch
SEARCH_MARGIN: Final = 300.0
DEFAULT_LOOKBACK: Final = 86400.0
SELECT: Final = "id,subject,receivedDateTime,internetMessageId,internetMessageHeaders"
EXPAND: Final = "singleValueExtendedProperties($filter=id eq 'String 0x001A')"  # PidTagMessageClass
_REPORT_CLASS: Final = "REPORT."  # the message classes of delivery status reports (REPORT.IPM.Note.NDR, ...)
MAX_REPORTS_KEPT: Final = 1000  # raw reports kept between polls (a delay notification is looked at until decided)
_ACTIONS: Final = {  # cleanup mode -> (method, path after the message, body)
    "move_to_deleted_items": ("POST", "/move", {"destinationId": "deleteditems"}),
    "soft_delete": ("DELETE", "", None),
    "hard_delete": ("POST", "/permanentDelete", None),
}
_MAX_ERROR: Final = 400
_STAMP: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,7})?Z")


def parse_received(text: str) -> tuple[datetime, bool] | None:
    """Parse Graph's ``receivedDateTime`` (UTC, ``Z``) and say whether it has a fraction of a second."""
    match = _STAMP.fullmatch(text.strip())
    if match is None:
        return None
    try:
        stamp = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
    except ValueError:
        return None
    fraction = match[2]
    return stamp.replace(microsecond=int((fraction[1:] + "000000")[:6])) if fraction else stamp, fraction is not None


class GraphError(Exception):
    """Graph answered with an error status; ``reason`` says what it counts as."""

    def __init__(self, reason: MailboxReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def graph_section(config: MailboxConfig) -> GraphConfig:
    """Return the mailbox's ``graph:`` section; a mailbox of another backend is a caller's mistake."""
    if not isinstance(config.backend, GraphConfig):
        raise TypeError(f"mailbox {config.name} is not a Graph mailbox")
    return config.backend


def status_reason(status: int, *, retry_after: bool) -> MailboxReason:
    """Return what an HTTP error status from Graph counts as."""
    if status in (401, 403):
        return MailboxReason.UNAUTHORIZED
    if status == 429 or (status == 503 and retry_after):
        return MailboxReason.THROTTLED
    if status >= 500:
        return MailboxReason.SERVER_ERROR
    return MailboxReason.PROTOCOL


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def classify(exc: BaseException) -> MailboxReason:
    """Say why a Graph request failed, from our own finding or the most specific cause in the chain."""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, GraphError | GraphAuthError):
            return link.reason
    rules: tuple[tuple[MailboxReason, type[BaseException] | tuple[type[BaseException], ...]], ...] = (
        (MailboxReason.UNREACHABLE, (ssl.SSLEOFError, ssl.SSLZeroReturnError)),
        (MailboxReason.TLS, (requests.exceptions.SSLError, ssl.SSLError)),
        (MailboxReason.TIMEOUT, (requests.exceptions.Timeout, TimeoutError)),
        (MailboxReason.UNREACHABLE, (requests.exceptions.ConnectionError, ConnectionError)),
    )
    for reason, kinds in rules:
        if any(isinstance(link, kinds) for link in chain):
            return reason
    return MailboxReason.PROTOCOL


def describe(exc: BaseException) -> str:
    """Return a short, redacted description of a failure (no token, no secret)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return redact(text[:_MAX_ERROR] + ("..." if len(text) > _MAX_ERROR else ""))


def retry_after(response: requests.Response, *, now: float) -> float | None:
    """Return the seconds a response's Retry-After asks for (seconds or an HTTP date), or None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now) if value else None
    except (TypeError, ValueError):
        return None


class _Pacer(threading.local):
    """Per thread: when its next request may go out at the earliest, and how its last exchange went."""

    def __init__(self) -> None:
        self.send_at: float | None = None
        self.last: tuple[float, float] | None = None


class _TimedAdapter(requests.adapters.HTTPAdapter):
    """Verify against the mailbox's CA, bound every request in time, and feed each response's Date to the clock."""

    def __init__(self, *, verify: bool | str, timeout: float, clock: ClockOffset, pacer: _Pacer) -> None:
        self._probe_verify, self._probe_timeout, self._clock, self._pacer = verify, timeout, clock, pacer
        super().__init__(pool_connections=2, pool_maxsize=4, max_retries=0)

    def send(self, request: requests.PreparedRequest,  # noqa: PLR0917 - HTTPAdapter.send's signature
             stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        """Send with this mailbox's verification and timeout; time the exchange for the clock."""
        send_at, self._pacer.send_at = self._pacer.send_at, None
        if send_at is not None:
            time.sleep(max(0.0, send_at - time.time()))
        sent = time.time()
        response = super().send(request, stream=stream, timeout=self._probe_timeout, verify=self._probe_verify,
                                cert=cert, proxies=proxies)
        received = time.time()
        self._pacer.last = (sent, received)
        self._clock.observe(sent_at=sent, received_at=received, date_header=response.headers.get("Date"))
        return response


@dataclass(frozen=True, kw_only=True)
class _Message:
    """One listed message, screened for a tag."""

    ref: ItemRef
    folder: MailboxFolder | str
    received: tuple[datetime, bool] | None
    subject: str
    message_id: str
    headers: tuple[tuple[str, str], ...]
    probe_id: str | None
    forged: bool
    report: bool = False  # a delivery status report (its message class): never a sighting


def _message_class(item: dict[str, Any]) -> str:
    """Return a listed message's class from its expanded extended properties ("" when absent)."""
    for prop in item.get("singleValueExtendedProperties") or []:
        if isinstance(prop, dict) and re.fullmatch(r"string\s+0x0*1a", str(prop.get("id", "")).strip().lower()):
            return str(prop.get("value") or "")
    return ""


class _NoPush:
    """Graph's only push is a webhook, which a probe behind a firewall cannot take: the mailbox is polled."""

    connected = False
    last_error: str | None = "Microsoft Graph has no push without a webhook; the mailbox is polled"

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing runs: nothing to stop."""


class GraphMailbox:
    """A probe mailbox reached over Microsoft Graph: search, cleanup, clock."""

    def __init__(self, config: MailboxConfig, *, key: bytes) -> None:
        self._config = config
        self._graph = graph_section(config)
        self._key = key
        self.clock = ClockOffset()
        self._pacer = _Pacer()
        self._tokens = GraphTokens(self._graph)
        self._session = requests.Session()
        verify: bool | str = str(self._graph.ca_file) if self._graph.verify and self._graph.ca_file \
            else self._graph.verify
        self._session.mount("https://", _TimedAdapter(verify=verify, timeout=self._graph.timeout, clock=self.clock,
                                                      pacer=self._pacer))
        self._root = self._graph.endpoint.rstrip("/") + "/v1.0"
        self._user = f"/users/{quote(config.address, safe='@')}"
        self._first_seen: dict[str, float] = {}
        self._verified: set[str] = set()
        self._raw: dict[str, bytes] = {}  # by message id: the MIME content of reports read, until cleaned up
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Return the configured name of the mailbox."""
        return self._config.name

    # -- requests ---------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, deadline: float, params: dict[str, str] | None = None,
                 body: object = None, accept: str = "application/json") -> requests.Response:
        """Send one request with the app's token; honour Retry-After and renew a refused token, boundedly."""
        refreshed = False
        for attempt in range(1, MAX_TRIES + 1):
            headers = {"Authorization": f"Bearer {self._tokens.token()}", "Accept": accept}
            response = self._session.request(method, url, params=params, json=body, headers=headers)
            if response.status_code == 401 and not refreshed:
                self._tokens.drop()
                refreshed = True
                continue
            wait = retry_after(response, now=time.time()) if response.status_code in (429, 503) else None
            if wait is not None and attempt < MAX_TRIES and wait <= MAX_WAIT and time.time() + wait <= deadline:
                log.info("mailbox %s: Graph asks to retry in %.1f s (%d)", self.name, wait, response.status_code)
                time.sleep(wait)
                continue
            return self._checked(response)
        return self._checked(response)

    @staticmethod
    def _checked(response: requests.Response) -> requests.Response:
        if response.status_code < 400:
            return response
        try:
            error = response.json().get("error", {})
            code, text = error.get("code", ""), error.get("message", "")
        except (ValueError, AttributeError):
            code, text = "", response.text[:200]
        reason = status_reason(response.status_code, retry_after="Retry-After" in response.headers)
        raise GraphError(reason, f"HTTP {response.status_code} {code}: {text}".strip())

    # -- clock ------------------------------------------------------------------------------------------

    @property
    def clock_uncertainty(self) -> float | None:
        """Return how far, in seconds, the server clock offset may be off now; None when it is unknown."""
        estimate = self.clock.estimate(now=time.time())
        return None if estimate is None else estimate.uncertainty

    def calibrate_clock(self, *, target_uncertainty: float = 0.05,
                        budget_seconds: float = 5.0) -> OffsetEstimate | None:
        """Narrow the server clock offset with timed requests for the Inbox folder's id; never raise."""
        deadline = time.time() + budget_seconds
        try:
            return calibrate(self.clock, lambda at: self._timed_ping(at, deadline),
                             target=target_uncertainty, budget=budget_seconds)
        except Exception as exc:  # calibration is an optimisation: a failure leaves the estimate as it was
            log.warning("mailbox %s: clock calibration failed: %s", self.name, describe(exc))
            return self.clock.estimate(now=time.time())

    def _timed_ping(self, send_at: float, deadline: float) -> float | None:
        self._tokens.token()  # a token fetched now does not delay the timed request
        self._pacer.last, self._pacer.send_at = None, send_at
        try:
            self._request("GET", f"{self._root}{self._user}/mailFolders/inbox", params={"$select": "id"},
                          deadline=deadline)
        except GraphError:
            pass  # an error response still carries its Date
        finally:
            self._pacer.send_at = None
        last = self._pacer.last
        return None if last is None else last[1] - last[0]

    # -- search -------------------------------------------------------------------------------------------

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        """Find the probes in flight (and the reports about ``reports_for``) with one request per folder (more only
        past a thousand messages), and one per report not read before; never raise."""
        started = time.time()
        deadline = deadline if deadline is not None else started + 2 * self._graph.timeout
        since = since if since is not None else started - DEFAULT_LOOKBACK
        wanted_reports = set(reports_for)
        try:
            found = [m for folder in self._config.folders for m in self._list(folder, since, deadline)]
            reports = [m for m in found if m.report and m.probe_id in wanted_reports]
            self._read_raw(reports, deadline)
            seen_at = time.time()
            sightings = self._sightings(found, set(probe_ids), seen_at)
            candidates = self._report_candidates(reports, seen_at)
        except Exception as exc:  # a failed search is a result, never a raise
            return self._failed(started, exc)
        estimate = self.clock.estimate()
        return SearchResult(
            ok=True, started_at=started, finished_at=time.time(), sightings=sightings, reports=candidates,
            foreign_skipped=sum(1 for m in found if m.probe_id is None and not m.forged),
            forged=sum(1 for m in found if m.forged),
            clock_offset=None if estimate is None else estimate.offset,
            clock_uncertainty=None if estimate is None else estimate.uncertainty)

    def _failed(self, started: float, exc: BaseException) -> SearchResult:
        local, text = local_fault(exc), describe(exc)
        if local is not None:
            return SearchResult(ok=False, started_at=started, finished_at=time.time(), local=local, error=text)
        reason = classify(exc)
        log.warning("mailbox %s: search failed (%s): %s", self.name, reason, text)
        return SearchResult(ok=False, started_at=started, finished_at=time.time(), error_reason=reason, error=text)

    def _list(self, folder: MailboxFolder | str, since: float, deadline: float) -> Iterator[_Message]:
        estimate = self.clock.estimate()
        floor = since + (0.0 if estimate is None else estimate.offset) - SEARCH_MARGIN
        stamp = datetime.fromtimestamp(floor, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        url: str | None = f"{self._root}{self._user}/mailFolders/{folder}/messages"
        params: dict[str, str] | None = {"$filter": f"receivedDateTime ge {stamp}", "$select": SELECT,
                                         "$expand": EXPAND, "$top": str(PAGE_SIZE)}
        for _page in range(MAX_PAGES):
            if url is None:
                return
            page = self._request("GET", url, params=params, deadline=deadline).json()
            for item in page.get("value", []):
                yield self._screen(item, folder)
            url, params = page.get("@odata.nextLink"), None

    def _screen(self, item: dict[str, Any], folder: MailboxFolder | str) -> _Message:
        headers = tuple((str(h.get("name", "")), str(h.get("value", "")))
                        for h in item.get("internetMessageHeaders") or [] if isinstance(h, dict))
        subject = str(item.get("subject") or "")
        tag = probe_message.parse_tag(subject)
        forged = tag is not None and not probe_message.verify_tag(self._key, tag)
        genuine = None if tag is None or forged else probe_message.probe_id_if_genuine(self._key, subject, headers)
        return _Message(ref=ItemRef(str(item.get("id", ""))), folder=folder, subject=subject, headers=headers,
                        received=parse_received(str(item.get("receivedDateTime") or "")),
                        message_id=str(item.get("internetMessageId") or "").strip(), probe_id=genuine,
                        forged=forged or (tag is not None and genuine is None),
                        report=_message_class(item).upper().startswith(_REPORT_CLASS))

    def _read_raw(self, reports: Sequence[_Message], deadline: float) -> None:
        """Read the MIME content of the reports not read before: one request each."""
        for m in reports:
            if m.ref.key not in self._raw:
                url = f"{self._root}{self._user}/messages/{quote(m.ref.key, safe='')}/$value"
                content = self._request("GET", url, deadline=deadline, accept="*/*").content
                with self._lock:
                    self._raw[m.ref.key] = content
        with self._lock:
            while len(self._raw) > MAX_REPORTS_KEPT:  # the oldest go first; they are read again if still wanted
                del self._raw[next(iter(self._raw))]

    def _report_candidates(self, reports: Sequence[_Message], seen_at: float) -> list[ReportCandidate]:
        """Return the reports' raw content with their arrival, for probe.dsn to read (never parsed here)."""
        estimate = self.clock.estimate()
        candidates = []
        for m in reports:
            raw = self._raw.get(m.ref.key)
            if raw is None or m.received is None or m.probe_id is None:
                continue
            with self._lock:
                first_seen = self._first_seen.setdefault(m.ref.key, seen_at)
                self._verified.add(m.ref.key)  # its subject's tag verifies: a cleanup needs no second look
            arrival = local_arrival(received_server=m.received[0].timestamp(), precise=m.received[1],
                                    first_seen_local=first_seen, offset=estimate)
            candidates.append(ReportCandidate(
                probe_id=m.probe_id, mailbox=self.name, folder=m.folder, item=m.ref, raw=raw,
                received_server=m.received[0], received_local=arrival.at, first_seen_local=first_seen))
        return candidates

    def _sightings(self, found: Sequence[_Message], wanted: set[str], seen_at: float) -> list[Sighting]:
        estimate = self.clock.estimate()
        sightings = []
        for m in found:
            if m.probe_id is None or m.probe_id not in wanted or m.received is None or m.report:
                continue  # a report names its probe in its subject, but is not the probe
            with self._lock:
                first_seen = self._first_seen.setdefault(m.ref.key, seen_at)
                self._verified.add(m.ref.key)
            stamp, precise = m.received
            arrival = local_arrival(received_server=stamp.timestamp(), precise=precise, first_seen_local=first_seen,
                                    offset=estimate)
            sightings.append(Sighting(
                probe_id=m.probe_id, tag=str(probe_message.parse_tag(m.subject)), mailbox=self.name, folder=m.folder,
                item=m.ref, message_id=m.message_id, subject=m.subject, received_server=stamp,
                received_precise=precise, received_local=arrival.at,
                received_uncertainty=(arrival.latest - arrival.earliest) / 2, first_seen_local=first_seen,
                hops=parse_hops([v for k, v in m.headers if k.lower() == "received"])))
        return sightings

    # -- cleanup ------------------------------------------------------------------------------------------

    def cleanup(self, items: Sequence[ItemRef]) -> CleanupResult:
        """Move or delete verified probes, twenty to a $batch; never raise.

        Items this mailbox has not seen verified itself are read first (batched too) and touched only if their
        tag verifies.
        """
        if not items or self._config.cleanup == "keep":
            return CleanupResult(ok=True)
        deadline = time.time() + 2 * self._graph.timeout
        try:
            verified, missing = self._verified_refs(items, deadline)
            deleted, gone = self._act(verified, deadline)
        except Exception as exc:  # a failed cleanup is tried again on the next poll
            reason, text = classify(exc), describe(exc)
            log.warning("mailbox %s: cleanup failed (%s): %s", self.name, reason, text)
            return CleanupResult(ok=False, error_reason=reason, error=text)
        with self._lock:
            for ref in (*deleted, *gone, *missing):
                self._verified.discard(ref.key)
                self._first_seen.pop(ref.key, None)
                self._raw.pop(ref.key, None)
        return CleanupResult(ok=True, deleted=len(deleted), missing=len(gone) + len(missing),
                             refused=len(items) - len(verified) - len(missing), gone=(*deleted, *gone, *missing))

    def _verified_refs(self, items: Sequence[ItemRef], deadline: float) -> tuple[list[ItemRef], list[ItemRef]]:
        with self._lock:
            known = [ref for ref in items if ref.key in self._verified]
            unknown = [ref for ref in items if ref.key not in self._verified]
        missing: list[ItemRef] = []
        reads = [("GET", f"{self._user}/messages/{quote(ref.key, safe='')}?$select=subject,internetMessageHeaders",
                  None) for ref in unknown]
        for ref, (status, body) in zip(unknown, self._batch(reads, deadline), strict=True):
            if status == 404:
                missing.append(ref)
            elif status < 300 and isinstance(body, dict) and self._screen(body, "").probe_id is not None:
                known.append(ref)
        return known, missing

    def _act(self, refs: Sequence[ItemRef], deadline: float) -> tuple[list[ItemRef], list[ItemRef]]:
        method, suffix, body = _ACTIONS[self._config.cleanup]
        requests_ = [(method, f"{self._user}/messages/{quote(ref.key, safe='')}{suffix}", body) for ref in refs]
        deleted: list[ItemRef] = []
        gone: list[ItemRef] = []
        for ref, (status, _body) in zip(refs, self._batch(requests_, deadline), strict=True):
            (gone if status == 404 else deleted).append(ref)
        return deleted, gone

    def _batch(self, calls: Sequence[tuple[str, str, object]], deadline: float) -> list[tuple[int, object]]:
        """Send calls in JSON batches of twenty; return each one's (status, body); raise on any other failure."""
        results: list[tuple[int, object]] = []
        for start in range(0, len(calls), BATCH_SIZE):
            chunk = calls[start:start + BATCH_SIZE]
            payload = {"requests": [
                {"id": str(i), "method": method, "url": url, **({"body": body, "headers": {
                    "Content-Type": "application/json"}} if body is not None else {})}
                for i, (method, url, body) in enumerate(chunk)]}
            reply = self._request("POST", f"{self._root}/$batch", body=payload, deadline=deadline).json()
            by_id = {str(r.get("id")): r for r in reply.get("responses", []) if isinstance(r, dict)}
            for i in range(len(chunk)):
                result = by_id.get(str(i), {})
                status = int(result.get("status", 0))
                if status >= 400 and status != 404:
                    error = result.get("body", {}).get("error", {}) if isinstance(result.get("body"), dict) else {}
                    raise GraphError(status_reason(status, retry_after="Retry-After" in result.get("headers", {})),
                                     f"HTTP {status} {error.get('code', '')}: {error.get('message', '')}")
                results.append((status, result.get("body")))
        return results

    # -- watch ----------------------------------------------------------------------------------------------

    def watch(self, on_new_mail: Callable[[float], None]) -> _NoPush:
        """Return a watch that never connects: Graph is polled (no webhook from behind a firewall)."""
        return _NoPush()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()
