"""Every place the EWS backend reaches past the public API of exchangelib and requests, fenced in one module.

exchangelib 5.6 cannot do four things the probe needs: ask for and read millisecond receipt stamps, say
which folder a FindItem over several folders found an item in, give each mailbox a protocol of its own
(CA, timeout, a clock fed by every response), and read responses without a Python generator step per byte.
The overrides below do them, each on a private part of exchangelib or requests, with why it exists and
what it was measured to buy (docs/benchmarks.md, "What changed"). ``INTERNALS`` lists every private part
relied on; tests/test_ews_internals.py checks each against the installed versions, so an upgrade that
renames or reshapes one fails there, by name, instead of quietly changing what the probe reports.

Private names are looked up when used, never at import: a renamed one breaks the EWS operation that
needs it (a search or a watch fails and is reported as such), not every module that imports this one.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import exchangelib.util
import requests
from exchangelib import Account, Configuration
from exchangelib.protocol import Protocol
from exchangelib.services import FindItem, GetFolder, GetItem, GetStreamingEvents
from exchangelib.util import SOAPNS, TNS
from lxml import etree

from probe.mailbox.soap_stream import soap_envelopes

FOLDER_ATTR: Final = "probe-folder"  # set on each FindItem result element: the folder id it was found in


# -- millisecond stamps and raw items (FindItem, GetItem) ---------------------------------------------

def with_precision(envelope: bytes) -> bytes:
    """Add ``<t:DateTimePrecision>Milliseconds</t:DateTimePrecision>`` to a SOAP envelope's header."""
    root = etree.fromstring(envelope)  # our own request
    header = root.find(f"{{{SOAPNS}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAPNS}}}Header")
        root.insert(0, header)
    etree.SubElement(header, f"{{{TNS}}}DateTimePrecision").text = "Milliseconds"
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
    return result


class FindTagged(FindItem):  # type: ignore[misc]
    """FindItem asking for millisecond stamps, yielding each item's XML element labelled with its folder.

    ``wrap``: Exchange stamps DateTimeReceived in whole seconds unless the request carries the
    DateTimePrecision header, which exchangelib 5.6 never sends; with it, a receipt is known to +-0.010 s
    instead of +-0.52 s (bench/ews_internals.py, 200 probes). ``_elem_to_obj``: exchangelib 5.6 turns a
    fractional-second UTC stamp into None, so items are returned as XML for the backend to read.
    ``_get_pages``/``_get_elems_from_page``: one FindItem covers Inbox and Junk, but exchangelib does not say
    which folder an item came from (a verdict's detail does); each page is labelled with its folder, and
    each item with its page's. Without them, a search would need a FindItem per folder: twice as many.
    """

    def wrap(self, content: Any, api_version: Any = None) -> bytes:
        """Return the request envelope with the DateTimePrecision header."""
        return with_precision(super().wrap(content, api_version=api_version))

    def _get_pages(self, payload_func: Any, kwargs: dict[str, Any], expected_message_count: int) -> Any:
        pages = super()._get_pages(payload_func, kwargs, expected_message_count)
        for (page, _next), folder in zip(pages, list(kwargs["folders"]), strict=False):
            if page is not None and not isinstance(page, Exception):
                page.set(FOLDER_ATTR, str(folder.id))
        return pages

    def _get_elems_from_page(self, elem: Any, max_items: Any, total_item_count: int) -> Iterator[Any]:
        folder = elem.get(FOLDER_ATTR, "")
        for item in super()._get_elems_from_page(elem, max_items, total_item_count):
            item.set(FOLDER_ATTR, folder)
            yield item

    def _elem_to_obj(self, elem: Any) -> Any:
        return elem


class GetRaw(GetItem):  # type: ignore[misc]
    """GetItem asking for millisecond stamps, yielding each item's XML element (see FindTagged)."""

    def wrap(self, content: Any, api_version: Any = None) -> bytes:
        """Return the request envelope with the DateTimePrecision header."""
        return with_precision(super().wrap(content, api_version=api_version))

    def _elem_to_obj(self, elem: Any) -> Any:
        return elem


class PingFolder(GetFolder):  # type: ignore[misc]
    """GetFolder yielding the raw response elements: a clock calibration request, wanted only for its HTTP Date.

    ``_elems_to_objs``: nothing of the reply is parsed into Folder objects (a calibration sends about five).
    """

    def _elems_to_objs(self, elems: Iterable[Any]) -> Iterator[Any]:
        yield from elems


# -- new-mail notifications (GetStreamingEvents) ------------------------------------------------------

class NewMailEvents(GetStreamingEvents):  # type: ignore[misc]
    """GetStreamingEvents yielding the number of NewMail events in each notification.

    ``_get_soap_messages``: exchangelib cuts the stream into envelopes with ``DocumentYielder(
    response.iter_content())``, one byte per generator step (2.48 ms CPU per probe in the two streaming
    threads, bench/threads.py); here the envelopes are cut out a chunk at a time (soap_stream), 0.52 ms; each
    is parsed and checked by exchangelib as its own GetStreamingEvents does (``_get_soap_parts`` and
    ``_get_soap_messages`` of EWSService, ``DummyResponse``, ``connection_status``). ``_elem_to_obj``:
    only the count of NewMail events is wanted, not exchangelib's Notification objects.
    """

    def _elem_to_obj(self, elem: Any) -> int:
        return sum(1 for e in elem.iter() if isinstance(e.tag, str) and e.tag.endswith("}NewMailEvent"))

    def _get_soap_messages(self, body: Any) -> Iterator[Any]:
        response = body  # the raw streaming response, as GetStreamingEvents._get_soap_parts passes it on
        # without chunked transfer coding only a byte at a time is sure not to wait past a notification
        chunks = response.iter_content(chunk_size=None if getattr(response.raw, "chunked", False) else 1)
        dummy_response = getattr(exchangelib.util, "DummyResponse", None)
        for document in soap_envelopes(chunks):
            try:
                _, soap_body = super(GetStreamingEvents, self)._get_soap_parts(
                    response=dummy_response(content=document))  # type: ignore[misc]
            except Exception:
                response.close()
                raise
            yield from super(GetStreamingEvents, self)._get_soap_messages(body=soap_body)
            if self.connection_status == self.CLOSED:
                break


def streaming_response(service: NewMailEvents) -> Any:
    """Return the open HTTP response of a streaming service, or None.

    ``_streaming_response``: a watch is "connected" while it is set, and stopping a watch shuts its socket
    down, which wakes the thread blocked reading it at once (closing the response does not).
    """
    return getattr(service, "_streaming_response", None)


# -- responses read whole (requests) ------------------------------------------------------------------

class WholeResponse(requests.Response):
    """A response that hands a body it has already read to ``iter_content`` in one piece.

    exchangelib parses every response from ``iter_content()``, whose default is one byte per chunk: a
    Python generator step for each byte of every FindItem, GetItem and DeleteItem reply. A body read already
    (requests' ``_content``, ``_content_consumed``) goes over whole; a streamed one is iterated as asked.
    Mailbox watcher CPU per probe at 500 pairs: 2.3 -> 1.35 ms (525f32e); one search finding 200 probes:
    311 -> 71 ms of the searching thread's CPU (bench/ews_internals.py).
    """

    def iter_content(self, chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
        """Yield the body: whole when it has been read, else as requests would."""
        body = getattr(self, "_content", None)
        if getattr(self, "_content_consumed", False) and isinstance(body, bytes) and not decode_unicode:
            return iter((body,) if body else ())
        return super().iter_content(chunk_size=chunk_size, decode_unicode=decode_unicode)


def read_whole(response: requests.Response) -> requests.Response:
    """Make ``response`` (the same object) a WholeResponse: swapping ``__class__`` keeps every attribute."""
    response.__class__ = WholeResponse
    return response


# -- a protocol of the mailbox's own (exchangelib's protocol cache) -----------------------------------

class ProbeProtocol(Protocol):  # type: ignore[misc]
    """A protocol of one mailbox: its own sessions, adapter and timeout, outside exchangelib's cache.

    exchangelib caches one Protocol per (endpoint, credentials) for the whole process, with a class-wide
    TIMEOUT and its own HTTP adapter: two mailboxes of one server would share a CA, timeout and clock.
    ``create_session`` mounts this mailbox's adapter (its CA, its timeout, every response's Date fed to
    its clock offset); ``TIMEOUT`` is set on the instance, where exchangelib reads it.
    """

    def __init__(self, *, config: Configuration, adapter: Callable[[], requests.adapters.HTTPAdapter],
                 timeout: float) -> None:
        super().__init__(config=config)
        self._make_adapter = adapter
        self.TIMEOUT = timeout  # read by exchangelib as self.protocol.TIMEOUT; the class default stays

    def create_session(self) -> Any:
        """Return exchangelib's session with this mailbox's adapter mounted on the endpoint."""
        session = super().create_session()
        session.mount(self.service_endpoint, self._make_adapter())
        return session


def own_protocol(account: Account, *, config: Configuration,
                 adapter: Callable[[], requests.adapters.HTTPAdapter], timeout: float) -> None:
    """Give ``account`` a ProbeProtocol of its own, and drop the cached one that ``Account()`` made.

    ``del Protocol[config]`` (CachingProtocol.__delitem__) takes the default protocol out of exchangelib's
    cache; ``type.__call__`` makes the mailbox's own without going through the caching metaclass's
    ``__call__``; ``Account.protocol`` is a plain attribute, replaced.
    """
    cached = account.protocol
    with contextlib.suppress(KeyError):
        del Protocol[config]
    cached.close()
    account.protocol = type.__call__(ProbeProtocol, config=config, adapter=adapter, timeout=timeout)


# -- the list of every internal relied on, checked by tests/test_ews_internals.py --------------------

@dataclass(frozen=True, kw_only=True)
class Internal:
    """One private part of exchangelib or requests this module relies on, and how to see it is still there.

    ``parameters``: the callable's parameter names, in order (None: not checked); ``assigned_in``: a
    callable whose source must assign ``self.<last part of path>`` (an instance attribute).
    """

    path: str  # module:qualified.name
    why: str
    parameters: tuple[str, ...] | None = None
    assigned_in: str | None = None  # module:qualified.name of the callable that sets the instance attribute

    def problem(self) -> str | None:
        """Return what is wrong with this internal in the installed version, or None when it is as expected."""
        if self.assigned_in is not None:
            return _assignment_problem(self.assigned_in, self.path.rpartition(".")[2])
        try:
            found = resolve(self.path)
        except (ImportError, AttributeError) as exc:
            return f"not found ({type(exc).__name__}: {exc})"
        if self.parameters is None:
            return None
        try:
            names = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError) as exc:
            return f"has no signature ({exc})"
        return None if names == self.parameters else f"parameters are {names}, expected {self.parameters}"


def resolve(path: str) -> Any:
    """Return the object at ``module:qualified.name``."""
    module_name, _, qualified = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualified.split("."):
        found = getattr(found, part)
    return found


def _assignment_problem(where: str, attribute: str) -> str | None:
    try:
        source = inspect.getsource(resolve(where))
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        return f"cannot read {where} ({type(exc).__name__}: {exc})"
    return None if f"self.{attribute} =" in source else f"{where} no longer sets self.{attribute}"


_COMMON: Final = "exchangelib.services.common"
_STREAMING: Final = "exchangelib.services.get_streaming_events:GetStreamingEvents"
_SEND: Final = ("self", "request", "stream", "timeout", "verify", "cert", "proxies")

INTERNALS: Final[tuple[Internal, ...]] = (
    Internal(path=f"{_COMMON}:EWSService.wrap", parameters=("self", "content", "api_version"),
             why="FindTagged/GetRaw add the DateTimePrecision header: millisecond receipt stamps"),
    Internal(path=f"{_COMMON}:EWSService._elem_to_obj", parameters=("self", "elem"),
             why="FindTagged/GetRaw/NewMailEvents return XML (5.6 reads a fractional stamp as None)"),
    Internal(path=f"{_COMMON}:EWSService._elems_to_objs", parameters=("self", "elems"),
             why="PingFolder parses nothing of a calibration reply"),
    Internal(path=f"{_COMMON}:EWSPagingService._get_pages",
             parameters=("self", "payload_func", "kwargs", "expected_message_count"),
             why="FindTagged labels each page with its folder (one FindItem for Inbox and Junk)"),
    Internal(path=f"{_COMMON}:EWSPagingService._get_elems_from_page",
             parameters=("self", "elem", "max_items", "total_item_count"),
             why="FindTagged labels each item with its page's folder"),
    Internal(path=f"{_COMMON}:EWSService._get_soap_parts", parameters=("response",),
             why="NewMailEvents parses each envelope it cut out of the stream as exchangelib does"),
    Internal(path=f"{_COMMON}:EWSService._get_soap_messages", parameters=("self", "body"),
             why="NewMailEvents overrides GetStreamingEvents' and calls EWSService's on each envelope"),
    Internal(path="exchangelib.util:DummyResponse", parameters=(
        "url", "headers", "request_headers", "content", "status_code", "streaming", "history"),
             why="NewMailEvents hands each envelope to _get_soap_parts as a response"),
    Internal(path=f"{_STREAMING}.connection_status", assigned_in=f"{_STREAMING}.__init__",
             why="NewMailEvents stops reading when the server closes the stream"),
    Internal(path=f"{_STREAMING}.CLOSED", why="NewMailEvents compares connection_status with it"),
    Internal(path=f"{_COMMON}:EWSService._streaming_response", assigned_in=f"{_COMMON}:EWSService.__init__",
             why="a watch is connected while it is set; stopping a watch shuts its socket down"),
    Internal(path="exchangelib.protocol:CachingProtocol.__delitem__", parameters=("cls", "config"),
             why="own_protocol drops the protocol Account() put in the cache"),
    Internal(path="exchangelib.protocol:CachingProtocol.__call__", parameters=("cls", "args", "kwargs"),
             why="own_protocol bypasses it with type.__call__ (a protocol outside the cache)"),
    Internal(path="exchangelib.protocol:BaseProtocol.create_session", parameters=("self",),
             why="ProbeProtocol mounts the mailbox's own adapter (CA, timeout, clock) on each session"),
    Internal(path="exchangelib.protocol:BaseProtocol.TIMEOUT",
             why="ProbeProtocol sets the mailbox's timeout on the instance"),
    Internal(path="exchangelib.account:Account.protocol", assigned_in="exchangelib.account:Account.__init__",
             why="own_protocol replaces the account's protocol (a plain attribute)"),
    Internal(path="requests.models:Response._content", assigned_in="requests.models:Response.__init__",
             why="WholeResponse hands a body already read to exchangelib's parser whole"),
    Internal(path="requests.models:Response._content_consumed", assigned_in="requests.models:Response.__init__",
             why="WholeResponse tells a body already read from a streamed one"),
    Internal(path="requests.models:Response.iter_content", parameters=("self", "chunk_size", "decode_unicode"),
             why="WholeResponse overrides it; read_whole swaps a response's __class__ to it"),
    Internal(path="urllib3.response:BaseHTTPResponse.chunked",
             assigned_in="urllib3.response:BaseHTTPResponse.__init__",
             why="NewMailEvents reads a chunked stream a chunk at a time, else a byte at a time"),
    Internal(path="requests.adapters:HTTPAdapter.send", parameters=_SEND,
             why="the mailbox's adapter overrides it: its CA and timeout, every response's Date to the clock"),
)
