"""The mailbox interface of the confirm step: search for probes in flight, clean up, watch for new mail.

A backend is one module (or package) under probe/mailbox/ implementing ``Mailbox``, opened from the table
in probe.mailbox.backends. Everything here is backend-neutral: a message is an opaque ``ItemRef``, a folder
a ``MailboxFolder``, a clock calibration an ``OffsetEstimate``; verdicts, metrics and reports never see
which backend found a probe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from probe.mailbox.clock import OffsetEstimate
from probe.mailbox.received import Hop
from probe.vocabulary import LocalResource, MailboxFolder, MailboxReason


@dataclass(frozen=True)
class ItemRef:
    """One message in a mailbox as its backend refers to it; opaque to everything but that backend.

    ``key`` is unique in its mailbox and stable while the message stays where it is: the ledger and a
    cleanup know the message by it. ``extra`` is whatever else the backend needs to act on it (EWS: the
    ChangeKey). The ledger stores the reference as ``dumps()`` gives it.
    """

    key: str
    extra: str = ""

    def dumps(self) -> str:
        """Return the reference as text, for the ledger."""
        return json.dumps([self.key, self.extra], ensure_ascii=False)

    @classmethod
    def loads(cls, text: str) -> ItemRef:
        """Return the reference ``dumps`` wrote."""
        key, extra = json.loads(text)
        return cls(str(key), str(extra))


@dataclass(frozen=True, kw_only=True)
class Sighting:
    """One probe message found in the mailbox, its tag verified."""

    probe_id: str
    tag: str
    mailbox: str
    folder: MailboxFolder | str  # neutral where there is one (IMAP: a plain mailbox keeps its own name)
    item: ItemRef
    message_id: str
    subject: str
    received_server: datetime  # the server's receipt stamp, UTC, on the server's clock
    received_precise: bool  # True when the stamp has milliseconds, False when whole seconds
    received_local: float  # the arrival on the probe's clock (a time.time() value), offset-corrected
    received_uncertainty: float  # half-width, in seconds, of the interval received_local lies in
    first_seen_local: float  # time.time() when the probe first saw it: an upper bound of the arrival
    hops: tuple[Hop, ...] = ()  # from the Received headers, oldest first


@dataclass(frozen=True, kw_only=True)
class ReportCandidate:
    """An item that may be a delivery status report about a probe: its subject's tag verifies and names a probe
    whose NDRs come back to this mailbox. The backend only fetches its raw MIME content; probe.dsn reads it and
    decides (the backend never parses a DSN)."""

    probe_id: str  # the probe the subject's tag names
    mailbox: str
    folder: MailboxFolder | str  # neutral where there is one, as a Sighting's
    item: ItemRef
    raw: bytes  # the whole message as MIME (EWS MimeContent, IMAP BODY[], Graph $value)
    received_server: datetime  # the server's receipt stamp, UTC, on the server's clock
    received_local: float  # the arrival on the probe's clock, offset-corrected
    first_seen_local: float


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """What one search of a mailbox found, or why it could not look."""

    ok: bool
    started_at: float
    finished_at: float
    sightings: list[Sighting] = field(default_factory=list)
    reports: list[ReportCandidate] = field(default_factory=list)  # for the probes of ``reports_for``
    error_reason: MailboxReason | None = None
    error: str | None = None  # redacted
    foreign_skipped: int = 0  # matched the search but carry no tag at all
    forged: int = 0  # carry a tag of the right shape whose HMAC does not verify
    clock_offset: float | None = None  # server clock minus probe clock, seconds, when known
    clock_uncertainty: float | None = None
    local: LocalResource | None = None  # the probe's own host failed (no error_reason: not the mailbox's fault)


@dataclass(frozen=True, kw_only=True)
class CleanupResult:
    """What a cleanup removed, refused, or why it failed."""

    ok: bool
    deleted: int = 0
    missing: int = 0  # already gone
    refused: int = 0  # items whose tag does not verify (or that could not be read): not touched
    gone: tuple[ItemRef, ...] = ()  # the items deleted or already gone
    error_reason: MailboxReason | None = None
    error: str | None = None


class Watch(Protocol):
    """A running new-mail watch; stop it when done."""

    @property
    def connected(self) -> bool:
        """Say whether the notification stream is open now."""

    @property
    def last_error(self) -> str | None:
        """Return the last error of the stream (redacted), if any."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and wait up to ``timeout`` seconds for the stream to close."""


class Mailbox(Protocol):
    """A probe mailbox the confirm step can search."""

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        """Find the probes in flight in the configured folders with one search; never raise.

        ``since`` is the local time the oldest of them was sent (default: a day ago); ``deadline`` a local
        time to give up retrying by. The same search also returns, as ``reports``, the raw content of the
        items whose subject carries a verified tag of a probe in ``reports_for`` (the probes whose NDRs come
        back to this mailbox): an NDR's subject is ``Undeliverable: <the probe's subject>``.
        """

    def cleanup(self, items: Sequence[ItemRef]) -> CleanupResult:
        """Delete verified sightings in batches, the configured way; never raise.

        An item whose tag does not verify is never deleted, whoever asks.
        """

    def watch(self, on_new_mail: Callable[[float], None]) -> Watch:
        """Call ``on_new_mail(local_time)`` whenever new mail arrives, from a background thread."""

    @property
    def clock_uncertainty(self) -> float | None:
        """Return how far, in seconds, the server clock offset may be off now; None when unknown."""

    def calibrate_clock(self, *, target_uncertainty: float = 0.05,
                        budget_seconds: float = 5.0) -> OffsetEstimate | None:
        """Narrow the server clock offset estimate and return it (None when unknown); never raise.

        A backend whose stamps need no offset returns None at once.
        """

    def close(self) -> None:
        """Release connections and stop any watch."""
