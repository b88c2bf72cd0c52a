"""Item operations: FindItem (paged, sorted, restricted), GetItem, DeleteItem and MoveItem."""

from __future__ import annotations

import base64
import email.utils
import re
from dataclasses import dataclass, field
from typing import Final

from lxml import etree

from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.folders import ITEM_FOLDERS, FolderError, FolderRef, folder_id, resolve, resolve_all
from probe.lab.ews.restrictions import (
    RestrictionError,
    compile_query_string,
    compile_restriction,
    header_value,
    sort_items,
)
from probe.lab.ews.soap import m, sub, t
from probe.lab.store import DeleteMode, StoredItem

MAX_PAGE: Final = 1000
DEFAULT_FIELDS: Final = frozenset({
    "item:ItemClass", "item:Subject", "item:DateTimeReceived", "item:Size", "item:ParentFolderId",
    "item:HasAttachments", "message:InternetMessageId", "message:From", "message:IsRead",
})
ALL_FIELDS: Final = DEFAULT_FIELDS | {"item:Body", "item:InternetMessageHeaders", "item:DateTimeSent",
                                      "item:DateTimeCreated"}
DELETE_TYPES: Final[dict[str, DeleteMode]] = {
    "HardDelete": "HardDelete", "SoftDelete": "SoftDelete", "MoveToDeletedItems": "MoveToDeletedItems",
}
_FOLD = re.compile(r"\r?\n[ \t]+")


@dataclass
class Shape:
    """The fields an ItemShape asks for."""

    fields: set[str] = field(default_factory=set)
    extended: list[etree._Element] = field(default_factory=list)


def parse_shape(elem: etree._Element | None) -> Shape:
    """Read BaseShape and AdditionalProperties of an ItemShape."""
    shape = Shape()
    if elem is None:
        return shape
    base = (elem.findtext(t("BaseShape")) or "IdOnly").strip()
    shape.fields |= {"IdOnly": set(), "Default": set(DEFAULT_FIELDS)}.get(base, set(ALL_FIELDS))
    for path in elem.iterfind(f"{t('AdditionalProperties')}/*"):
        if path.tag == t("FieldURI"):
            shape.fields.add(path.get("FieldURI", ""))
        elif path.tag == t("ExtendedFieldURI"):
            shape.extended.append(path)
    return shape


def _unfold(value: str) -> str:
    return _FOLD.sub(" ", value).strip()


def _add_head(msg: etree._Element, item: StoredItem, shape: Shape, request: EwsRequest) -> None:
    fields = shape.fields
    if "item:MimeContent" in fields:
        sub(msg, t("MimeContent"), base64.b64encode(item.raw).decode(), CharacterSet="UTF-8")
    sub(msg, t("ItemId"), Id=item.item_id, ChangeKey=item.change_key)
    if "item:ParentFolderId" in fields:
        sub(msg, t("ParentFolderId"), Id=folder_id(FolderRef(item.mailbox, item.folder)),
            ChangeKey="AQAAABYAAAA=")
    if "item:ItemClass" in fields:
        sub(msg, t("ItemClass"), "IPM.Note")
    if "item:Subject" in fields:
        sub(msg, t("Subject"), item.subject)
    if "item:Body" in fields:
        sub(msg, t("Body"), item.body, BodyType="Text")
    if "item:DateTimeReceived" in fields:
        sub(msg, t("DateTimeReceived"), soap.format_datetime(item.received, milliseconds=request.milliseconds))
    if "item:Size" in fields:
        sub(msg, t("Size"), str(len(item.raw)))


def _add_middle(msg: etree._Element, item: StoredItem, shape: Shape, request: EwsRequest) -> None:
    fields = shape.fields
    if "item:InternetMessageHeaders" in fields:
        headers = sub(msg, t("InternetMessageHeaders"))
        for name, value in item.headers:
            sub(headers, t("InternetMessageHeader"), _unfold(value), HeaderName=name)
    if "item:DateTimeSent" in fields:
        sent = _sent(item)
        if sent is not None:
            sub(msg, t("DateTimeSent"), sent)
    if "item:DateTimeCreated" in fields:
        sub(msg, t("DateTimeCreated"), soap.format_datetime(item.received, milliseconds=request.milliseconds))
    if "item:HasAttachments" in fields:
        sub(msg, t("HasAttachments"), "false")
    for path in shape.extended:
        _add_extended(msg, item, path)


def _add_tail(msg: etree._Element, item: StoredItem, shape: Shape) -> None:
    fields = shape.fields
    if "message:From" in fields:
        name, address = email.utils.parseaddr(_unfold(header_value(item, "From") or ""))
        if address:
            mailbox = sub(sub(msg, t("From")), t("Mailbox"))
            if name:
                sub(mailbox, t("Name"), name)
            sub(mailbox, t("EmailAddress"), address)
            sub(mailbox, t("RoutingType"), "SMTP")
    if "message:InternetMessageId" in fields and item.message_id:
        sub(msg, t("InternetMessageId"), item.message_id)
    if "message:IsRead" in fields:
        sub(msg, t("IsRead"), "false")


def _sent(item: StoredItem) -> str | None:
    try:
        sent = email.utils.parsedate_to_datetime(header_value(item, "Date") or "")
    except (TypeError, ValueError):
        return None
    return soap.format_datetime(sent, milliseconds=False) if sent.tzinfo else None


def _add_extended(msg: etree._Element, item: StoredItem, path: etree._Element) -> None:
    if path.get("DistinguishedPropertySetId") != "InternetHeaders":
        return
    value = header_value(item, path.get("PropertyName", ""))
    if value is None:
        return
    prop = sub(msg, t("ExtendedProperty"))
    sub(prop, t("ExtendedFieldURI"), **{k: v for k, v in path.attrib.items() if isinstance(k, str)})
    sub(prop, t("Value"), _unfold(value))


def item_element(parent: etree._Element, item: StoredItem, shape: Shape, request: EwsRequest) -> None:
    """Append a t:Message with the fields the shape asks for, in schema order."""
    msg = sub(parent, t("Message"))
    _add_head(msg, item, shape, request)
    _add_middle(msg, item, shape, request)
    _add_tail(msg, item, shape)


def _filtered(request: EwsRequest, ref: FolderRef) -> list[StoredItem]:
    op = request.operation
    items = request.store.items(ref.address, [ref.name]) if ref.name in ITEM_FOLDERS else []
    restriction = op.find(m("Restriction"))
    if restriction is not None and len(restriction):
        predicate = compile_restriction(restriction[0])
        items = [i for i in items if predicate(i)]
    query = op.find(m("QueryString"))
    if query is not None and (query.text or "").strip():
        predicate = compile_query_string(query.text or "")
        items = [i for i in items if predicate(i)]
    return sort_items(items, op.find(m("SortOrder")))


def _page_bounds(view: etree._Element | None, total: int) -> tuple[int, int]:
    if view is None:
        return 0, min(total, MAX_PAGE)
    try:
        offset = max(0, int(view.get("Offset", "0")))
        size = max(0, min(int(view.get("MaxEntriesReturned", str(MAX_PAGE))), MAX_PAGE))
    except ValueError:
        raise RestrictionError("ErrorInvalidPagingMaxRows", "Offset and MaxEntriesReturned are integers.") from None
    if view.get("BasePoint") == "End":
        offset = max(0, total - offset - size)
    return offset, size


def _find_in_folder(messages: etree._Element, ref: FolderRef, request: EwsRequest, shape: Shape) -> None:
    items = _filtered(request, ref)
    view = request.operation.find(m("IndexedPageItemView"))
    offset, size = _page_bounds(view, len(items))
    page = items[offset:offset + size]
    msg = soap.success(messages, "FindItem")
    end = offset + len(page)
    root = sub(msg, m("RootFolder"), IndexedPagingOffset=str(end), TotalItemsInView=str(len(items)),
               IncludesLastItemInRange="true" if end >= len(items) else "false")
    container = sub(root, t("Items"))
    for item in page:
        item_element(container, item, shape, request)


def find_item(request: EwsRequest) -> etree._Element:
    """Answer FindItem: one response message per parent folder, each paged on its own."""
    root, messages = soap.response("FindItem")
    shape = parse_shape(request.operation.find(m("ItemShape")))
    for ref in resolve_all(request.operation.find(m("ParentFolderIds")), request):
        if isinstance(ref, FolderError):
            soap.error(messages, "FindItem", ref.code, ref.text)
            continue
        try:
            _find_in_folder(messages, ref, request, shape)
        except RestrictionError as exc:
            soap.error(messages, "FindItem", exc.code, exc.text)
    return root


def _requested_items(request: EwsRequest) -> list[StoredItem | None]:
    results: list[StoredItem | None] = []
    for elem in request.operation.iterfind(f"{m('ItemIds')}/{t('ItemId')}"):
        item = request.store.get(elem.get("Id", ""))
        results.append(item if item is not None and request.serves(item.mailbox) else None)
    return results


def _not_found(messages: etree._Element, operation: str) -> None:
    msg = soap.error(messages, operation, "ErrorItemNotFound",
                     "The specified object was not found in the store., The process failed to get the correct "
                     "properties.")
    if operation in ("GetItem", "MoveItem"):
        sub(msg, m("Items"))


def get_item(request: EwsRequest) -> etree._Element:
    """Answer GetItem: one response message per item id, ErrorItemNotFound for the missing ones."""
    root, messages = soap.response("GetItem")
    shape = parse_shape(request.operation.find(m("ItemShape")))
    for item in _requested_items(request):
        if item is None:
            _not_found(messages, "GetItem")
            continue
        msg = soap.success(messages, "GetItem")
        item_element(sub(msg, m("Items")), item, shape, request)
    return root


def delete_item(request: EwsRequest) -> etree._Element:
    """Answer DeleteItem with HardDelete, SoftDelete or MoveToDeletedItems."""
    mode = DELETE_TYPES.get(request.operation.get("DeleteType", ""))
    if mode is None:
        raise soap.SoapFault("ErrorSchemaValidation", "DeleteType must be HardDelete, SoftDelete or "
                             "MoveToDeletedItems.")
    root, messages = soap.response("DeleteItem")
    for item in _requested_items(request):
        if item is None or not request.store.delete(item.item_id, mode):
            _not_found(messages, "DeleteItem")
            continue
        soap.success(messages, "DeleteItem")
    return root


def _move_target(request: EwsRequest) -> FolderRef | FolderError:
    target = request.operation.find(m("ToFolderId"))
    if target is None or not len(target):
        return FolderError("ErrorInvalidRequest", "MoveItem needs ToFolderId.")
    try:
        ref = resolve(target[0], request)
    except FolderError as exc:
        return exc
    if ref.name not in ("inbox", "junkemail", "deleteditems"):
        return FolderError("ErrorMoveCopyFailed", f"Items cannot be moved to {ref.name}.")
    return ref


def move_item(request: EwsRequest) -> etree._Element:
    """Answer MoveItem; each moved item gets a new id, as in Exchange."""
    ref = _move_target(request)
    root, messages = soap.response("MoveItem")
    for item in _requested_items(request):
        if isinstance(ref, FolderError):
            sub(soap.error(messages, "MoveItem", ref.code, ref.text), m("Items"))
            continue
        moved = None if item is None or item.mailbox != ref.address else request.store.move(item.item_id, ref.name)
        if moved is None:
            _not_found(messages, "MoveItem")
            continue
        msg = soap.success(messages, "MoveItem")
        sub(sub(sub(msg, m("Items")), t("Message")), t("ItemId"), Id=moved.item_id, ChangeKey=moved.change_key)
    return root
