"""Restrictions, sort orders and AQS query strings of FindItem, evaluated over stored items."""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from lxml import etree

from probe.lab.ews.soap import t
from probe.lab.store import StoredItem

Predicate = Callable[[StoredItem], bool]
Getter = Callable[[StoredItem], Any]


class RestrictionError(Exception):
    """A restriction or sort order the lab cannot evaluate; ``code`` is the EWS response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def header_value(item: StoredItem, name: str) -> str | None:
    """Return the first value of a header of the item, or None."""
    lowered = name.lower()
    for key, value in item.headers:
        if key.lower() == lowered:
            return value
    return None


FIELD_GETTERS: Final[dict[str, Getter]] = {
    "item:Subject": lambda i: i.subject,
    "message:InternetMessageId": lambda i: i.message_id,
    "item:DateTimeReceived": lambda i: i.received,
    "item:DateTimeCreated": lambda i: i.received,
    "item:ItemClass": lambda i: i.item_class,
    "item:Body": lambda i: i.body,
    "item:Size": lambda i: len(i.raw),
    "message:IsRead": lambda i: i.is_read,
    "item:HasAttachments": lambda _i: False,
}
_DATETIME_FIELDS: Final = frozenset({"item:DateTimeReceived", "item:DateTimeCreated"})
_INT_FIELDS: Final = frozenset({"item:Size"})
_BOOL_FIELDS: Final = frozenset({"message:IsRead", "item:HasAttachments"})
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "IsEqualTo": operator.eq, "IsNotEqualTo": operator.ne,
    "IsGreaterThan": operator.gt, "IsGreaterThanOrEqualTo": operator.ge,
    "IsLessThan": operator.lt, "IsLessThanOrEqualTo": operator.le,
}


def field_getter(path: etree._Element) -> tuple[Getter, str]:
    """Return a value getter for a FieldURI or InternetHeaders ExtendedFieldURI, and the path's name."""
    if path.tag == t("FieldURI"):
        uri = path.get("FieldURI", "")
        getter = FIELD_GETTERS.get(uri)
        if getter is None:
            raise RestrictionError("ErrorUnsupportedPathForQuery", f"The lab cannot query {uri!r}.")
        return getter, uri
    if path.tag == t("ExtendedFieldURI") and path.get("DistinguishedPropertySetId") == "InternetHeaders":
        name = path.get("PropertyName", "")
        return (lambda i: header_value(i, name)), f"InternetHeaders:{name}"
    raise RestrictionError("ErrorUnsupportedPathForQuery", "The lab queries FieldURI and InternetHeaders only.")


def _constant(value: str, path_name: str) -> Any:
    if path_name in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            raise RestrictionError("ErrorInvalidValueForProperty", f"{value!r} is not an integer.") from None
    if path_name in _BOOL_FIELDS:
        if value not in ("true", "false"):
            raise RestrictionError("ErrorInvalidValueForProperty", f"{value!r} is not a boolean.")
        return value == "true"
    if path_name not in _DATETIME_FIELDS:
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RestrictionError("ErrorInvalidValueForProperty", f"{value!r} is not a date and time.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _path_of(elem: etree._Element) -> etree._Element:
    path = next((c for c in elem if c.tag in (t("FieldURI"), t("ExtendedFieldURI"), t("IndexedFieldURI"))), None)
    if path is None:
        raise RestrictionError("ErrorInvalidRestriction", f"{etree.QName(elem).localname} needs a field path.")
    return path


def _comparison(elem: etree._Element, compare: Callable[[Any, Any], bool]) -> Predicate:
    getter, name = field_getter(_path_of(elem))
    constant = elem.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    if constant is None:
        raise RestrictionError("ErrorUnsupportedQueryFilter", "The lab compares fields with constants only.")
    wanted = _constant(constant.get("Value", ""), name)

    def check(item: StoredItem) -> bool:
        value = getter(item)
        return value is not None and compare(value, wanted)

    return check


def _contains(elem: etree._Element) -> Predicate:
    getter, _ = field_getter(_path_of(elem))
    constant = elem.find(t("Constant"))
    wanted = "" if constant is None else constant.get("Value", "")
    mode = elem.get("ContainmentMode", "Substring")
    comparison = elem.get("ContainmentComparison", "Exact")
    fold = "IgnoreCase" in comparison or "Loose" in comparison
    if fold:
        wanted = wanted.casefold()
    test: Callable[[str], bool] = {
        "FullString": lambda v: v == wanted, "Prefixed": lambda v: v.startswith(wanted),
    }.get(mode, lambda v: wanted in v)

    def check(item: StoredItem) -> bool:
        value = getter(item)
        if not isinstance(value, str):
            return False
        return test(value.casefold() if fold else value)

    return check


def _exists(elem: etree._Element) -> Predicate:
    getter, _ = field_getter(_path_of(elem))
    return lambda item: getter(item) not in (None, "")


def _combined(parts: list[Predicate], *, every: bool) -> Predicate:
    def check_all(item: StoredItem) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop is faster than all() over 10,000 items
            if not part(item):
                return False
        return True

    def check_any(item: StoredItem) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop is faster than any() over 10,000 items
            if part(item):
                return True
        return False

    return check_all if every else check_any


def compile_restriction(elem: etree._Element) -> Predicate:
    """Compile one search expression element (t:And, t:Contains, ...) into a predicate."""
    name = etree.QName(elem).localname
    children = [c for c in elem if isinstance(c.tag, str)]
    if name in ("And", "Or"):
        return _combined([compile_restriction(c) for c in children], every=name == "And")
    if name == "Not":
        if len(children) != 1:
            raise RestrictionError("ErrorInvalidRestriction", "Not takes exactly one expression.")
        inner = compile_restriction(children[0])
        return lambda item: not inner(item)
    if name in _COMPARISONS:
        return _comparison(elem, _COMPARISONS[name])
    if name == "Contains":
        return _contains(elem)
    if name == "Exists":
        return _exists(elem)
    raise RestrictionError("ErrorUnsupportedQueryFilter", f"The lab does not evaluate {name} restrictions.")


def compile_query_string(text: str) -> Predicate:
    """Compile a small AQS subset: ``subject:WORD`` and bare words (subject or body), case-insensitive."""
    terms: list[tuple[str | None, str]] = []
    for word in text.split():
        field, _, value = word.partition(":") if ":" in word else (None, "", word)
        terms.append((field.lower() if field else None, value.strip('"').casefold()))

    def check(item: StoredItem) -> bool:
        for field, value in terms:
            haystacks = [item.subject] if field == "subject" else [item.subject, item.body]
            if not any(value in h.casefold() for h in haystacks):
                return False
        return True

    return check


def _sort_key(getter: Getter) -> Callable[[StoredItem], tuple[int, Any]]:
    def key(item: StoredItem) -> tuple[int, Any]:
        value = getter(item)
        return (0, "") if value is None else (1, value)

    return key


def sort_items(items: list[StoredItem], sort_order: etree._Element | None) -> list[StoredItem]:
    """Sort items by the request's FieldOrders; newest received first when none is given.

    Items equal under every FieldOrder (two received in the same millisecond) keep delivery order, in the
    direction of the first FieldOrder.
    """
    orders = [] if sort_order is None else list(sort_order.iter(t("FieldOrder")))
    newest_first = not orders or orders[0].get("Order", "Ascending") == "Descending"
    ordered = sorted(items, key=lambda i: (i.received, i.delivered_at), reverse=newest_first)
    for order in reversed(orders):
        path = next((c for c in order if isinstance(c.tag, str)), None)
        if path is None:
            raise RestrictionError("ErrorInvalidRequest", "FieldOrder needs a field path.")
        getter, _ = field_getter(path)
        ordered.sort(key=_sort_key(getter), reverse=order.get("Order", "Ascending") == "Descending")
    return ordered
