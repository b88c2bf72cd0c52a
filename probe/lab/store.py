"""The lab's mailbox store: per address, the folders of an Exchange mailbox holding items; thread-safe.

It keeps what Exchange keeps of a delivered message and how Exchange 2013-2019 treat it: the receipt
stamp (on the forest's clock, to the millisecond, as the store holds it), a Message-ID stamped by the
server when the message came without one, the read flag, and the three delete modes (HardDelete removes;
SoftDelete, and MoveToDeletedItems of an item already in Deleted Items, move it to Recoverable
Items\\Deletions, out of the client's view; MoveToDeletedItems moves it to Deleted Items). Ids are
Exchange-shaped (``probe.lab.ids``); a moved item gets a new one.
"""

from __future__ import annotations

import base64
import email.message
import email.parser
import email.policy
import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from probe.lab import ids
from probe.lab.folder_tree import BY_NAME, FIRST_ITEM_COUNTER, RECOVERABLE, TREE

FOLDERS: Final = tuple(spec.name for spec in TREE)
DeleteMode = Literal["HardDelete", "SoftDelete", "MoveToDeletedItems"]
_CHANGE_KEY_HEAD: Final = b"\x09\x00\x00\x00\x16\x00\x00\x00"  # what an Exchange item ChangeKey starts with


@dataclass(kw_only=True)
class StoredItem:
    """One message in one folder of one mailbox, as EWS would show it."""

    item_id: str
    change_key: str
    mailbox: str
    folder: str
    raw: bytes
    subject: str
    message_id: str
    headers: list[tuple[str, str]]
    body: str
    received: datetime  # DateTimeReceived, on the server's clock (UTC, whole milliseconds)
    html_body: str | None = None
    item_class: str = "IPM.Note"
    counter: int = 0  # the item's global counter in its entry id
    is_read: bool = False
    accepted_at: float | None = None  # true time (time.time()) the smart host said 250
    delivered_at: float = 0.0  # true time the store took it


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    """The lab's own record of one delivery, for accuracy benchmarks."""

    mailbox: str
    message_id: str
    accepted_at: float | None
    delivered_at: float
    received: datetime
    folder: str


NewMailListener = Callable[[StoredItem], None]
Sink = Callable[[str, bytes, str, "float | None", str], None]
"""Where delivered mail goes instead of the store: (address, raw message, folder, accepted_at, Message-ID)."""


@dataclass
class _Mailbox:
    address: str
    forest: str
    folders: dict[str, dict[str, StoredItem]] = field(default_factory=lambda: {f: {} for f in FOLDERS})


@dataclass(frozen=True)
class _Parsed:
    subject: str
    message_id: str
    headers: list[tuple[str, str]]
    body: str
    html_body: str | None
    item_class: str


def _text_of(msg: email.message.Message, content_type: str) -> str | None:
    part = next((p for p in msg.walk() if p.get_content_type() == content_type
                 and p.get_content_disposition() != "attachment"), None)
    if part is None:
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    return payload.decode(part.get_content_charset() or "utf-8", errors="replace")


def _item_class(msg: email.message.Message) -> str:
    """Return the item class Exchange gives a message: an NDR is ``REPORT.IPM.Note.NDR``, a delay notification
    ``REPORT.IPM.Note.Delayed`` (MS-OXCMAIL 2.1.3.2.1: the class follows the DSN's Action)."""
    if msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status":
        return "REPORT.IPM.Note.Delayed" if _only_delayed(msg) else "REPORT.IPM.Note.NDR"
    return "IPM.Note"


def _only_delayed(report: email.message.Message) -> bool:
    """Say whether a delivery status report's recipients were all delayed (none failed)."""
    actions = [str(block.get("Action", "")).strip().lower()
               for part in report.get_payload() if isinstance(part, email.message.Message)
               and part.get_content_type() == "message/delivery-status"
               for block in part.get_payload() if isinstance(block, email.message.Message)]
    return bool(actions) and all(action == "delayed" for action in actions if action)


def _parse(raw: bytes) -> _Parsed:
    """Read subject, Message-ID, headers, bodies and item class of a raw message; never raise."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    headers = [(k, str(v)) for k, v in msg.items()]
    return _Parsed(subject=str(msg.get("Subject", "")), message_id=str(msg.get("Message-ID", "")).strip(),
                   headers=headers, body=_text_of(msg, "text/plain") or "",
                   html_body=_text_of(msg, "text/html"), item_class=_item_class(msg))


def _stamp_message_id(raw: bytes, address: str) -> tuple[bytes, str]:
    """Add the Message-ID header Exchange's transport stamps on a message that has none."""
    message_id = f"<{uuid.uuid4().hex}@mail.{address.rpartition('@')[2]}>"
    newline = b"\r\n" if b"\r\n" in raw[:2048] else b"\n"
    return f"Message-ID: {message_id}".encode() + newline + raw, message_id


def _change_key() -> str:
    return base64.b64encode(_CHANGE_KEY_HEAD + secrets.token_bytes(22)).decode()


def _to_milliseconds(stamp: datetime) -> datetime:
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def item_ews_id(address: str, folder: str, counter: int) -> str:
    """Return the EwsId of the item with a counter in a folder of a mailbox."""
    return ids.ews_id(address, ids.message_entry_id(address, BY_NAME[folder].counter, counter))


class MailboxStore:
    """Every mailbox of the lab. ``clock(forest)`` gives that forest's server time (time.time() + offset)."""

    def __init__(self, clock: Callable[[str], float] | None = None) -> None:
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._by_guid: dict[uuid.UUID, str] = {}
        self._by_id: dict[str, StoredItem] = {}
        self._listeners: list[NewMailListener] = []
        self._records: list[DeliveryRecord] = []
        self._clock = clock or (lambda _forest: time.time())
        self._seq = itertools.count(FIRST_ITEM_COUNTER)
        self._sink: Sink | None = None

    def set_sink(self, sink: Sink) -> None:
        """Hand every delivered message to ``sink`` (the lab's Dovecot) instead of keeping it here.

        The sink records each delivery with ``record_delivery`` once it is done; ``deliver`` then returns an
        item that the store does not hold (``get`` does not find it).
        """
        self._sink = sink

    def record_delivery(self, record: DeliveryRecord) -> None:
        """Add a delivery the sink made to the lab's record."""
        with self._lock:
            self._records.append(record)

    def add_mailbox(self, address: str, forest: str) -> None:
        """Create an empty mailbox for ``address`` in ``forest``."""
        with self._lock:
            self._mailboxes.setdefault(address.lower(), _Mailbox(address.lower(), forest))
            self._by_guid[ids.mailbox_guid(address)] = address.lower()

    def server_time(self, forest: str) -> float:
        """Return the forest's server clock now (time.time() plus any clock offset in force)."""
        return self._clock(forest)

    def has_mailbox(self, address: str) -> bool:
        """Say whether ``address`` is a mailbox of the lab."""
        return address.lower() in self._mailboxes

    def address_of(self, guid: uuid.UUID) -> str | None:
        """Return the address of the mailbox with this GUID, if the lab has it."""
        return self._by_guid.get(guid)

    def forest_of(self, address: str) -> str:
        """Return the forest a mailbox belongs to."""
        return self._mailboxes[address.lower()].forest

    def addresses(self, forest: str | None = None) -> list[str]:
        """Return the mailbox addresses, of one forest or all."""
        with self._lock:
            return [m.address for m in self._mailboxes.values() if forest is None or m.forest == forest]

    def add_listener(self, listener: NewMailListener) -> None:
        """Call ``listener(item)`` on every delivered item, outside the store's lock."""
        with self._lock:
            self._listeners.append(listener)

    def deliver(self, address: str, raw: bytes, *, folder: str = "inbox",
                accepted_at: float | None = None) -> StoredItem:
        """Put a raw RFC 5322 message into a folder of a mailbox, stamped on its forest's clock."""
        parsed = _parse(raw)
        message_id = parsed.message_id
        if not message_id:
            raw, message_id = _stamp_message_id(raw, address)
            parsed = _parse(raw)
        if self._sink is not None:
            return self._hand_over(address, raw, parsed, folder=folder, accepted_at=accepted_at)
        with self._lock:
            box = self._mailboxes[address.lower()]
            now = time.time()
            received = _to_milliseconds(datetime.fromtimestamp(self._clock(box.forest), tz=UTC))
            counter = next(self._seq)
            item = StoredItem(
                item_id=item_ews_id(box.address, folder, counter), change_key=_change_key(), counter=counter,
                mailbox=box.address, folder=folder, raw=raw, subject=parsed.subject, message_id=message_id,
                headers=parsed.headers, body=parsed.body, html_body=parsed.html_body,
                item_class=parsed.item_class, received=received, accepted_at=accepted_at, delivered_at=now,
            )
            box.folders[folder][item.item_id] = item
            self._by_id[item.item_id] = item
            self._records.append(DeliveryRecord(mailbox=box.address, message_id=message_id,
                                                accepted_at=accepted_at, delivered_at=now,
                                                received=received, folder=folder))
            listeners = list(self._listeners)
        for listener in listeners:
            listener(item)
        return item

    def _hand_over(self, address: str, raw: bytes, parsed: _Parsed, *, folder: str,
                   accepted_at: float | None) -> StoredItem:
        box = self._mailboxes[address.lower()]
        now = time.time()
        item = StoredItem(
            item_id="", change_key="", mailbox=box.address, folder=folder, raw=raw, subject=parsed.subject,
            message_id=parsed.message_id, headers=parsed.headers, body=parsed.body, html_body=parsed.html_body,
            item_class=parsed.item_class, received=_to_milliseconds(datetime.fromtimestamp(now, tz=UTC)),
            accepted_at=accepted_at, delivered_at=now,
        )
        assert self._sink is not None
        self._sink(box.address, raw, folder, accepted_at, parsed.message_id)
        return item

    def items(self, address: str, folders: Iterable[str]) -> list[StoredItem]:
        """Return a snapshot of the items of some folders of a mailbox."""
        with self._lock:
            box = self._mailboxes[address.lower()]
            return [item for f in folders for item in box.folders[f].values()]

    def counts(self, address: str, folder: str) -> tuple[int, int]:
        """Return how many items a folder holds, and how many of them are unread."""
        with self._lock:
            held = self._mailboxes[address.lower()].folders[folder].values()
            return len(held), sum(1 for item in held if not item.is_read)

    def get(self, item_id: str) -> StoredItem | None:
        """Return an item by id, or None when it no longer exists."""
        with self._lock:
            return self._by_id.get(item_id)

    def delete(self, item_id: str, mode: DeleteMode) -> bool:
        """Delete an item the way EWS DeleteItem does on Exchange 2013-2019; False when it does not exist."""
        with self._lock:
            item = self._by_id.get(item_id)
            if item is None:
                return False
            if mode == "MoveToDeletedItems" and item.folder != "deleteditems":
                self.move(item_id, "deleteditems")
            elif mode != "HardDelete" and item.folder not in RECOVERABLE:
                self.move(item_id, "recoverableitemsdeletions")
            else:
                del self._mailboxes[item.mailbox].folders[item.folder][item_id]
                del self._by_id[item_id]
            return True

    def move(self, item_id: str, folder: str) -> StoredItem | None:
        """Move an item to another folder; the moved item gets a new id, as in Exchange."""
        with self._lock:
            item = self._by_id.pop(item_id, None)
            if item is None:
                return None
            box = self._mailboxes[item.mailbox]
            del box.folders[item.folder][item_id]
            item.counter = next(self._seq)
            item.item_id = item_ews_id(item.mailbox, folder, item.counter)
            item.change_key = _change_key()
            item.folder = folder
            box.folders[folder][item.item_id] = item
            self._by_id[item.item_id] = item
            return item

    def records(self) -> list[DeliveryRecord]:
        """Return the lab's record of every delivery so far."""
        with self._lock:
            return list(self._records)

    def count(self, address: str | None = None) -> int:
        """Return how many items there are, in one mailbox or all."""
        with self._lock:
            boxes = [self._mailboxes[address.lower()]] if address else list(self._mailboxes.values())
            return sum(len(f) for b in boxes for f in b.folders.values())
