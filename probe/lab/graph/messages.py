"""Graph's mail API over the lab's mailbox store: messages as JSON, and the OData options Graph allows on them.

What Microsoft documents for listing messages, and the lab does: ``$filter`` on ``receivedDateTime``
(``ge gt le lt eq``, joined by ``and``); ``$orderby`` only on properties that the ``$filter`` names first and
in the same order, else ``400 InefficientFilter`` ("The restriction or sort order is too complex for this
operation."); ``$select`` of known properties (``internetMessageHeaders`` only when selected);
``$top`` 1 to 1000 (default 10), further pages by ``@odata.nextLink``; ``receivedDateTime`` in whole seconds;
``$expand`` of one single-value extended property, the message class (``PidTagMessageClass``,
``String 0x001A``: ``IPM.Note``, an NDR's ``REPORT.IPM.Note.NDR``), shown as Graph shows it (``String 0x1a``).
Ids are the store's EWS ids in their REST form (``/`` and ``+`` as ``-`` and ``_``); a moved message
gets a new one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from probe.lab.store import StoredItem

MAX_TOP: Final = 1000
DEFAULT_TOP: Final = 10
FOLDERS: Final = ("inbox", "junkemail", "deleteditems")
DEFAULT_FIELDS: Final = ("id", "receivedDateTime", "sentDateTime", "subject", "internetMessageId", "parentFolderId",
                         "isRead", "bodyPreview", "from")
KNOWN_FIELDS: Final = frozenset({*DEFAULT_FIELDS, "internetMessageHeaders", "createdDateTime",
                                 "lastModifiedDateTime"})
_CLAUSE: Final = re.compile(r"\s*(\w+)\s+(ge|gt|le|lt|eq)\s+(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s*", re.I)
_ORDER: Final = re.compile(r"\s*(\w+)(?:\s+(asc|desc))?\s*", re.I)
_EXPAND_CLASS: Final = re.compile(r"\s*singleValueExtendedProperties\(\s*\$filter\s*=\s*id\s+eq\s+"
                                  r"'String\s+0x0*1a'\s*\)\s*", re.I)
MESSAGE_CLASS_ID: Final = "String 0x1a"  # how Graph names PidTagMessageClass back


class GraphRequestError(Exception):
    """A request Graph refuses: HTTP status, error code and message, as in Graph's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def body(self) -> dict[str, Any]:
        """Return Graph's error body."""
        return {"error": {"code": self.code, "message": str(self)}}


INEFFICIENT: Final = ("InefficientFilter", "The restriction or sort order is too complex for this operation.")


def rest_id(item_id: str) -> str:
    """Return an item's REST id (what Graph shows) from its EWS id."""
    return item_id.replace("/", "-").replace("+", "_")


def store_id(graph_id: str) -> str:
    """Return the store's EWS id of a REST id."""
    return graph_id.replace("-", "/").replace("_", "+")


def graph_time(stamp: datetime) -> str:
    """Return a time as Graph writes ``receivedDateTime``: UTC, whole seconds, ``Z``."""
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Clause:
    """One comparison of a ``$filter``."""

    field: str
    op: str
    value: datetime


def parse_filter(text: str | None) -> list[Clause]:
    """Read a ``$filter`` of receivedDateTime comparisons joined by ``and``; raise GraphRequestError otherwise."""
    if not text:
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        match = _CLAUSE.fullmatch(part)
        if match is None or match[1] != "receivedDateTime":
            raise GraphRequestError(400, "BadRequest", f"Invalid filter clause: {part.strip()[:80]}")
        clauses.append(Clause(match[1], match[2].lower(), datetime.fromisoformat(match[3].replace("Z", "+00:00"))))
    return clauses


def parse_orderby(text: str | None, clauses: Sequence[Clause]) -> list[tuple[str, bool]]:
    """Read ``$orderby``; its properties must lead the ``$filter``, in its order (else InefficientFilter)."""
    if not text:
        return []
    order = []
    for part in text.split(","):
        match = _ORDER.fullmatch(part)
        if match is None or match[1] not in KNOWN_FIELDS:
            raise GraphRequestError(400, "BadRequest", f"Invalid $orderby: {part.strip()[:80]}")
        order.append((match[1], (match[2] or "asc").lower() == "desc"))
    leading = [c.field for c in clauses][:len(order)]
    if clauses and leading != [name for name, _desc in order]:
        raise GraphRequestError(400, *INEFFICIENT)
    if not clauses and any(name != "receivedDateTime" for name, _desc in order):
        raise GraphRequestError(400, *INEFFICIENT)
    return order


def parse_select(text: str | None) -> tuple[str, ...]:
    """Read ``$select``; an unknown property is refused as Graph refuses it."""
    if not text:
        return DEFAULT_FIELDS
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    for name in fields:
        if name not in KNOWN_FIELDS:
            raise GraphRequestError(400, "RequestBroker--ParseUri",
                                    f"Could not find a property named '{name}' on type 'microsoft.graph.message'.")
    return ("id", *[f for f in fields if f != "id"])


def parse_expand(text: str | None) -> bool:
    """Read ``$expand``: only the message class extended property is known here; say whether it is asked for."""
    if not text:
        return False
    if _EXPAND_CLASS.fullmatch(text) is None:
        raise GraphRequestError(400, "BadRequest", f"Parsing OData Select and Expand failed: {text.strip()[:80]}")
    return True


def parse_int(text: str | None, *, name: str, default: int, high: int) -> int:
    """Read ``$top`` or ``$skip``."""
    if text is None:
        return default
    if not text.isdigit() or not 0 <= int(text) <= high:
        raise GraphRequestError(400, "BadRequest", f"Invalid value for {name}: {text[:20]}")
    return int(text)


def _matches(item: StoredItem, clauses: Sequence[Clause]) -> bool:
    received = item.received.replace(microsecond=0)
    tests = {"ge": received.__ge__, "gt": received.__gt__, "le": received.__le__, "lt": received.__lt__,
             "eq": received.__eq__}
    return all(tests[c.op](c.value) for c in clauses)


def message_json(item: StoredItem, fields: Sequence[str], *, message_class: bool = False) -> dict[str, Any]:
    """Return a message as Graph shows it, with ``fields`` only (and its message class when expanded)."""
    whole = {
        "id": rest_id(item.item_id), "receivedDateTime": graph_time(item.received),
        "createdDateTime": graph_time(item.received), "lastModifiedDateTime": graph_time(item.received),
        "sentDateTime": graph_time(item.received), "subject": item.subject, "internetMessageId": item.message_id,
        "parentFolderId": item.folder, "isRead": item.is_read, "bodyPreview": item.body[:255],
        "from": {"emailAddress": {"name": "", "address": next((v for k, v in item.headers if k.lower() == "from"),
                                                              "")}},
        "internetMessageHeaders": [{"name": k, "value": v} for k, v in item.headers],
    }
    shown = {"@odata.etag": f'W/"{item.change_key}"', **{name: whole[name] for name in fields}}
    if message_class:
        shown["singleValueExtendedProperties"] = [{"id": MESSAGE_CLASS_ID, "value": item.item_class}]
    return shown


def list_page(items: Sequence[StoredItem], query: dict[str, str], *, url: str) -> dict[str, Any]:
    """Return one page of a folder's messages for an OData query (filtered, ordered, selected, paged)."""
    clauses = parse_filter(query.get("$filter"))
    order = parse_orderby(query.get("$orderby"), clauses)
    fields = parse_select(query.get("$select"))
    expand = parse_expand(query.get("$expand"))
    top = parse_int(query.get("$top"), name="$top", default=DEFAULT_TOP, high=MAX_TOP) or DEFAULT_TOP
    skip = parse_int(query.get("$skip"), name="$skip", default=0, high=10**9)
    chosen = [i for i in items if _matches(i, clauses)]
    chosen.sort(key=lambda i: i.received, reverse=not order or order[0][1])  # newest first unless asked
    page: dict[str, Any] = {"value": [message_json(i, fields, message_class=expand) for i in chosen[skip:skip + top]]}
    if skip + top < len(chosen):
        page["@odata.nextLink"] = f"{url}?{urlencode({**query, '$skip': str(skip + top)})}"
    return page
