"""The probe's EWS watcher on Exchange's stream framing, however the network cuts the stream.

The lab writes notifications as Exchange 2013-2019 do (``<Envelope xmlns=...>`` with ``soap11:`` Header and
Body, no XML declarations); here it also cuts the chunked stream at random places (inside envelopes, several
in one chunk), and closes each stream after a short ConnectionTimeout so that the watcher reopens it.
The whole watcher (EwsMailbox.watch: exchangelib, soap_stream, the reconnect loop) must hear each new
message once, and nothing else.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from probe.config import EwsConfig, MailboxConfig
from probe.lab.ews.chunking import Chunking, EnvelopePerChunk, RandomCuts
from probe.mailbox.ews import EwsMailbox
from probe.secret import Secret
from tests.ews_schema import FOREST, MAILBOX, PASSWORD, StandaloneEws, message, standalone_ews

KEY = b"w" * 32
DELIVERIES = 6
WAIT = 15.0


def _chunking(seed: int | None) -> Callable[[], Chunking]:
    if seed is None:
        return EnvelopePerChunk
    return lambda: RandomCuts(seed)


def _mailbox(env: StandaloneEws) -> EwsMailbox:
    ews = EwsConfig(url=str(env.server.https_url), username="FOURTHCOFFEE\\svc-mailflow",
                    password=Secret(PASSWORD), auth="ntlm", ca_file=env.ca_file, version="15.2.1544.4", timeout=5.0)
    return EwsMailbox(MailboxConfig(name=FOREST, address=MAILBOX, backend=ews), key=KEY)


def _wait_for_streams(env: StandaloneEws, count: int) -> None:
    """Wait until the watcher has opened ``count`` GetStreamingEvents requests in all."""
    give_up = time.monotonic() + WAIT
    while env.stats.ews_requests("GetStreamingEvents") < count:
        assert time.monotonic() < give_up, "the watcher did not (re)open its stream"
        time.sleep(0.01)


@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4, 5], ids=lambda s: "whole" if s is None else f"cut-{s}")
def test_the_watcher_hears_each_new_mail_however_the_stream_is_cut(tmp_path: Path, seed: int | None) -> None:
    """Each delivery, on a freshly reopened Exchange-framed stream cut anywhere, is heard once and only once."""
    with standalone_ews(tmp_path) as env:
        env.server.subscriptions.keepalive_seconds = 0.05
        env.server.subscriptions.minute_seconds = 0.3  # each stream ends (Closed) after 0.3 s and is reopened
        env.server.stream_chunking = _chunking(seed)
        heard: queue.Queue[float] = queue.Queue()
        box = _mailbox(env)
        watch = box.watch(heard.put)
        try:
            for n in range(DELIVERIES):
                _wait_for_streams(env, env.stats.ews_requests("GetStreamingEvents") + 1)
                before = time.time()
                env.store.deliver(MAILBOX, message(f"watched {n}", message_id=f"<watched-{n}@probe>"))
                assert heard.get(timeout=WAIT) >= before, watch.last_error
            _wait_for_streams(env, env.stats.ews_requests("GetStreamingEvents") + 2)
        finally:
            watch.stop()
            box.close()
        assert heard.empty()
        assert watch.last_error is None
        assert env.schema_problems() == []


def test_random_cuts_keep_every_byte_in_order() -> None:
    """The lab's random cutting only moves chunk boundaries: the bytes written are the stream's, in order."""
    envelopes = [f"<Envelope>{n}</Envelope>".encode() * (n + 1) for n in range(50)]
    for seed in range(20):
        cutter = RandomCuts(seed, pause=0.0)
        chunks = [c for e in envelopes for c in cutter.cut(e)] + cutter.rest()
        assert b"".join(chunks) == b"".join(envelopes)
        assert all(chunks)
