"""ConvertId: the lab's folder and item ids between EwsId, EwsLegacyId, EntryId, HexEntryId, StoreId and OwaId.

Each source id is read in its stated format and written in the destination format, with the SMTP address of
its mailbox (``m:AlternateId xsi:type="t:AlternateIdType" Format Id Mailbox``), as Exchange 2010-2019 do.
An id that is not one the lab could have issued in that format is ErrorInvalidIdMalformed (so is
exchangelib's version-guessing ``DUMMY``); a well-formed id of a mailbox this endpoint does not serve is
ErrorNonExistentMailbox.
"""

from __future__ import annotations

import uuid
from typing import Final, cast

from lxml import etree

from probe.lab import ids
from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.soap import XSI_NS, m, sub, t

_MALFORMED: Final = ("ErrorInvalidIdMalformed", "Id is malformed.")


class ConvertError(Exception):
    """A source id that cannot be converted; ``code`` is the EWS response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _mailbox_of(named: str | uuid.UUID | None, source: etree._Element, request: EwsRequest) -> str:
    if isinstance(named, uuid.UUID):
        address = request.store.address_of(named)
    else:
        address = (named or source.get("Mailbox", "")).strip().lower()
    if not address or not request.serves(address):
        raise ConvertError("ErrorNonExistentMailbox", f"No mailbox with such guid or SMTP address: {address}")
    return address


def _convert(source: etree._Element, destination: str, request: EwsRequest) -> tuple[str, str]:
    if destination not in ids.ID_FORMATS:
        raise ConvertError("ErrorInvalidRequest", f"{destination!r} is not an id format.")
    fmt = source.get("Format", "")
    if source.tag != t("AlternateId") or fmt not in ids.ID_FORMATS:
        raise ConvertError(*_MALFORMED)
    try:
        named, entry = ids.decode(cast(ids.IdFormat, fmt), source.get("Id", ""))
    except ids.MalformedId:
        raise ConvertError(*_MALFORMED) from None
    address = _mailbox_of(named, source, request)
    if not ids.owns(address, ids.parse_entry_id(entry)):
        raise ConvertError(*_MALFORMED)
    return ids.encode(destination, address, entry), address


def convert_id(request: EwsRequest) -> etree._Element:
    """Answer ConvertId: one response message per source id, in order."""
    root, messages = soap.response("ConvertId")
    destination = request.operation.get("DestinationFormat", "")
    for source in request.operation.iterfind(f"{m('SourceIds')}/*"):
        try:
            converted, address = _convert(source, destination, request)
        except ConvertError as exc:
            soap.error(messages, "ConvertId", exc.code, exc.text)
            continue
        msg = soap.success(messages, "ConvertId")
        sub(msg, m("AlternateId"), **{f"{{{XSI_NS}}}type": "t:AlternateIdType", "Format": destination,
                                      "Id": converted, "Mailbox": address})
    return root
