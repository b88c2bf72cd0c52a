"""Cutting a streamed EWS response into SOAP envelopes, whatever the chunk boundaries and the framing."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from probe.mailbox.soap_stream import XML_DECLARATION, soap_envelopes

ONE = (b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>"
       b"<m:GetStreamingEventsResponse>1</m:GetStreamingEventsResponse></s:Body></s:Envelope>")
TWO = ONE.replace(b">1<", b">2<")
STREAM = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n" + ONE + b"\r\n<?xml version=\"1.0\"?>" + TWO


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_each_envelope_comes_out_whole_after_an_xml_declaration() -> None:
    """Two notifications in one chunk come out as two documents, each as exchangelib's yielder gives them."""
    assert list(soap_envelopes([STREAM])) == [XML_DECLARATION + ONE, XML_DECLARATION + TWO]


def test_a_byte_at_a_time_gives_the_same_envelopes() -> None:
    """The stream read one byte per chunk (what exchangelib itself does) gives the same documents."""
    assert list(soap_envelopes(STREAM[i:i + 1] for i in range(len(STREAM)))) == [XML_DECLARATION + ONE,
                                                                               XML_DECLARATION + TWO]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_chunk_boundaries_never_change_the_envelopes(points: list[int]) -> None:
    """Wherever the connection splits the stream (inside a tag, a name, a declaration), the documents are the same."""
    assert list(soap_envelopes(_cut(STREAM, points))) == [XML_DECLARATION + ONE, XML_DECLARATION + TWO]


def test_an_envelope_is_yielded_as_soon_as_its_end_tag_arrives() -> None:
    """The first notification is handed over before the second has started: nothing waits for more data."""
    chunks = iter([ONE[:40], ONE[40:], b"\r\n" + TWO[:10]])
    documents = soap_envelopes(chunks)
    assert next(documents) == XML_DECLARATION + ONE
    assert list(documents) == []  # the cut-off second one is never yielded half


def test_envelopes_without_a_prefix_or_with_another_one_are_found() -> None:
    """``<Envelope>``, ``<soap:Envelope ...>`` and ``<s:Envelope>`` all start a document; look-alikes do not."""
    plain = b"<Envelope><Body/></Envelope>"
    other = b"<soap:Envelope xmlns:soap=\"x\"><soap:Body/></soap:Envelope>"
    fake = b"<EnvelopeX>noise</EnvelopeX>"
    assert list(soap_envelopes([fake, plain, other])) == [XML_DECLARATION + plain, XML_DECLARATION + other]


def test_bytes_outside_any_envelope_are_skipped() -> None:
    """Keep-alive whitespace and junk between notifications are skipped; an unfinished envelope is not yielded."""
    junk = [b"\r\n" * 1000, b"garbage with no tags " * 100, ONE, b"<s:Envelope><s:Body>"]
    assert list(soap_envelopes(junk)) == [XML_DECLARATION + ONE]


# Exchange 2013-2019 framing: an unprefixed Envelope with soap11:-prefixed Header and Body, one after another,
# with no XML declaration. The notification is Microsoft's documented one; the keep-alive and the closing
# message are shaped as Exchange writes them.
S_NS = "http://schemas.xmlsoap.org/soap/envelope/"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
DOCUMENTED = Path(__file__).resolve().parent / "data" / "ews" / "examples" / "GetStreamingEvents.response.xml"
_VERSION = ('<ServerVersionInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" MajorVersion="15" MinorVersion="1" '
            'MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11" '
            'xmlns="http://schemas.microsoft.com/exchange/services/2006/types"/>')


def _exchange(status: str) -> bytes:
    return (f'<Envelope xmlns="{S_NS}"><soap11:Header xmlns:soap11="{S_NS}">{_VERSION}</soap11:Header>'
            f'<soap11:Body xmlns:soap11="{S_NS}"><m:GetStreamingEventsResponse '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>'
            '<m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f'<m:ConnectionStatus>{status}</m:ConnectionStatus></m:GetStreamingEventsResponseMessage>'
            '</m:ResponseMessages></m:GetStreamingEventsResponse></soap11:Body></Envelope>').encode()


def _documented_notification() -> bytes:
    root = etree.parse(str(DOCUMENTED), etree.XMLParser(remove_comments=True, remove_blank_text=True)).getroot()
    return bytes(etree.tostring(root))


NOTIFICATION = _documented_notification()
KEEPALIVE = _exchange("OK")
CLOSED = _exchange("Closed")


def _new_mail_events(document: bytes) -> int:
    return sum(1 for e in etree.fromstring(document).iter() if e.tag == f"{{{T_NS}}}NewMailEvent")


def test_exchange_envelopes_are_found_without_declarations_or_prefixes() -> None:
    """Exchange's unprefixed Envelopes with soap11: parts, back to back in one chunk, come out one by one."""
    assert NOTIFICATION.startswith(b'<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/">')
    stream = KEEPALIVE + NOTIFICATION + KEEPALIVE + CLOSED
    documents = list(soap_envelopes([stream]))
    assert documents == [XML_DECLARATION + e for e in (KEEPALIVE, NOTIFICATION, KEEPALIVE, CLOSED)]
    roots = [etree.fromstring(d) for d in documents]
    assert {r.tag for r in roots} == {f"{{{S_NS}}}Envelope"}
    assert [r[1].tag for r in roots] == [f"{{{S_NS}}}Body"] * 4  # soap11:Body is the SOAP Body
    assert [_new_mail_events(d) for d in documents] == [0, 1, 0, 0]


@given(st.lists(st.sampled_from(["notification", "keepalive"]), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0, max_value=100_000), max_size=60))
def test_exchange_streams_cut_anywhere_give_the_same_envelopes(kinds: list[str], points: list[int]) -> None:
    """Any sequence of Exchange-framed notifications, cut anywhere (inside a tag, several per chunk), gives the
    same envelopes in order, each parsing to the same events."""
    sent = [NOTIFICATION if k == "notification" else KEEPALIVE for k in kinds] + [CLOSED]
    documents = list(soap_envelopes(_cut(b"".join(sent), points)))
    assert documents == [XML_DECLARATION + e for e in sent]
    assert sum(_new_mail_events(d) for d in documents) == kinds.count("notification")


def test_an_exchange_envelope_split_across_chunks_waits_for_its_end() -> None:
    """An envelope whose end has not arrived is not yielded; it is, whole, as soon as the end tag arrives."""
    cut = len(NOTIFICATION) - len(b"</Envelope>") + 3  # inside the end tag
    documents = soap_envelopes(iter([KEEPALIVE + NOTIFICATION[:cut], NOTIFICATION[cut:]]))
    assert next(documents) == XML_DECLARATION + KEEPALIVE
    assert next(documents) == XML_DECLARATION + NOTIFICATION
