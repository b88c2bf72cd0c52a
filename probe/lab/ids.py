"""Exchange-shaped identifiers of the lab's folders and items, and their alternate formats (ConvertId).

An Exchange 2010-2019 EwsId is base64 of: a compression byte (0: none), an id storage type (3: mailbox
item, mailbox-GUID based), the mailbox GUID as 36 ASCII characters (length-prefixed), a processing byte
and the MAPI entry id (length-prefixed). The entry id (``PR_ENTRYID``) is 4 flag bytes, the store's
16-byte provider UID, then the object type and its global ids: a folder (``01 00``) has one
(database GUID + 6-byte counter + 2 pad bytes, 46 bytes in all), a message (``07 00``) has its folder's
and its own (70 bytes). Ids made this way start ``AAMk`` as Exchange's do, and every alternate format
ConvertId offers is a reversible encoding of the same entry id:

- ``EntryId``: base64 of the entry id; ``HexEntryId``: the same bytes in upper-case hex;
- ``StoreId``: base64 of the length-prefixed entry id;
- ``EwsLegacyId`` (Exchange 2007): storage type 1, the mailbox's SMTP address instead of its GUID;
- ``OwaId``: URL-escaped base64 of the entry id after a 4-byte length (``RgAAAA...``).
"""

from __future__ import annotations

import base64
import binascii
import struct
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Final, Literal

IdFormat = Literal["EwsId", "EwsLegacyId", "EntryId", "HexEntryId", "StoreId", "OwaId"]
ID_FORMATS: Final[tuple[IdFormat, ...]] = ("EwsId", "EwsLegacyId", "EntryId", "HexEntryId", "StoreId", "OwaId")
FOLDER_TYPE: Final = b"\x01\x00"
MESSAGE_TYPE: Final = b"\x07\x00"
_GUID_BASED: Final = 3
_SMTP_BASED: Final = 1
_NAMESPACE: Final = uuid.UUID("6f1d3c9e-2b7a-4d44-9b1e-5d0f6a1c2e80")  # the lab's own, for stable GUIDs


class MalformedId(ValueError):  # noqa: N818 - named for Exchange's ErrorInvalidIdMalformed
    """An id that is not one the lab could have issued, in the format it claims."""


def mailbox_guid(address: str) -> uuid.UUID:
    """Return the stable mailbox GUID of an address."""
    return uuid.uuid5(_NAMESPACE, f"mailbox:{address.lower()}")


def _provider_uid(address: str) -> bytes:
    return uuid.uuid5(_NAMESPACE, f"store:{address.lower()}").bytes


def _database_guid(address: str) -> bytes:
    return uuid.uuid5(_NAMESPACE, f"database:{address.rpartition('@')[2].lower()}").bytes


def _global_id(address: str, counter: int) -> bytes:
    return _database_guid(address) + counter.to_bytes(6, "big") + b"\x00\x00"


def folder_entry_id(address: str, counter: int) -> bytes:
    """Return the 46-byte MAPI entry id of a folder of a mailbox."""
    return b"\x00\x00\x00\x00" + _provider_uid(address) + FOLDER_TYPE + _global_id(address, counter)


def message_entry_id(address: str, folder_counter: int, counter: int) -> bytes:
    """Return the 70-byte MAPI entry id of a message in a folder of a mailbox."""
    return (b"\x00\x00\x00\x00" + _provider_uid(address) + MESSAGE_TYPE + _global_id(address, folder_counter)
            + _global_id(address, counter))


@dataclass(frozen=True)
class EntryRef:
    """What an entry id says: the store's provider UID, the object type and its counters."""

    provider_uid: bytes
    kind: Literal["folder", "message"]
    folder_counter: int
    counter: int  # the folder's own counter for a folder


def parse_entry_id(entry: bytes) -> EntryRef:
    """Read a folder or message entry id, or raise MalformedId."""
    if len(entry) not in (46, 70) or entry[:4] != b"\x00\x00\x00\x00":
        raise MalformedId("not a folder or message entry id")
    kind = entry[20:22]
    folder_counter = int.from_bytes(entry[38:44], "big")
    if kind == FOLDER_TYPE and len(entry) == 46:
        return EntryRef(entry[4:20], "folder", folder_counter, folder_counter)
    if kind == MESSAGE_TYPE and len(entry) == 70:
        return EntryRef(entry[4:20], "message", folder_counter, int.from_bytes(entry[62:68], "big"))
    raise MalformedId("not a folder or message entry id")


def owns(address: str, ref: EntryRef) -> bool:
    """Say whether an entry id belongs to the store of a mailbox."""
    return ref.provider_uid == _provider_uid(address)


def ews_id(address: str, entry: bytes) -> str:
    """Return the EwsId of an entry id in a mailbox."""
    moniker = str(mailbox_guid(address)).encode()
    return _wrap(_GUID_BASED, moniker, entry)


def _wrap(storage_type: int, moniker: bytes, entry: bytes) -> str:
    raw = (bytes([0, storage_type]) + struct.pack("<H", len(moniker)) + moniker + b"\x00"
           + struct.pack("<H", len(entry)) + entry)
    return base64.b64encode(raw).decode()


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedId("not base64") from None


def _unwrap(text: str) -> tuple[int, bytes, bytes]:
    raw = _b64(text)
    if len(raw) < 7 or raw[0] != 0:
        raise MalformedId("not an EWS id")
    (moniker_len,) = struct.unpack_from("<H", raw, 2)
    moniker = raw[4:4 + moniker_len]
    at = 4 + moniker_len + 1
    if len(moniker) != moniker_len or len(raw) < at + 2:
        raise MalformedId("truncated EWS id")
    (entry_len,) = struct.unpack_from("<H", raw, at)
    entry = raw[at + 2:]
    if len(entry) != entry_len:
        raise MalformedId("truncated EWS id")
    return raw[1], moniker, entry


def decode_ews_id(text: str) -> tuple[uuid.UUID, bytes]:
    """Return the mailbox GUID and entry id of an EwsId, or raise MalformedId."""
    storage_type, moniker, entry = _unwrap(text)
    if storage_type != _GUID_BASED:
        raise MalformedId("not a GUID-based EWS id")
    try:
        guid = uuid.UUID(moniker.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedId("bad mailbox GUID") from None
    parse_entry_id(entry)
    return guid, entry


def encode(fmt: IdFormat, address: str, entry: bytes) -> str:
    """Write an entry id of a mailbox in one of ConvertId's formats."""
    if fmt == "EwsId":
        return ews_id(address, entry)
    if fmt == "EwsLegacyId":
        return _wrap(_SMTP_BASED, address.lower().encode(), entry)
    if fmt == "EntryId":
        return base64.b64encode(entry).decode()
    if fmt == "HexEntryId":
        return entry.hex().upper()
    if fmt == "StoreId":
        return base64.b64encode(struct.pack("<H", len(entry)) + entry).decode()
    return urllib.parse.quote(base64.b64encode(struct.pack("<I", len(entry)) + entry).decode(), safe="")


def decode(fmt: IdFormat, text: str) -> tuple[str | uuid.UUID | None, bytes]:
    """Read an id in one of ConvertId's formats: the mailbox it names (GUID, address or None) and its entry id."""
    if fmt == "EwsId":
        return decode_ews_id(text)
    if fmt == "EwsLegacyId":
        storage_type, moniker, entry = _unwrap(text)
        if storage_type != _SMTP_BASED:
            raise MalformedId("not an SMTP-based EWS id")
        parse_entry_id(entry)
        return moniker.decode("ascii", errors="replace"), entry
    return None, _entry_of(fmt, text)


def _entry_of(fmt: IdFormat, text: str) -> bytes:
    if fmt == "EntryId":
        entry = _b64(text)
    elif fmt == "HexEntryId":
        try:
            entry = bytes.fromhex(text)
        except ValueError:
            raise MalformedId("not hex") from None
    elif fmt == "StoreId":
        raw = _b64(text)
        entry = raw[2:] if len(raw) > 2 and struct.unpack_from("<H", raw)[0] == len(raw) - 2 else b""
    else:
        raw = _b64(urllib.parse.unquote(text))
        entry = raw[4:] if len(raw) > 4 and struct.unpack_from("<I", raw)[0] == len(raw) - 4 else b""
    parse_entry_id(entry)
    return entry
