"""Notifications: pull and streaming subscriptions fed by the store, GetEvents, GetStreamingEvents, Unsubscribe."""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from lxml import etree

from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.folders import FOLDER_CHANGE_KEY, FolderError, FolderRef, folder_id, resolve_all
from probe.lab.ews.soap import m, sub, t
from probe.lab.store import FOLDERS, StoredItem

ITEM_EVENTS: Final = ("CreatedEvent", "NewMailEvent")  # in Exchange's order; then the folder's ModifiedEvent
STREAMING_IDLE_EXPIRY: Final = 30 * 60.0


@dataclass(frozen=True, kw_only=True)
class Event:
    """One notification event waiting for its subscriber: about an item, or (ModifiedEvent) its folder."""

    kind: str
    watermark: str
    timestamp: datetime
    item_id: str
    change_key: str
    parent: FolderRef
    unread: int | None = None  # set for a folder's ModifiedEvent: the folder's new UnreadCount


@dataclass(kw_only=True)
class Subscription:
    """A pull or streaming subscription on some folders of one mailbox."""

    sub_id: str
    kind: Literal["pull", "streaming"]
    mailbox: str
    folders: frozenset[str]
    event_types: frozenset[str]
    expiry_seconds: float
    last_used: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    connections: int = 0

    def expired(self, now: float) -> bool:
        """Say whether the subscription lapsed for want of use."""
        return self.connections == 0 and now - self.last_used > self.expiry_seconds


class SubscriptionError(Exception):
    """A subscription id that is malformed, unknown or expired; ``code`` is the EWS response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class SubscriptionRegistry:
    """The subscriptions of one EWS endpoint; the store wakes them on every new item."""

    def __init__(self, forest: str) -> None:
        self.forest = forest
        self.keepalive_seconds = 15.0
        self.minute_seconds = 60.0  # how long one ConnectionTimeout minute lasts (tests shorten it)
        self._cond = threading.Condition()
        self._subs: dict[str, Subscription] = {}
        self._seq = itertools.count(1)
        self._stopping = False

    def watermark(self) -> str:
        """Return a fresh watermark."""
        return base64.b64encode(f"W\x00{next(self._seq)}".encode()).decode()

    def on_new_item(self, item: StoredItem, *, unread: int) -> None:
        """Queue Created, NewMail and the folder's Modified events for every subscription watching the folder."""
        parent = FolderRef(item.mailbox, item.folder)
        with self._cond:
            for subscription in self._subs.values():
                if subscription.mailbox != item.mailbox or item.folder not in subscription.folders:
                    continue
                for kind in ITEM_EVENTS:
                    if kind in subscription.event_types:
                        subscription.events.append(Event(
                            kind=kind, watermark=self.watermark(), timestamp=item.received,
                            item_id=item.item_id, change_key=item.change_key, parent=parent))
                if "ModifiedEvent" in subscription.event_types:
                    subscription.events.append(Event(
                        kind="ModifiedEvent", watermark=self.watermark(), timestamp=item.received,
                        item_id="", change_key="", parent=parent, unread=unread))
            self._cond.notify_all()

    def add(self, subscription: Subscription) -> None:
        """Register a new subscription."""
        with self._cond:
            self._subs[subscription.sub_id] = subscription

    def new_id(self) -> str:
        """Return an opaque subscription id."""
        return base64.b64encode(b"S\x00" + self.forest.encode() + b"\x00" + secrets.token_bytes(18)).decode()

    def lookup(self, sub_id: str) -> Subscription:
        """Return a live subscription (the lock must be held), or raise SubscriptionError."""
        try:
            raw = base64.b64decode(sub_id, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw.startswith(b"S\x00"):
            raise SubscriptionError("ErrorInvalidSubscription", "The subscription id is invalid.")
        subscription = self._subs.get(sub_id)
        if subscription is None or subscription.expired(time.monotonic()):
            self._subs.pop(sub_id, None)
            raise SubscriptionError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
        return subscription

    def remove(self, sub_id: str) -> None:
        """Unsubscribe, or raise SubscriptionError."""
        with self._cond:
            self.lookup(sub_id)
            del self._subs[sub_id]
            self._cond.notify_all()

    def drain(self, sub_id: str) -> list[Event]:
        """Take the queued events of a pull subscription."""
        with self._cond:
            subscription = self.lookup(sub_id)
            if subscription.kind != "pull":
                raise SubscriptionError("ErrorInvalidSubscription", "GetEvents needs a pull subscription.")
            subscription.last_used = time.monotonic()
            events, subscription.events = subscription.events, []
            return events

    def stop(self) -> None:
        """End every open stream."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def attach(self, sub_ids: list[str]) -> list[Subscription]:
        """Open a streaming connection on subscriptions, or raise SubscriptionError."""
        with self._cond:
            subs = [self.lookup(s) for s in sub_ids]
            for subscription in subs:
                if subscription.kind != "streaming":
                    raise SubscriptionError("ErrorInvalidSubscription", "Not a streaming subscription.")
            for subscription in subs:
                subscription.connections += 1
            return subs

    def open_streams(self) -> int:
        """Return how many streaming connections are open on this endpoint's subscriptions now."""
        with self._cond:
            return sum(s.connections for s in self._subs.values())

    def detach(self, subs: list[Subscription]) -> None:
        """Close a streaming connection."""
        with self._cond:
            for subscription in subs:
                subscription.connections -= 1
                subscription.last_used = time.monotonic()

    def wait_events(self, subs: list[Subscription], deadline: float) -> dict[str, list[Event]] | None:
        """Wait until events arrive or the deadline passes; None once the server stops or all unsubscribed."""
        with self._cond:
            while True:
                if self._stopping or not any(s.sub_id in self._subs for s in subs):
                    return None
                ready = {s.sub_id: s.events for s in subs if s.events}
                if ready:
                    for subscription in subs:
                        subscription.events = []
                    return ready
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {}
                self._cond.wait(remaining)


def _event_element(parent: etree._Element, event: Event, request: EwsRequest, *, watermark: bool) -> None:
    """Append one event; streaming notifications carry no watermarks (Exchange 2013-2019 send none)."""
    node = sub(parent, t(event.kind))
    if watermark:
        sub(node, t("Watermark"), event.watermark)
    sub(node, t("TimeStamp"), soap.format_datetime(event.timestamp, milliseconds=request.milliseconds))
    if event.unread is None:
        sub(node, t("ItemId"), Id=event.item_id, ChangeKey=event.change_key)
        sub(node, t("ParentFolderId"), Id=folder_id(event.parent), ChangeKey=FOLDER_CHANGE_KEY)
        return
    grandparent = event.parent.spec.parent or event.parent.name
    sub(node, t("FolderId"), Id=folder_id(event.parent), ChangeKey=FOLDER_CHANGE_KEY)
    sub(node, t("ParentFolderId"), Id=folder_id(FolderRef(event.parent.address, grandparent)),
        ChangeKey=FOLDER_CHANGE_KEY)
    sub(node, t("UnreadCount"), str(event.unread))


def _parse_subscribe(request: EwsRequest, registry: SubscriptionRegistry) -> Subscription:
    pull = request.operation.find(m("PullSubscriptionRequest"))
    streaming = request.operation.find(m("StreamingSubscriptionRequest"))
    spec = pull if pull is not None else streaming
    if spec is None:
        raise SubscriptionError("ErrorInvalidSubscriptionRequest", "The lab offers pull and streaming only.")
    refs = resolve_all(spec.find(t("FolderIds")), request)
    errors = [r for r in refs if isinstance(r, FolderError)]
    if errors:
        raise SubscriptionError(errors[0].code, errors[0].text)
    folders = [r for r in refs if isinstance(r, FolderRef)]
    if spec.get("SubscribeToAllFolders") == "true" or not folders:
        folders = [FolderRef(request.default_mailbox, name) for name in FOLDERS]
    event_types = frozenset((e.text or "").strip() for e in spec.iterfind(f"{t('EventTypes')}/{t('EventType')}"))
    try:
        minutes = float(spec.findtext(t("Timeout")) or "30") if pull is not None else STREAMING_IDLE_EXPIRY / 60
    except ValueError:
        raise SubscriptionError("ErrorInvalidSubscriptionRequest", "Timeout is a number of minutes.") from None
    return Subscription(
        sub_id=registry.new_id(), kind="pull" if pull is not None else "streaming",
        mailbox=folders[0].address, folders=frozenset(f.name for f in folders),
        event_types=event_types, expiry_seconds=minutes * registry.minute_seconds)


def subscribe(request: EwsRequest) -> etree._Element:
    """Answer Subscribe with a new pull or streaming subscription."""
    root, messages = soap.response("Subscribe")
    try:
        subscription = _parse_subscribe(request, request.subscriptions)
    except SubscriptionError as exc:
        soap.error(messages, "Subscribe", exc.code, exc.text)
        return root
    request.subscriptions.add(subscription)
    msg = soap.success(messages, "Subscribe")
    sub(msg, m("SubscriptionId"), subscription.sub_id)
    if subscription.kind == "pull":
        sub(msg, m("Watermark"), request.subscriptions.watermark())
    return root


def unsubscribe(request: EwsRequest) -> etree._Element:
    """Answer Unsubscribe."""
    root, messages = soap.response("Unsubscribe")
    try:
        request.subscriptions.remove((request.operation.findtext(m("SubscriptionId")) or "").strip())
    except SubscriptionError as exc:
        soap.error(messages, "Unsubscribe", exc.code, exc.text)
        return root
    soap.success(messages, "Unsubscribe")
    return root


def get_events(request: EwsRequest) -> etree._Element:
    """Answer GetEvents with every event queued since the last call, or a StatusEvent."""
    root, messages = soap.response("GetEvents")
    sub_id = (request.operation.findtext(m("SubscriptionId")) or "").strip()
    try:
        events = request.subscriptions.drain(sub_id)
    except SubscriptionError as exc:
        soap.error(messages, "GetEvents", exc.code, exc.text)
        return root
    notification = sub(soap.success(messages, "GetEvents"), m("Notification"))
    sub(notification, t("SubscriptionId"), sub_id)
    sub(notification, t("PreviousWatermark"), (request.operation.findtext(m("Watermark")) or "").strip())
    sub(notification, t("MoreEvents"), "false")
    for event in events:
        _event_element(notification, event, request, watermark=True)
    if not events:
        sub(sub(notification, t("StatusEvent")), t("Watermark"), request.subscriptions.watermark())
    return root


def _stream_message(status: str, batches: dict[str, list[Event]], request: EwsRequest) -> etree._Element:
    root, messages = soap.response("GetStreamingEvents")
    msg = soap.success(messages, "GetStreamingEvents")
    if batches:
        notifications = sub(msg, m("Notifications"))
        for sub_id, events in batches.items():
            notification = sub(notifications, m("Notification"))  # m:, as Exchange writes it (the schema says t:)
            sub(notification, t("SubscriptionId"), sub_id)
            for event in events:
                _event_element(notification, event, request, watermark=False)
    sub(msg, m("ConnectionStatus"), status)
    return root


def _connection_minutes(request: EwsRequest) -> float:
    try:
        minutes = int((request.operation.findtext(m("ConnectionTimeout")) or "").strip())
    except ValueError:
        raise soap.SoapFault("ErrorInvalidRequest", "ConnectionTimeout is a whole number of minutes.") from None
    if not 1 <= minutes <= 30:
        raise soap.SoapFault("ErrorInvalidRequest", "ConnectionTimeout must be between 1 and 30 minutes.")
    return minutes


def get_streaming_events(request: EwsRequest) -> Iterator[etree._Element]:
    """Answer GetStreamingEvents: envelopes of events and keep-alives, then Closed at the timeout.

    A request without a ``t:SubscriptionId`` or with a ConnectionTimeout out of 1-30 fails as a whole (a SOAP
    Fault, as Exchange's schema validation answers it) before the stream starts.
    """
    path = f"{m('SubscriptionIds')}/{t('SubscriptionId')}"
    sub_ids = [(e.text or "").strip() for e in request.operation.iterfind(path)]
    if not sub_ids:
        raise soap.SoapFault("ErrorSchemaValidation", "The request failed schema validation: SubscriptionIds "
                             "needs at least one t:SubscriptionId.")
    end = time.monotonic() + _connection_minutes(request) * request.subscriptions.minute_seconds
    return _attached_stream(request, sub_ids, end)


def _attached_stream(request: EwsRequest, sub_ids: list[str], end: float) -> Iterator[etree._Element]:
    registry = request.subscriptions
    try:
        subs = registry.attach(sub_ids)
    except SubscriptionError as exc:
        root, messages = soap.response("GetStreamingEvents")
        msg = soap.error(messages, "GetStreamingEvents", exc.code, exc.text)
        ids = sub(msg, m("ErrorSubscriptionIds"))
        for sub_id in sub_ids:
            sub(ids, t("SubscriptionId"), sub_id)
        sub(msg, m("ConnectionStatus"), "Closed")
        yield root
        return
    try:
        yield from _stream(request, subs, end)
    finally:
        registry.detach(subs)


def _stream(request: EwsRequest, subs: list[Subscription], end: float) -> Iterator[etree._Element]:
    registry = request.subscriptions
    while True:
        now = time.monotonic()
        if now >= end:
            break
        batches = registry.wait_events(subs, min(end, now + registry.keepalive_seconds))
        if batches is None:
            break
        yield _stream_message("OK", batches, request)
    yield _stream_message("Closed", {}, request)
