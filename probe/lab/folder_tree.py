"""The folders of a lab mailbox: the tree a new Exchange 2016/2019 mailbox has, in English.

Under ``root``: the IPM subtree (``msgfolderroot``, "Top of Information Store") with the default mail,
calendar, contacts, tasks, notes and journal folders, Sync Issues and its three subfolders, and "RSS Feeds"
(a default folder with no distinguished id); the Recoverable Items folders (where soft-deleted items go,
out of the client's view); and the search folder root ("Finder"). Every folder can hold items; each has a
fixed counter, so its ids never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, kw_only=True)
class FolderSpec:
    """One folder of every lab mailbox."""

    name: str  # the DistinguishedFolderId, or the lab's own key for a folder that has none
    parent: str | None
    display_name: str
    folder_class: str | None
    counter: int  # the folder's global counter in its entry id
    distinguished: bool = True


def _spec(name: str, parent: str | None, display: str, folder_class: str | None, counter: int,
          *, distinguished: bool = True) -> FolderSpec:
    return FolderSpec(name=name, parent=parent, display_name=display, folder_class=folder_class,
                      counter=counter, distinguished=distinguished)


TREE: Final[tuple[FolderSpec, ...]] = (
    _spec("root", None, "Root", None, 0x01),
    _spec("msgfolderroot", "root", "Top of Information Store", None, 0x02),
    _spec("calendar", "msgfolderroot", "Calendar", "IPF.Appointment", 0x0B),
    _spec("contacts", "msgfolderroot", "Contacts", "IPF.Contact", 0x0C),
    _spec("deleteditems", "msgfolderroot", "Deleted Items", "IPF.Note", 0x0A),
    _spec("drafts", "msgfolderroot", "Drafts", "IPF.Note", 0x0F),
    _spec("inbox", "msgfolderroot", "Inbox", "IPF.Note", 0x0D),
    _spec("journal", "msgfolderroot", "Journal", "IPF.Journal", 0x10),
    _spec("junkemail", "msgfolderroot", "Junk Email", "IPF.Note", 0x13),
    _spec("notes", "msgfolderroot", "Notes", "IPF.StickyNote", 0x11),
    _spec("outbox", "msgfolderroot", "Outbox", "IPF.Note", 0x08),
    _spec("rssfeeds", "msgfolderroot", "RSS Feeds", "IPF.Note.OutlookHomepage", 0x14, distinguished=False),
    _spec("sentitems", "msgfolderroot", "Sent Items", "IPF.Note", 0x09),
    _spec("syncissues", "msgfolderroot", "Sync Issues", "IPF.Note", 0x15),
    _spec("conflicts", "syncissues", "Conflicts", "IPF.Note", 0x16),
    _spec("localfailures", "syncissues", "Local Failures", "IPF.Note", 0x17),
    _spec("serverfailures", "syncissues", "Server Failures", "IPF.Note", 0x18),
    _spec("tasks", "msgfolderroot", "Tasks", "IPF.Task", 0x12),
    _spec("recoverableitemsroot", "root", "Recoverable Items", None, 0x1A),
    _spec("recoverableitemsdeletions", "recoverableitemsroot", "Deletions", None, 0x1B),
    _spec("recoverableitemsdiscoveryholds", "recoverableitemsroot", "DiscoveryHolds", None, 0x1E),
    _spec("recoverableitemspurges", "recoverableitemsroot", "Purges", None, 0x1C),
    _spec("recoverableitemsversions", "recoverableitemsroot", "Versions", None, 0x1D),
    _spec("searchfolders", "root", "Finder", None, 0x03),
)
BY_NAME: Final = {spec.name: spec for spec in TREE}
BY_COUNTER: Final = {spec.counter: spec for spec in TREE}
DISTINGUISHED: Final = frozenset(spec.name for spec in TREE if spec.distinguished)
RECOVERABLE: Final = frozenset({"recoverableitemsroot", "recoverableitemsdeletions",
                                "recoverableitemsdiscoveryholds", "recoverableitemspurges",
                                "recoverableitemsversions"})
FIRST_ITEM_COUNTER: Final = 0x10000  # item counters start above every folder's


def children(name: str) -> list[str]:
    """Return the direct child folders of a folder, by display name as Exchange lists them."""
    kids = [spec for spec in TREE if spec.parent == name]
    return [spec.name for spec in sorted(kids, key=lambda s: s.display_name.casefold())]


def descendants(name: str) -> list[str]:
    """Return every folder below a folder, depth first."""
    return [n for child in children(name) for n in (child, *descendants(child))]
