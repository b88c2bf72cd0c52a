"""Folders: ids for the store's folders, resolution of FolderId/DistinguishedFolderId, and GetFolder."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from lxml import etree

from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.soap import m, sub, t

ITEM_FOLDERS: Final = ("inbox", "junkemail", "deleteditems")
DISPLAY_NAMES: Final = {
    "root": "Root", "msgfolderroot": "Top of Information Store", "inbox": "Inbox",
    "junkemail": "Junk Email", "deleteditems": "Deleted Items",
    "recoverableitemsroot": "Recoverable Items", "recoverableitemsdeletions": "Deletions",
}
PARENTS: Final = {"root": None, "msgfolderroot": "root", "inbox": "msgfolderroot",
                  "junkemail": "msgfolderroot", "deleteditems": "msgfolderroot",
                  "recoverableitemsroot": "root", "recoverableitemsdeletions": "recoverableitemsroot"}
FOLDER_CHANGE_KEY: Final = "AQAAABYAAAA="


@dataclass(frozen=True)
class FolderRef:
    """A folder of a mailbox the endpoint serves."""

    address: str
    name: str


class FolderError(Exception):
    """A folder reference that cannot be resolved; ``code`` is the EWS response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def folder_id(ref: FolderRef) -> str:
    """Return the opaque FolderId of a folder."""
    return base64.b64encode(f"F\x00{ref.address}\x00{ref.name}".encode()).decode()


def _decode_folder_id(value: str) -> FolderRef:
    try:
        tag, address, name = base64.b64decode(value, validate=True).decode().split("\x00")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise FolderError("ErrorInvalidIdMalformed", "Id is malformed.") from None
    if tag != "F" or name not in DISPLAY_NAMES:
        raise FolderError("ErrorInvalidIdMalformed", "Id is malformed.")
    return FolderRef(address, name)


def resolve(elem: etree._Element, request: EwsRequest) -> FolderRef:
    """Resolve a t:FolderId or t:DistinguishedFolderId element, or raise FolderError."""
    if elem.tag == t("FolderId"):
        ref = _decode_folder_id(elem.get("Id", ""))
    elif elem.tag == t("DistinguishedFolderId"):
        name = elem.get("Id", "")
        if name not in DISPLAY_NAMES:
            raise FolderError("ErrorFolderNotFound", f"The distinguished folder {name!r} does not exist.")
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
        try:
            results.append(resolve(elem, request))
        except FolderError as exc:
            results.append(exc)
    return results


def children(name: str) -> list[str]:
    """Return the direct child folders of a folder."""
    return [child for child, parent in PARENTS.items() if parent == name]


def descendants(name: str) -> list[str]:
    """Return every folder below a folder, depth first."""
    return [n for child in children(name) for n in (child, *descendants(child))]


def _counts(ref: FolderRef, request: EwsRequest) -> tuple[int, int]:
    if ref.name not in ITEM_FOLDERS:
        return 0, len(children(ref.name))
    return len(request.store.items(ref.address, [ref.name])), 0


def folder_element(parent: etree._Element, ref: FolderRef, request: EwsRequest) -> etree._Element:
    """Append a t:Folder describing ``ref``."""
    folder = sub(parent, t("Folder"))
    sub(folder, t("FolderId"), Id=folder_id(ref), ChangeKey=FOLDER_CHANGE_KEY)
    parent_name = PARENTS[ref.name]
    if parent_name is not None:
        sub(folder, t("ParentFolderId"), Id=folder_id(FolderRef(ref.address, parent_name)),
            ChangeKey=FOLDER_CHANGE_KEY)
    if ref.name in ITEM_FOLDERS or ref.name == "recoverableitemsdeletions":
        sub(folder, t("FolderClass"), "IPF.Note")
    sub(folder, t("DisplayName"), DISPLAY_NAMES[ref.name])
    total, children = _counts(ref, request)
    sub(folder, t("TotalCount"), str(total))
    sub(folder, t("ChildFolderCount"), str(children))
    rights = sub(folder, t("EffectiveRights"))
    for right, value in (("CreateAssociated", "true"), ("CreateContents", "true"),
                         ("CreateHierarchy", "true"), ("Delete", "true"), ("Modify", "true"),
                         ("Read", "true"), ("ViewPrivateItems", "true")):
        sub(rights, t(right), value)
    sub(folder, t("DistinguishedFolderId"), ref.name)
    sub(folder, t("UnreadCount"), "0")
    return folder


def get_folder(request: EwsRequest) -> etree._Element:
    """Answer GetFolder: one response message per requested folder, in order."""
    root, messages = soap.response("GetFolder")
    for ref in resolve_all(request.operation.find(m("FolderIds")), request):
        if isinstance(ref, FolderError):
            soap.error(messages, "GetFolder", ref.code, ref.text)
            continue
        msg = soap.success(messages, "GetFolder")
        folder_element(sub(msg, m("Folders")), ref, request)
    return root


def find_folder(request: EwsRequest) -> etree._Element:
    """Answer FindFolder: the child folders (Shallow) or all folders below (Deep) of each parent, unpaged."""
    root, messages = soap.response("FindFolder")
    deep = request.operation.get("Traversal") == "Deep"
    for ref in resolve_all(request.operation.find(m("ParentFolderIds")), request):
        if isinstance(ref, FolderError):
            soap.error(messages, "FindFolder", ref.code, ref.text)
            continue
        names = descendants(ref.name) if deep else children(ref.name)
        msg = soap.success(messages, "FindFolder")
        found = sub(msg, m("RootFolder"), IndexedPagingOffset=str(len(names)), TotalItemsInView=str(len(names)),
                    IncludesLastItemInRange="true")
        container = sub(found, t("Folders"))
        for name in names:
            folder_element(container, FolderRef(ref.address, name), request)
    return root
