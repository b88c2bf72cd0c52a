"""The properties of a message as Exchange 2013-2019 write them, in schema order, and the response shapes.

AllProperties is the first-class set of Microsoft's "Email properties and elements in EWS in Exchange"
(table 1); FindItem returns the subset marked there as first-class for FindItem (no Body, Attachments,
Categories, InternetMessageHeaders, ResponseObjects, recipients lists or ReplyTo). Default is table 3 of
"Property sets and response shapes in EWS" with what Microsoft's GetItem (email message) example
returns. A property the message has no value for (CcRecipients of a message without Cc, InReplyTo of a
first message) is left out, as Exchange does. Properties of other item types (calendar:, contacts:, ...)
asked for on a message are left out too: Exchange 2013-2019 ignore them (Exchange 2007 answered
ErrorInvalidPropertyRequest).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import html
import re
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lxml import etree

from probe.lab import ids
from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.folders import FOLDER_CHANGE_KEY, FolderRef, folder_id
from probe.lab.ews.restrictions import header_value
from probe.lab.ews.soap import sub, t
from probe.lab.store import StoredItem

_FOLD: Final = re.compile(r"\r?\n[ \t]+")
_TAG: Final = re.compile(r"<[^>]*>")
_REPLY_PREFIX: Final = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs)\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class View:
    """What rendering an item needs besides the item: the request and the body type asked for."""

    request: EwsRequest
    body_type: str = "Best"


Render = Callable[[etree._Element, StoredItem, View], None]


def unfold(value: str) -> str:
    """Join a folded header value onto one line."""
    return _FOLD.sub(" ", value).strip()


def _header(item: StoredItem, name: str) -> str:
    return unfold(header_value(item, name) or "")


def _stamp(value: datetime, view: View) -> str:
    return soap.format_datetime(value, milliseconds=view.request.milliseconds)


def _sent(item: StoredItem) -> datetime | None:
    try:
        sent = email.utils.parsedate_to_datetime(_header(item, "Date"))
    except (TypeError, ValueError):
        return None
    return sent.astimezone(UTC) if sent.tzinfo else None


def _addresses(item: StoredItem, *names: str) -> list[tuple[str, str]]:
    values = [unfold(v) for k, v in item.headers if k.lower() in names]
    return [(n, a) for n, a in email.utils.getaddresses(values) if "@" in a]


def _mailbox(parent: etree._Element, name: str, address: str, view: View) -> None:
    box = sub(parent, t("Mailbox"))
    sub(box, t("Name"), name or address)
    sub(box, t("EmailAddress"), address)
    sub(box, t("RoutingType"), "SMTP")
    sub(box, t("MailboxType"), "Mailbox" if view.request.serves(address) else "OneOff")


def _recipients(tag: str, *headers: str) -> Render:
    def render(msg: etree._Element, item: StoredItem, view: View) -> None:
        found = _addresses(item, *headers)
        if found:
            container = sub(msg, t(tag))
            for name, address in found:
                _mailbox(container, name, address, view)
    return render


def _single(tag: str, *headers: str) -> Render:
    def render(msg: etree._Element, item: StoredItem, view: View) -> None:
        found = next((a for h in headers for a in _addresses(item, h)), None)
        if found is not None:
            _mailbox(sub(msg, t(tag)), found[0], found[1], view)
    return render


def _receiver(tag: str) -> Render:
    def render(msg: etree._Element, item: StoredItem, view: View) -> None:
        _mailbox(sub(msg, t(tag)), item.mailbox.partition("@")[0], item.mailbox, view)
    return render


def _text(tag: str, value: Callable[[StoredItem], str | None]) -> Render:
    def render(msg: etree._Element, item: StoredItem, _view: View) -> None:
        text = value(item)
        if text:
            sub(msg, t(tag), text)
    return render


def _const(tag: str, value: str) -> Render:
    def render(msg: etree._Element, _item: StoredItem, _view: View) -> None:
        sub(msg, t(tag), value)
    return render


def _flag(tag: str, value: Callable[[StoredItem], bool]) -> Render:
    def render(msg: etree._Element, item: StoredItem, _view: View) -> None:
        sub(msg, t(tag), "true" if value(item) else "false")
    return render


def _html_of(text: str) -> str:
    lines = "".join(f"<div>{html.escape(line) or '&nbsp;'}</div>\r\n" for line in text.splitlines())
    return ("<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n"
            f"</head>\r\n<body>\r\n{lines}</body>\r\n</html>\r\n")


def body_text(item: StoredItem, body_type: str) -> tuple[str, str]:
    """Return the body as asked (Best: as sent; HTML or Text: converted) and its BodyType."""
    if body_type == "Text" or (body_type == "Best" and item.html_body is None):
        text = item.body if item.html_body is None or item.body else html.unescape(_TAG.sub("", item.html_body))
        return text, "Text"
    return (item.html_body if item.html_body is not None else _html_of(item.body)), "HTML"


def _body(tag: str, forced: str | None = None) -> Render:
    def render(msg: etree._Element, item: StoredItem, view: View) -> None:
        text, kind = body_text(item, forced or view.body_type)
        sub(msg, t(tag), text, BodyType=kind)
    return render


def _mime(msg: etree._Element, item: StoredItem, _view: View) -> None:
    sub(msg, t("MimeContent"), base64.b64encode(item.raw).decode(), CharacterSet="UTF-8")


def _item_id(msg: etree._Element, item: StoredItem, _view: View) -> None:
    sub(msg, t("ItemId"), Id=item.item_id, ChangeKey=item.change_key)


def _parent(msg: etree._Element, item: StoredItem, _view: View) -> None:
    sub(msg, t("ParentFolderId"), Id=folder_id(FolderRef(item.mailbox, item.folder)), ChangeKey=FOLDER_CHANGE_KEY)


def _received(msg: etree._Element, item: StoredItem, view: View) -> None:
    sub(msg, t("DateTimeReceived"), _stamp(item.received, view))


def _date_sent(msg: etree._Element, item: StoredItem, _view: View) -> None:
    sent = _sent(item)
    if sent is not None:
        sub(msg, t("DateTimeSent"), soap.format_datetime(sent, milliseconds=False))


def _created(tag: str) -> Render:
    def render(msg: etree._Element, item: StoredItem, view: View) -> None:
        sub(msg, t(tag), _stamp(item.received, view))
    return render


def _headers(msg: etree._Element, item: StoredItem, _view: View) -> None:
    container = sub(msg, t("InternetMessageHeaders"))
    for name, value in item.headers:
        sub(container, t("InternetMessageHeader"), unfold(value), HeaderName=name)


def _response_objects(msg: etree._Element, _item: StoredItem, _view: View) -> None:
    container = sub(msg, t("ResponseObjects"))
    for name in ("ReplyToItem", "ReplyAllToItem", "ForwardItem"):
        sub(container, t(name))


def _rights(msg: etree._Element, _item: StoredItem, _view: View) -> None:
    rights = sub(msg, t("EffectiveRights"))
    for right, value in (("CreateAssociated", "false"), ("CreateContents", "false"),
                         ("CreateHierarchy", "false"), ("Delete", "true"), ("Modify", "true"),
                         ("Read", "true"), ("ViewPrivateItems", "true")):
        sub(rights, t(right), value)


def _read_form(msg: etree._Element, item: StoredItem, view: View) -> None:
    query = urllib.parse.urlencode({"ItemID": item.item_id, "exvsurl": "1", "viewmodel": "ReadMessageItem"})
    sub(msg, t("WebClientReadFormQueryString"), f"{view.request.owa_url}?{query}")


def conversation_guid(item: StoredItem) -> bytes:
    """Return the 16-byte conversation GUID: from Thread-Index when the sender set one, else from the topic."""
    try:
        index = base64.b64decode(_header(item, "Thread-Index"), validate=True)
    except ValueError:
        index = b""
    if len(index) >= 22:
        return index[6:22]
    return hashlib.md5(topic(item).casefold().encode(), usedforsecurity=False).digest()


def topic(item: StoredItem) -> str:
    """Return the conversation topic: Thread-Topic, else the subject without reply and forward prefixes."""
    return _header(item, "Thread-Topic") or _REPLY_PREFIX.sub("", item.subject).strip()


def _conversation_id(msg: etree._Element, item: StoredItem, _view: View) -> None:
    moniker = str(ids.mailbox_guid(item.mailbox)).encode()
    raw = b"\x00\x04" + struct.pack("<H", len(moniker)) + moniker + b"\x10" + conversation_guid(item)
    sub(msg, t("ConversationId"), Id=base64.b64encode(raw).decode())


def _conversation_index(msg: etree._Element, item: StoredItem, _view: View) -> None:
    filetime = int((item.received.timestamp() + 11644473600) * 10_000_000)
    raw = b"\x01" + filetime.to_bytes(8, "big")[:5] + conversation_guid(item)
    sub(msg, t("ConversationIndex"), base64.b64encode(raw).decode())


def _flag_status(msg: etree._Element, _item: StoredItem, _view: View) -> None:
    sub(sub(msg, t("Flag")), t("FlagStatus"), "NotFlagged")


def _instance_key(msg: etree._Element, item: StoredItem, _view: View) -> None:
    sub(msg, t("InstanceKey"), base64.b64encode(b"\x01\x00\x00\x00" + item.counter.to_bytes(12, "big")).decode())


def _importance(item: StoredItem) -> str:
    value = (_header(item, "Importance") or _header(item, "X-Priority")).lower()
    if value.startswith(("high", "1", "2")):
        return "High"
    return "Low" if value.startswith(("low", "4", "5")) else "Normal"


def _sensitivity(item: StoredItem) -> str:
    value = _header(item, "Sensitivity").lower()
    return {"personal": "Personal", "private": "Private", "company-confidential": "Confidential"}.get(value, "Normal")


def _display(item: StoredItem, header: str) -> str:
    return "; ".join(name or address for name, address in _addresses(item, header))


def _preview(item: StoredItem) -> str:
    return " ".join(body_text(item, "Text")[0].split())[:255]


def _is_from_me(item: StoredItem) -> bool:
    return any(a.lower() == item.mailbox for _, a in _addresses(item, "from"))


# Every message property the lab writes, in the order of ItemType then MessageType in types.xsd.
# "extended" marks where ExtendedProperty elements go.
FIELDS: Final[tuple[tuple[str, Render], ...]] = (
    ("item:MimeContent", _mime),
    ("item:ItemId", _item_id),
    ("item:ParentFolderId", _parent),
    ("item:ItemClass", _text("ItemClass", lambda i: i.item_class)),
    ("item:Subject", lambda msg, item, _view: sub(msg, t("Subject"), item.subject)),
    ("item:Sensitivity", _text("Sensitivity", _sensitivity)),
    ("item:Body", _body("Body")),
    ("item:DateTimeReceived", _received),
    ("item:Size", _text("Size", lambda i: str(len(i.raw)))),
    ("item:Importance", _text("Importance", _importance)),
    ("item:InReplyTo", _text("InReplyTo", lambda i: _header(i, "In-Reply-To"))),
    ("item:IsSubmitted", _const("IsSubmitted", "false")),
    ("item:IsDraft", _const("IsDraft", "false")),
    ("item:IsFromMe", _flag("IsFromMe", _is_from_me)),
    ("item:IsResend", _const("IsResend", "false")),
    ("item:IsUnmodified", _const("IsUnmodified", "false")),
    ("item:InternetMessageHeaders", _headers),
    ("item:DateTimeSent", _date_sent),
    ("item:DateTimeCreated", _created("DateTimeCreated")),
    ("item:ResponseObjects", _response_objects),
    ("item:ReminderIsSet", _const("ReminderIsSet", "false")),
    ("item:ReminderMinutesBeforeStart", _const("ReminderMinutesBeforeStart", "0")),
    ("item:DisplayCc", _text("DisplayCc", lambda i: _display(i, "cc"))),
    ("item:DisplayTo", _text("DisplayTo", lambda i: _display(i, "to"))),
    ("item:HasAttachments", _const("HasAttachments", "false")),
    ("extended", lambda _msg, _item, _view: None),
    ("item:Culture", _const("Culture", "en-US")),
    ("item:EffectiveRights", _rights),
    ("item:LastModifiedName", _text("LastModifiedName", lambda i: i.mailbox.partition("@")[0])),
    ("item:LastModifiedTime", _created("LastModifiedTime")),
    ("item:IsAssociated", _const("IsAssociated", "false")),
    ("item:WebClientReadFormQueryString", _read_form),
    ("item:ConversationId", _conversation_id),
    ("item:UniqueBody", _body("UniqueBody", "HTML")),
    ("item:Flag", _flag_status),
    ("item:InstanceKey", _instance_key),
    ("item:NormalizedBody", _body("NormalizedBody", "HTML")),
    ("item:Preview", _text("Preview", _preview)),
    ("item:TextBody", _body("TextBody", "Text")),
    ("item:IconIndex", _text("IconIndex", lambda i: "MailRead" if i.is_read else "MailUnread")),
    ("message:Sender", _single("Sender", "sender", "from")),
    ("message:ToRecipients", _recipients("ToRecipients", "to")),
    ("message:CcRecipients", _recipients("CcRecipients", "cc")),
    ("message:IsReadReceiptRequested", _flag(
        "IsReadReceiptRequested", lambda i: bool(_header(i, "Disposition-Notification-To")))),
    ("message:IsDeliveryReceiptRequested", _flag(
        "IsDeliveryReceiptRequested", lambda i: bool(_header(i, "Return-Receipt-To")))),
    ("message:ConversationIndex", _conversation_index),
    ("message:ConversationTopic", _text("ConversationTopic", topic)),
    ("message:From", _single("From", "from")),
    ("message:InternetMessageId", _text("InternetMessageId", lambda i: i.message_id)),
    ("message:IsRead", _flag("IsRead", lambda i: i.is_read)),
    ("message:IsResponseRequested", _const("IsResponseRequested", "false")),
    ("message:References", _text("References", lambda i: _header(i, "References"))),
    ("message:ReplyTo", _recipients("ReplyTo", "reply-to")),
    ("message:ReceivedBy", _receiver("ReceivedBy")),
    ("message:ReceivedRepresenting", _receiver("ReceivedRepresenting")),
)
KNOWN: Final = frozenset(uri for uri, _ in FIELDS if uri != "extended")
_NOT_IN_FIND: Final = frozenset({
    "item:Body", "item:Attachments", "item:Categories", "item:InternetMessageHeaders", "item:ResponseObjects",
    "item:EntityExtractionResult", "message:ToRecipients", "message:CcRecipients", "message:BccRecipients",
    "message:ReplyTo", "item:MimeContent",
})
_FIRST_CLASS_ONLY_ON_REQUEST: Final = frozenset({
    "item:MimeContent", "item:UniqueBody", "item:NormalizedBody", "item:Preview", "item:TextBody",
    "item:IconIndex",
})
ALL_PROPERTIES: Final = KNOWN - _FIRST_CLASS_ONLY_ON_REQUEST
FIND_ALL_PROPERTIES: Final = ALL_PROPERTIES - _NOT_IN_FIND
DEFAULT: Final = frozenset({
    "item:ItemId", "item:Subject", "item:Sensitivity", "item:Body", "item:Size", "item:DateTimeSent",
    "item:DateTimeCreated", "item:ResponseObjects", "item:HasAttachments", "item:IsAssociated",
    "message:ToRecipients", "message:IsReadReceiptRequested", "message:IsDeliveryReceiptRequested",
    "message:From", "message:IsRead",
})
FIND_DEFAULT: Final = DEFAULT - _NOT_IN_FIND - {"message:ToRecipients"}
