"""Item operations: FindItem (paged, sorted, restricted), GetItem, DeleteItem and MoveItem.

Errors keep the empty containers of Microsoft's examples (``m:Items`` in GetItem and MoveItem error
messages). An item id that is not an id Exchange could have issued is ErrorInvalidIdMalformed; a
well-formed id of an item that is not (or no longer) there is ErrorItemNotFound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from lxml import etree

from probe.lab import ids
from probe.lab.ews import message_fields, soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.folders import FolderError, FolderRef, page_bounds, resolve, resolve_all
from probe.lab.ews.message_fields import FIELDS, View
from probe.lab.ews.restrictions import (
    RestrictionError,
    compile_query_string,
    compile_restriction,
    header_value,
    sort_items,
)
from probe.lab.ews.soap import m, sub, t
from probe.lab.store import DeleteMode, StoredItem

DELETE_TYPES: Final[dict[str, DeleteMode]] = {
    "HardDelete": "HardDelete", "SoftDelete": "SoftDelete", "MoveToDeletedItems": "MoveToDeletedItems",
}
NO_MOVE_TARGETS: Final = frozenset({"root", "searchfolders"})
NOT_FOR_FIND: Final = frozenset({  # the properties FindItem refuses (the EWS Managed API's schema lacks CanFind)
    "item:Attachments", "item:Body", "item:EntityExtractionResult", "item:InternetMessageHeaders",
    "item:MimeContent", "item:NormalizedBody", "item:ResponseObjects", "item:TextBody", "item:UniqueBody",
    "message:ApprovalRequestData", "message:BccRecipients", "message:CcRecipients", "message:ReplyTo",
    "message:ToRecipients", "message:VotingInformation",
})
_NOT_FOUND: Final = ("The specified object was not found in the store., The process failed to get the correct "
                     "properties.")


@dataclass
class Shape:
    """What an ItemShape asks for: properties, extended properties, single headers and the body type."""

    fields: set[str] = field(default_factory=set)
    extended: list[etree._Element] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    body_type: str = "Best"
    asked: list[str] = field(default_factory=list)  # the FieldURIs asked for by name, in order


def parse_shape(elem: etree._Element | None, *, find: bool = False) -> Shape:
    """Read an ItemShape; AllProperties and Default mean the FindItem sets when ``find``."""
    shape = Shape(fields={"item:ItemId"})
    if elem is None:
        return shape
    base = (elem.findtext(t("BaseShape")) or "IdOnly").strip()
    if base == "AllProperties":
        shape.fields |= message_fields.FIND_ALL_PROPERTIES if find else message_fields.ALL_PROPERTIES
    elif base == "Default":
        shape.fields |= message_fields.FIND_DEFAULT if find else message_fields.DEFAULT
    if (elem.findtext(t("IncludeMimeContent")) or "").strip() == "true":
        shape.fields.add("item:MimeContent")
        shape.asked.append("item:MimeContent")
    shape.body_type = (elem.findtext(t("BodyType")) or "Best").strip()
    for path in elem.iterfind(f"{t('AdditionalProperties')}/*"):
        if path.tag == t("FieldURI"):
            shape.fields.add(path.get("FieldURI", ""))
            shape.asked.append(path.get("FieldURI", ""))
        elif path.tag == t("ExtendedFieldURI"):
            shape.extended.append(path)
        elif path.tag == t("IndexedFieldURI") and path.get("FieldURI") == "item:InternetMessageHeader":
            shape.headers.append(path.get("FieldIndex", ""))
    return shape


def _add_extended(msg: etree._Element, item: StoredItem, path: etree._Element) -> None:
    if path.get("DistinguishedPropertySetId") != "InternetHeaders":
        return
    value = header_value(item, path.get("PropertyName", ""))
    if value is None:
        return
    prop = sub(msg, t("ExtendedProperty"))
    sub(prop, t("ExtendedFieldURI"), **{k: v for k, v in path.attrib.items() if isinstance(k, str)})
    sub(prop, t("Value"), message_fields.unfold(value))


def _add_single_headers(msg: etree._Element, item: StoredItem, names: list[str]) -> None:
    wanted = {n.lower() for n in names}
    found = [(k, v) for k, v in item.headers if k.lower() in wanted]
    if found:
        container = sub(msg, t("InternetMessageHeaders"))
        for name, value in found:
            sub(container, t("InternetMessageHeader"), message_fields.unfold(value), HeaderName=name)


def item_element(parent: etree._Element, item: StoredItem, shape: Shape, request: EwsRequest) -> None:
    """Append a t:Message with the properties the shape asks for, in schema order."""
    msg = sub(parent, t("Message"))
    view = View(request=request, body_type=shape.body_type)
    for uri, render in FIELDS:
        if uri == "extended":
            for path in shape.extended:
                _add_extended(msg, item, path)
        elif uri in shape.fields:
            render(msg, item, view)
        elif uri == "item:InternetMessageHeaders" and shape.headers:
            _add_single_headers(msg, item, shape.headers)


def _filtered(request: EwsRequest, ref: FolderRef) -> list[StoredItem]:
    op = request.operation
    items = request.store.items(ref.address, [ref.name])
    restriction = op.find(m("Restriction"))
    if restriction is not None and len(restriction):
        predicate = compile_restriction(restriction[0])
        items = [i for i in items if predicate(i)]
    query = op.find(m("QueryString"))
    if query is not None and (query.text or "").strip():
        predicate = compile_query_string(query.text or "")
        items = [i for i in items if predicate(i)]
    return sort_items(items, op.find(m("SortOrder")))


def _find_in_folder(messages: etree._Element, ref: FolderRef, request: EwsRequest, shape: Shape) -> None:
    items = _filtered(request, ref)
    view = request.operation.find(m("IndexedPageItemView"))
    offset, size = page_bounds(view, len(items))
    page = items[offset:offset + size]
    msg = soap.success(messages, "FindItem")
    end = offset + len(page)
    root = sub(msg, m("RootFolder"), IndexedPagingOffset=str(end), TotalItemsInView=str(len(items)),
               IncludesLastItemInRange="true" if end >= len(items) else "false")
    container = sub(root, t("Items"))
    for item in page:
        item_element(container, item, shape, request)


def _refused_for_find(messages: etree._Element, uri: str) -> None:
    msg = soap.error(messages, "FindItem", "ErrorInvalidPropertyForOperation",
                     "This property can't be used in FindItem requests.")
    sub(sub(msg, m("MessageXml")), t("FieldURI"), FieldURI=uri)


def find_item(request: EwsRequest) -> etree._Element:
    """Answer FindItem: one response message per parent folder, each paged on its own.

    A property FindItem cannot return (bodies, MIME, recipient lists, headers, ...) asked for by name makes
    each folder's message ErrorInvalidPropertyForOperation, naming the property in MessageXml.
    """
    root, messages = soap.response("FindItem")
    shape = parse_shape(request.operation.find(m("ItemShape")), find=True)
    refused = next((uri for uri in shape.asked if uri in NOT_FOR_FIND), None)
    for ref in resolve_all(request.operation.find(m("ParentFolderIds")), request):
        if isinstance(ref, FolderError):
            soap.error(messages, "FindItem", ref.code, ref.text)
            continue
        if refused is not None:
            _refused_for_find(messages, refused)
            continue
        try:
            _find_in_folder(messages, ref, request, shape)
        except (RestrictionError, FolderError) as exc:
            soap.error(messages, "FindItem", exc.code, exc.text)
    return root


def _lookup(item_id: str, request: EwsRequest) -> StoredItem | tuple[str, str]:
    """Return the item an id names, or the error code and text Exchange gives for it."""
    try:
        _guid, entry = ids.decode_ews_id(item_id)
        is_message = ids.parse_entry_id(entry).kind == "message"
    except ids.MalformedId:
        is_message = False
    if not is_message:
        return "ErrorInvalidIdMalformed", "Id is malformed."
    item = request.store.get(item_id)
    if item is None or not request.serves(item.mailbox):
        return "ErrorItemNotFound", _NOT_FOUND
    return item


def _requested_items(request: EwsRequest) -> list[StoredItem | tuple[str, str]]:
    return [_lookup(elem.get("Id", ""), request)
            for elem in request.operation.iterfind(f"{m('ItemIds')}/{t('ItemId')}")]


def _item_error(messages: etree._Element, operation: str, code: str, text: str) -> None:
    msg = soap.error(messages, operation, code, text)
    if operation in ("GetItem", "MoveItem"):
        sub(msg, m("Items"))


def get_item(request: EwsRequest) -> etree._Element:
    """Answer GetItem: one response message per item id, an error (with an empty m:Items) for the missing ones."""
    root, messages = soap.response("GetItem")
    shape = parse_shape(request.operation.find(m("ItemShape")))
    for item in _requested_items(request):
        if isinstance(item, tuple):
            _item_error(messages, "GetItem", *item)
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
        if isinstance(item, tuple):
            _item_error(messages, "DeleteItem", *item)
        elif not request.store.delete(item.item_id, mode):
            _item_error(messages, "DeleteItem", "ErrorItemNotFound", _NOT_FOUND)
        else:
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
    if ref.name in NO_MOVE_TARGETS:
        return FolderError("ErrorMoveCopyFailed", f"Items cannot be moved to {ref.spec.display_name}.")
    return ref


def move_item(request: EwsRequest) -> etree._Element:
    """Answer MoveItem; each moved item gets a new id, which the response carries unless ReturnNewItemIds is false."""
    ref = _move_target(request)
    root, messages = soap.response("MoveItem")
    return_ids = (request.operation.findtext(m("ReturnNewItemIds")) or "true").strip() != "false"
    for item in _requested_items(request):
        if isinstance(ref, FolderError):
            _item_error(messages, "MoveItem", ref.code, ref.text)
            continue
        if isinstance(item, tuple):
            _item_error(messages, "MoveItem", *item)
            continue
        moved = None if item.mailbox != ref.address else request.store.move(item.item_id, ref.name)
        if moved is None:
            _item_error(messages, "MoveItem", "ErrorItemNotFound", _NOT_FOUND)
            continue
        items = sub(soap.success(messages, "MoveItem"), m("Items"))
        if return_ids:
            sub(sub(items, t("Message")), t("ItemId"), Id=moved.item_id, ChangeKey=moved.change_key)
    return root
