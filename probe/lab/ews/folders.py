"""Folders: Exchange-shaped folder ids, resolution of FolderId/DistinguishedFolderId, GetFolder and FindFolder.

Folder shapes are Exchange 2013-2019's (Microsoft's "Property sets and response shapes in EWS", tables 2
and 4): IdOnly gives the FolderId; Default adds DisplayName, ChildFolderCount, TotalCount (not for
Calendar) and UnreadCount (mail folders only); AllProperties gives FolderId, ParentFolderId, FolderClass,
DisplayName, TotalCount, ChildFolderCount, EffectiveRights and UnreadCount (where the folder type has it);
AdditionalProperties add to any of them. Calendar, Contacts and Tasks come back as ``t:CalendarFolder``,
``t:ContactsFolder`` and ``t:TasksFolder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from lxml import etree

from probe.lab import ids
from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.soap import m, sub, t
from probe.lab.folder_tree import BY_COUNTER, BY_NAME, DISTINGUISHED, FolderSpec, children, descendants

FOLDER_CHANGE_KEY: Final = "AQAAABYAAAA="
MAX_PAGE: Final = 1000
_MALFORMED: Final = "Id is malformed."
_NO_UNREAD: Final = frozenset({"CalendarFolder", "ContactsFolder"})
_DEFAULT: Final = frozenset({"folder:FolderId", "folder:DisplayName", "folder:ChildFolderCount",
                             "folder:TotalCount", "folder:UnreadCount"})
_ALL: Final = _DEFAULT | {"folder:ParentFolderId", "folder:FolderClass", "folder:EffectiveRights"}


@dataclass(frozen=True)
class FolderRef:
    """A folder of a mailbox the endpoint serves."""

    address: str
    name: str

    @property
    def spec(self) -> FolderSpec:
        """Return what every mailbox's folder of this name is."""
        return BY_NAME[self.name]


class FolderError(Exception):
    """A folder reference that cannot be resolved; ``code`` is the EWS response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def folder_id(ref: FolderRef) -> str:
    """Return the EwsId of a folder."""
    return ids.ews_id(ref.address, ids.folder_entry_id(ref.address, ref.spec.counter))


def _decode_folder_id(value: str, request: EwsRequest) -> FolderRef:
    try:
        guid, entry = ids.decode_ews_id(value)
        ref = ids.parse_entry_id(entry)
    except ids.MalformedId:
        raise FolderError("ErrorInvalidIdMalformed", _MALFORMED) from None
    address = request.store.address_of(guid)
    if ref.kind != "folder" or ref.counter not in BY_COUNTER:
        raise FolderError("ErrorInvalidIdMalformed", _MALFORMED)
    if address is None or not ids.owns(address, ref):
        raise FolderError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
    return FolderRef(address, BY_COUNTER[ref.counter].name)


def resolve(elem: etree._Element, request: EwsRequest) -> FolderRef:
    """Resolve a t:FolderId or t:DistinguishedFolderId element, or raise FolderError."""
    if elem.tag == t("FolderId"):
        ref = _decode_folder_id(elem.get("Id", ""), request)
    elif elem.tag == t("DistinguishedFolderId"):
        name = elem.get("Id", "")
        if name not in DISTINGUISHED:
            raise FolderError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        address = elem.findtext(f"{t('Mailbox')}/{t('EmailAddress')}") or request.default_mailbox
        ref = FolderRef(address.strip().lower(), name)
    else:
        raise FolderError("ErrorInvalidRequest", "Expected a FolderId or DistinguishedFolderId.")
    if not request.serves(ref.address):
        raise FolderError("ErrorNonExistentMailbox", f"No mailbox with such guid or SMTP address: {ref.address}")
    return ref


def resolve_all(container: etree._Element | None, request: EwsRequest) -> list[FolderRef | FolderError]:
    """Resolve every folder reference under a container, keeping errors in place."""
    results: list[FolderRef | FolderError] = []
    for elem in [] if container is None else container:
        if not isinstance(elem.tag, str):
            continue
        try:
            results.append(resolve(elem, request))
        except FolderError as exc:
            results.append(exc)
    return results


@dataclass
class FolderShape:
    """The folder properties a FolderShape asks for."""

    fields: set[str] = field(default_factory=set)
    default: bool = False


def parse_folder_shape(elem: etree._Element | None) -> FolderShape:
    """Read BaseShape and AdditionalProperties of a FolderShape."""
    shape = FolderShape()
    base = "IdOnly" if elem is None else (elem.findtext(t("BaseShape")) or "IdOnly").strip()
    shape.default = base == "Default"
    shape.fields = {"folder:FolderId"} | (set(_DEFAULT) if base == "Default" else set())
    if base == "AllProperties":
        shape.fields |= _ALL
    if elem is not None:
        shape.fields |= {p.get("FieldURI", "") for p in elem.iterfind(f"{t('AdditionalProperties')}/{t('FieldURI')}")}
    return shape


def element_name(spec: FolderSpec) -> str:
    """Return the element a folder is written as, from its folder class."""
    folder_class = spec.folder_class or ""
    for prefix, name in (("IPF.Appointment", "CalendarFolder"), ("IPF.Contact", "ContactsFolder"),
                         ("IPF.Task", "TasksFolder")):
        if folder_class.startswith(prefix):
            return name
    return "Folder"


def _default_drops(spec: FolderSpec, kind: str) -> set[str]:
    """Return what Default leaves out for this folder (Microsoft's table 2)."""
    drops = {"folder:TotalCount"} if kind == "CalendarFolder" else set()
    if kind != "Folder" or spec.folder_class == "IPF.StickyNote":
        drops.add("folder:UnreadCount")
    return drops


def _add_rights(folder: etree._Element) -> None:
    rights = sub(folder, t("EffectiveRights"))
    for right in ("CreateAssociated", "CreateContents", "CreateHierarchy", "Delete", "Modify", "Read",
                  "ViewPrivateItems"):
        sub(rights, t(right), "true")


def folder_element(parent: etree._Element, ref: FolderRef, request: EwsRequest, shape: FolderShape) -> None:
    """Append the folder element for ``ref`` with the properties the shape asks for, in schema order."""
    spec = ref.spec
    kind = element_name(spec)
    wanted = shape.fields - (_default_drops(spec, kind) if shape.default else set())
    folder = sub(parent, t(kind))
    sub(folder, t("FolderId"), Id=folder_id(ref), ChangeKey=FOLDER_CHANGE_KEY)
    if "folder:ParentFolderId" in wanted and spec.parent is not None:
        sub(folder, t("ParentFolderId"), Id=folder_id(FolderRef(ref.address, spec.parent)),
            ChangeKey=FOLDER_CHANGE_KEY)
    if "folder:FolderClass" in wanted and spec.folder_class:
        sub(folder, t("FolderClass"), spec.folder_class)
    if "folder:DisplayName" in wanted:
        sub(folder, t("DisplayName"), spec.display_name)
    total, unread = request.store.counts(ref.address, ref.name)
    if "folder:TotalCount" in wanted:
        sub(folder, t("TotalCount"), str(total))
    if "folder:ChildFolderCount" in wanted:
        sub(folder, t("ChildFolderCount"), str(len(children(ref.name))))
    if "folder:EffectiveRights" in wanted:
        _add_rights(folder)
    if "folder:DistinguishedFolderId" in wanted and spec.distinguished:
        sub(folder, t("DistinguishedFolderId"), ref.name)
    if "folder:UnreadCount" in wanted and kind not in _NO_UNREAD:
        sub(folder, t("UnreadCount"), str(unread))


def get_folder(request: EwsRequest) -> etree._Element:
    """Answer GetFolder: one response message per requested folder, in order; errors keep an empty m:Folders."""
    root, messages = soap.response("GetFolder")
    shape = parse_folder_shape(request.operation.find(m("FolderShape")))
    for ref in resolve_all(request.operation.find(m("FolderIds")), request):
        if isinstance(ref, FolderError):
            sub(soap.error(messages, "GetFolder", ref.code, ref.text), m("Folders"))
            continue
        msg = soap.success(messages, "GetFolder")
        folder_element(sub(msg, m("Folders")), ref, request, shape)
    return root


def page_bounds(view: etree._Element | None, total: int) -> tuple[int, int]:
    """Return the (offset, size) an indexed page view asks for over ``total`` entries, at most MAX_PAGE."""
    if view is None:
        return 0, min(total, MAX_PAGE)
    try:
        offset = max(0, int(view.get("Offset", "0")))
        size = max(0, min(int(view.get("MaxEntriesReturned", str(MAX_PAGE))), MAX_PAGE))
    except ValueError:
        raise FolderError("ErrorInvalidPagingMaxRows", "Offset and MaxEntriesReturned are integers.") from None
    if view.get("BasePoint") == "End":
        offset = max(0, total - offset - size)
    return offset, size


def _find_in(messages: etree._Element, ref: FolderRef, request: EwsRequest, shape: FolderShape) -> None:
    op = request.operation
    if op.find(m("Restriction")) is not None:
        raise FolderError("ErrorUnsupportedQueryFilter", "The lab does not evaluate FindFolder restrictions.")
    names = descendants(ref.name) if op.get("Traversal") == "Deep" else children(ref.name)
    offset, size = page_bounds(op.find(m("IndexedPageFolderView")), len(names))
    page = names[offset:offset + size]
    end = offset + len(page)
    msg = soap.success(messages, "FindFolder")
    found = sub(msg, m("RootFolder"), IndexedPagingOffset=str(end), TotalItemsInView=str(len(names)),
                IncludesLastItemInRange="true" if end >= len(names) else "false")
    container = sub(found, t("Folders"))
    for name in page:
        folder_element(container, FolderRef(ref.address, name), request, shape)


def find_folder(request: EwsRequest) -> etree._Element:
    """Answer FindFolder: the child folders (Shallow) or all folders below (Deep) of each parent, paged."""
    root, messages = soap.response("FindFolder")
    shape = parse_folder_shape(request.operation.find(m("FolderShape")))
    for ref in resolve_all(request.operation.find(m("ParentFolderIds")), request):
        try:
            if isinstance(ref, FolderError):
                raise ref
            _find_in(messages, ref, request, shape)
        except FolderError as exc:
            soap.error(messages, "FindFolder", exc.code, exc.text)
    return root
