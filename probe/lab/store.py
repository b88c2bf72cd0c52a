"""The lab's mailbox store: per address, folders of items, stamped on the server's clock; thread-safe."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

FOLDERS: Final = ("inbox", "junkemail", "deleteditems")
DeleteMode = Literal["HardDelete", "SoftDelete", "MoveToDeletedItems"]


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
    received: datetime  # DateTimeReceived, on the server's clock (UTC, with microseconds)
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


@dataclass
class _Mailbox:
    address: str
    forest: str
    folders: dict[str, dict[str, StoredItem]] = field(default_factory=lambda: {f: {} for f in FOLDERS})


def _new_id(prefix: bytes) -> str:
    return base64.b64encode(prefix + secrets.token_bytes(30)).decode()


def _parse(raw: bytes) -> tuple[str, str, list[tuple[str, str]], str]:
    """Return subject, Message-ID, headers and text body of a raw message; never raise."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    headers = [(k, str(v)) for k, v in msg.items()]
    body = ""
    part = next((p for p in msg.walk() if p.get_content_type() == "text/plain"), None)
    if part is not None:
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            body = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    return str(msg.get("Subject", "")), str(msg.get("Message-ID", "")).strip(), headers, body


class MailboxStore:
    """Every mailbox of the lab. ``clock(forest)`` gives that forest's server time (time.time() + offset)."""

    def __init__(self, clock: Callable[[str], float] | None = None) -> None:
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._by_id: dict[str, StoredItem] = {}
        self._listeners: list[NewMailListener] = []
        self._records: list[DeliveryRecord] = []
        self._clock = clock or (lambda _forest: time.time())
        self._seq = itertools.count()

    def add_mailbox(self, address: str, forest: str) -> None:
        """Create an empty mailbox for ``address`` in ``forest``."""
        with self._lock:
            self._mailboxes.setdefault(address.lower(), _Mailbox(address.lower(), forest))

    def has_mailbox(self, address: str) -> bool:
        """Say whether ``address`` is a mailbox of the lab."""
        return address.lower() in self._mailboxes

    def forest_of(self, address: str) -> str:
        """Return the forest a mailbox belongs to."""
        return self._mailboxes[address.lower()].forest

    def addresses(self, forest: str | None = None) -> list[str]:
        """Return the mailbox addresses, of one forest or all."""
        with self._lock:
            return [m.address for m in self._mailboxes.values() if forest is None or m.forest == forest]

    def add_listener(self, listener: NewMailListener) -> None:
        """Call ``listener(item)`` on every new item (delivery or move), outside the store's lock."""
        with self._lock:
            self._listeners.append(listener)

    def deliver(self, address: str, raw: bytes, *, folder: str = "inbox",
                accepted_at: float | None = None) -> StoredItem:
        """Put a raw RFC 5322 message into a folder of a mailbox, stamped on its forest's clock."""
        subject, message_id, headers, body = _parse(raw)
        with self._lock:
            box = self._mailboxes[address.lower()]
            now = time.time()
            received = datetime.fromtimestamp(self._clock(box.forest), tz=UTC)
            item = StoredItem(
                item_id=_new_id(next(self._seq).to_bytes(8, "big")), change_key=_new_id(b"ck"),
                mailbox=box.address, folder=folder, raw=raw, subject=subject, message_id=message_id,
                headers=headers, body=body, received=received, accepted_at=accepted_at, delivered_at=now,
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

    def items(self, address: str, folders: Iterable[str]) -> list[StoredItem]:
        """Return a snapshot of the items of some folders of a mailbox."""
        with self._lock:
            box = self._mailboxes[address.lower()]
            return [item for f in folders for item in box.folders[f].values()]

    def get(self, item_id: str) -> StoredItem | None:
        """Return an item by id, or None when it no longer exists."""
        with self._lock:
            return self._by_id.get(item_id)

    def delete(self, item_id: str, mode: DeleteMode) -> bool:
        """Delete an item the way EWS DeleteItem does; False when it does not exist."""
        with self._lock:
            item = self._by_id.get(item_id)
            if item is None:
                return False
            if mode == "MoveToDeletedItems" and item.folder != "deleteditems":
                self.move(item_id, "deleteditems")
                return True
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
            item.item_id = _new_id(next(self._seq).to_bytes(8, "big"))
            item.change_key = _new_id(b"ck")
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
