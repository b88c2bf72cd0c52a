"""The table of EWS operations the lab answers, one handler per operation name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from lxml import etree

from probe.lab.ews import convert, create, folders, items, soap, subscriptions
from probe.lab.ews.context import EwsRequest

Handler = Callable[[EwsRequest], etree._Element]
StreamHandler = Callable[[EwsRequest], Iterator[etree._Element]]


OPERATIONS: Final[dict[str, Handler]] = {
    "ConvertId": convert.convert_id,
    "GetFolder": folders.get_folder,
    "FindFolder": folders.find_folder,
    "FindItem": items.find_item,
    "GetItem": items.get_item,
    "DeleteItem": items.delete_item,
    "MoveItem": items.move_item,
    "CreateItem": create.create_item,
    "Subscribe": subscriptions.subscribe,
    "Unsubscribe": subscriptions.unsubscribe,
    "GetEvents": subscriptions.get_events,
}
STREAMING_OPERATIONS: Final[dict[str, StreamHandler]] = {
    "GetStreamingEvents": subscriptions.get_streaming_events,
}


def operation_name(operation: etree._Element) -> str:
    """Return the local name of an operation element in the messages namespace, or raise SoapFault."""
    qname = etree.QName(operation)
    if qname.namespace != soap.M_NS:
        raise soap.SoapFault("ErrorInvalidRequest", f"{qname.localname} is not an EWS operation.")
    return str(qname.localname)


def is_known(name: str) -> bool:
    """Say whether the lab answers this operation."""
    return name in OPERATIONS or name in STREAMING_OPERATIONS
