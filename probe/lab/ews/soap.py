"""SOAP envelopes as Exchange 2019 writes them: ServerVersionInfo header, response messages and faults."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from lxml import etree

S_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
M_NS: Final = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS: Final = "http://schemas.microsoft.com/exchange/services/2006/types"
E_NS: Final = "http://schemas.microsoft.com/exchange/services/2006/errors"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD_NS: Final = "http://www.w3.org/2001/XMLSchema"
NSMAP: Final = {"s": S_NS, "m": M_NS, "t": T_NS}
SERVER_VERSION: Final = {
    "MajorVersion": "15", "MinorVersion": "2", "MajorBuildNumber": "1544", "MinorBuildNumber": "4",
    "Version": "V2017_07_11",
}
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                                 remove_blank_text=True)


class SoapFault(Exception):  # noqa: N818 - named for what Exchange sends: a SOAP Fault
    """A request that ends in a SOAP Fault instead of a response message."""

    def __init__(self, code: str, message: str, *, http_status: int = 500,
                 back_off_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.back_off_ms = back_off_ms


def m(tag: str) -> str:
    """Return the Clark name of a tag in the messages namespace."""
    return f"{{{M_NS}}}{tag}"


def t(tag: str) -> str:
    """Return the Clark name of a tag in the types namespace."""
    return f"{{{T_NS}}}{tag}"


def clean(text: str) -> str:
    """Drop the characters XML 1.0 cannot carry."""
    return _XML_INVALID.sub("", text)


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    """Append a child element with optional text and attributes."""
    child = etree.SubElement(parent, tag, {k: clean(v) for k, v in attrs.items()})
    if text is not None:
        child.text = clean(text)
    return child


def parse_envelope(data: bytes) -> tuple[etree._Element | None, etree._Element]:
    """Return the SOAP header (or None) and the operation element of a request, or raise SoapFault."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapFault("ErrorInvalidRequest", f"The request is not well-formed XML: {exc}") from None
    if root.tag != f"{{{S_NS}}}Envelope":
        raise SoapFault("ErrorInvalidRequest", "The request is not a SOAP 1.1 envelope.")
    header, body = root.find(f"{{{S_NS}}}Header"), root.find(f"{{{S_NS}}}Body")
    operations = [] if body is None else [c for c in body if isinstance(c.tag, str)]
    if len(operations) != 1:
        raise SoapFault("ErrorInvalidRequest", "The SOAP body must hold exactly one operation.")
    return header, operations[0]


def wants_milliseconds(header: etree._Element | None) -> bool:
    """Say whether the request's SOAP header asks for DateTimePrecision Milliseconds."""
    if header is None:
        return False
    precision = header.find(t("DateTimePrecision"))
    return precision is not None and (precision.text or "").strip() == "Milliseconds"


def format_datetime(value: datetime, *, milliseconds: bool) -> str:
    """Format a stamp as Exchange does: whole seconds, or milliseconds when asked."""
    value = value.astimezone(UTC)
    if milliseconds:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(body_child: etree._Element) -> bytes:
    """Wrap one body element in an envelope with ServerVersionInfo and serialise it."""
    root = etree.Element(f"{{{S_NS}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(root, f"{{{S_NS}}}Header")
    etree.SubElement(header, t("ServerVersionInfo"), SERVER_VERSION)
    body = etree.SubElement(root, f"{{{S_NS}}}Body")
    body.append(body_child)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def streaming_envelope(body_child: etree._Element) -> bytes:
    """Serialise one notification of a GetStreamingEvents stream the way Exchange 2013-2019 write it.

    ``<Envelope xmlns="...soap/envelope/">`` with ``soap11:``-prefixed Header and Body, each declaring the
    prefix itself, and no XML declaration: the notifications of one response follow each other directly.
    """
    version = etree.Element(t("ServerVersionInfo"), SERVER_VERSION, nsmap={None: T_NS, "xsd": XSD_NS, "xsi": XSI_NS})
    return b"".join((
        f'<Envelope xmlns="{S_NS}"><soap11:Header xmlns:soap11="{S_NS}">'.encode(),
        etree.tostring(version, encoding="utf-8"),
        f'</soap11:Header><soap11:Body xmlns:soap11="{S_NS}">'.encode(),
        etree.tostring(body_child, encoding="utf-8"),
        b"</soap11:Body></Envelope>",
    ))


def fault_envelope(fault: SoapFault) -> bytes:
    """Serialise a SOAP Fault the way Exchange shapes it, with ResponseCode and MessageXml in detail."""
    root = etree.Element(f"{{{S_NS}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(root, f"{{{S_NS}}}Header")
    etree.SubElement(header, t("ServerVersionInfo"), SERVER_VERSION)
    body = etree.SubElement(root, f"{{{S_NS}}}Body")
    node = etree.SubElement(body, f"{{{S_NS}}}Fault")
    code = etree.SubElement(node, "faultcode", nsmap={"a": E_NS})
    code.text = f"a:{fault.code}"
    sub(node, "faultstring", fault.message)
    detail = etree.SubElement(node, "detail")
    etree.SubElement(detail, f"{{{E_NS}}}ResponseCode", nsmap={"e": E_NS}).text = fault.code
    etree.SubElement(detail, f"{{{E_NS}}}Message", nsmap={"e": E_NS}).text = clean(fault.message)
    if fault.back_off_ms is not None:
        xml = sub(detail, t("MessageXml"))
        sub(xml, t("Value"), str(fault.back_off_ms), Name="BackOffMilliseconds")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def response(operation: str) -> tuple[etree._Element, etree._Element]:
    """Return a ``m:<Op>Response`` element and its ``m:ResponseMessages`` container."""
    root = etree.Element(m(f"{operation}Response"), nsmap={"xsd": XSD_NS, "xsi": XSI_NS, "m": M_NS, "t": T_NS})
    return root, sub(root, m("ResponseMessages"))


def success(messages: etree._Element, operation: str) -> etree._Element:
    """Append a Success response message with NoError and return it."""
    msg = sub(messages, m(f"{operation}ResponseMessage"), ResponseClass="Success")
    sub(msg, m("ResponseCode"), "NoError")
    return msg


def error(messages: etree._Element, operation: str, code: str, text: str) -> etree._Element:
    """Append an Error response message with its code and text, and return it."""
    msg = sub(messages, m(f"{operation}ResponseMessage"), ResponseClass="Error")
    sub(msg, m("MessageText"), text)
    sub(msg, m("ResponseCode"), code)
    sub(msg, m("DescriptiveLinkKey"), "0")
    return msg
