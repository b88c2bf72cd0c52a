"""EWS test support: schema validation of responses (tests/data/ews/schema) and a standalone endpoint."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from probe.lab.ca import LabCA
from probe.lab.ews import EwsServer, add_response_observer, remove_response_observer
from probe.lab.faults import EwsFault, FaultRegistry
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.lab.transport import RecordedNotices, SourceTransport

# Microsoft's EWS schema (its origin: tests/data/ews/schema/README.md)
SCHEMA_DIR = Path(__file__).resolve().parent / "data" / "ews" / "schema"
EWS_NAMESPACES = frozenset({
    "http://schemas.microsoft.com/exchange/services/2006/messages",
    "http://schemas.microsoft.com/exchange/services/2006/types",
})
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"


_SCHEMA_LOCK = threading.Lock()


@functools.cache
def _load_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "messages.xsd")))


def _schema() -> etree.XMLSchema:
    """Return the parsed schema, parsing it once: lxml fails ("Internal error") when threads parse it at once."""
    with _SCHEMA_LOCK:
        return _load_schema()


def _parts(root: etree._Element) -> list[etree._Element]:
    parts: list[etree._Element] = []
    for section in ("Header", "Body"):
        container = root.find(f"{{{SOAP_NS}}}{section}")
        if container is not None:
            parts.extend(c for c in container if isinstance(c.tag, str))
    return parts


def problems(payload: bytes) -> list[str]:
    """Return what is wrong with one envelope: each EWS part of s:Header and s:Body is validated on its own.

    A s:Fault is SOAP's own element, not in messages.xsd: its detail/t:MessageXml is checked for shape instead.
    """
    root = etree.fromstring(payload)
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        return [f"not a SOAP envelope: {root.tag}"]
    found: list[str] = []
    schema = _schema()
    for part in _parts(root):
        if etree.QName(part).namespace in EWS_NAMESPACES:
            if not schema.validate(_schema_form(part)):
                found.extend(f"{etree.QName(part).localname}: {e.message}" for e in schema.error_log)
        elif part.tag == f"{{{SOAP_NS}}}Fault":
            found.extend(_fault_problems(part))
        else:
            found.append(f"unexpected part {part.tag}")
    if root.find(f"{{{SOAP_NS}}}Header/{{{TYPES_NS}}}ServerVersionInfo") is None:
        found.append("s:Header lacks t:ServerVersionInfo")
    return found


def _schema_form(part: etree._Element) -> etree._Element:
    """Return the part with Exchange's one known departure from its own schema put back in the schema's form.

    Exchange 2013-2019 write a streamed notification as ``m:Notifications/m:Notification`` (Microsoft's
    GetStreamingEvents example; the EWS Managed API reads it only so), where messages.xsd declares
    ``t:Notification``; everything else of the response is validated as it is.
    """
    streamed = part.findall(f"{{{MESSAGES_NS}}}ResponseMessages/*/{{{MESSAGES_NS}}}Notifications/"
                            f"{{{MESSAGES_NS}}}Notification")
    if not streamed:
        return part
    copy = etree.fromstring(etree.tostring(part))
    for notification in copy.iterfind(f".//{{{MESSAGES_NS}}}Notifications/{{{MESSAGES_NS}}}Notification"):
        notification.tag = f"{{{TYPES_NS}}}Notification"
    return copy


def _fault_problems(fault: etree._Element) -> list[str]:
    found = [f"Fault lacks {name}" for name in ("faultcode", "faultstring") if fault.find(name) is None]
    detail = fault.find("detail")
    if detail is None:
        return [*found, "Fault lacks detail"]
    code = detail.findtext("{http://schemas.microsoft.com/exchange/services/2006/errors}ResponseCode")
    if not code:
        found.append("Fault detail lacks e:ResponseCode")
    return found


# A standalone EWS endpoint for tests, without the Lab: store, faults, stats, a lab CA and the server.

FOREST = "fourthcoffee.test"
MAILBOX = "mailflow.probe@fourthcoffee.test"
PASSWORD = "Lab-Passw0rd!"
USERS = {"FOURTHCOFFEE\\svc-mailflow": PASSWORD, "svc-mailflow@fourthcoffee.test": PASSWORD}


@dataclass
class StandaloneEws:
    """One EWS endpoint on loopback with everything it needs, and what it answered."""

    server: EwsServer
    store: MailboxStore
    faults: FaultRegistry
    stats: LabStats
    ca_file: Path
    responses: list[tuple[bytes, str]] = field(default_factory=list)
    notices: RecordedNotices = field(default_factory=RecordedNotices)  # the NDRs its transport owes senders

    def schema_problems(self) -> list[str]:
        """Return every schema problem of every response seen so far."""
        return [f"{op}: {p}" for body, op in self.responses for p in problems(body)]


@contextlib.contextmanager
def standalone_ews(directory: Path) -> Iterator[StandaloneEws]:
    """Run an EWS endpoint (HTTPS and HTTP) for one mailbox, collecting every response it sends."""
    faults = FaultRegistry()

    def clock(_forest: str) -> float:
        offset = faults.find(f"ews/{FOREST}", EwsFault.CLOCK_OFFSET)
        return time.time() + ((offset.seconds or 0.0) if offset is not None else 0.0)

    store = MailboxStore(clock)
    store.add_mailbox(MAILBOX, FOREST)
    ca = LabCA(directory / "ca")
    stats = LabStats()
    server = EwsServer(FOREST, store=store, faults=faults, stats=stats, users=USERS, host="127.0.0.1",
                       ssl_context=ca.issue("ews", ["127.0.0.1"]).server_context())
    env = StandaloneEws(server, store, faults, stats, ca.ca_file)
    # the forest's transport without Send connectors: its own mailbox gets what it sends, anything else an NDR
    transport = SourceTransport(forest=FOREST, domain=FOREST, fqdn=f"mail.{FOREST}", address="127.0.0.1",
                                connectors=(), store=store, faults=faults, stats=stats, ca_file=ca.ca_file,
                                notify=env.notices)
    server.outbox = transport

    def observe(body: bytes, operation: str) -> None:
        env.responses.append((body, operation))

    add_response_observer(observe)
    server.start()
    transport.start()
    try:
        yield env
    finally:
        transport.stop()
        server.stop()
        remove_response_observer(observe)


def message(subject: str, *, message_id: str, tag: str = "", sender: str = "probe@contoso.test") -> bytes:
    """Return a raw RFC 5322 message with CRLF line ends."""
    lines = [f"From: Probe <{sender}>", f"To: {MAILBOX}", f"Subject: {subject}",
             "Date: Sat, 28 Nov 2026 09:00:00 +0000", f"Message-ID: {message_id}"]
    if tag:
        lines.append(f"X-Probe-Tag: {tag}")
    lines += ["Received: from fc-edge-1 by mailbox; Sat, 28 Nov 2026 09:00:01 +0000", "", "probe body", ""]
    return "\r\n".join(lines).encode()
