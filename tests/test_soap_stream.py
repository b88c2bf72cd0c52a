"""Cutting a streamed EWS response into SOAP envelopes, whatever the chunk boundaries."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

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
