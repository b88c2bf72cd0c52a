"""Split a streamed EWS response (GetStreamingEvents) into its SOAP envelopes, a chunk at a time.

exchangelib's ``DocumentYielder`` reads such a response one byte at a time through a Python generator,
which costs about 2 ms of CPU for every notification; this reads whatever the connection delivers
(one HTTP chunk) and finds the envelopes with two regular expressions. Each envelope is returned as
exchangelib's yielder returns it: from its start tag to its end tag, after an XML declaration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

XML_DECLARATION: Final = b"<?xml version='1.0' encoding='utf-8'?>\n"
_START: Final = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Envelope[\s/>]")
_END: Final = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?Envelope\s*>")
_TAG_MAX: Final = 256  # an end tag cut by a chunk boundary is looked for again from this far back


def soap_envelopes(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield each complete SOAP envelope in ``chunks`` as soon as its end tag has arrived."""
    buffer = bytearray()
    scanned = 0  # the end tag is not in buffer[start:scanned - _TAG_MAX]
    for chunk in chunks:
        buffer += chunk
        while True:
            start = _START.search(buffer)
            if start is None:
                del buffer[:max(0, buffer.rfind(b"<"))]  # keep only what could begin a start tag
                scanned = 0
                break
            if start.start():
                del buffer[:start.start()]
                scanned = max(0, scanned - start.start())
            end = _END.search(buffer, max(0, scanned - _TAG_MAX))
            if end is None:
                scanned = len(buffer)
                break
            yield XML_DECLARATION + bytes(buffer[:end.end()])
            del buffer[:end.end()]
            scanned = 0
