"""The status page and the debug view of bounced and lost probes, and of delay warnings, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from probe.metrics import ProbeMetrics
from probe.web import WebServer, serve
from tests.test_web import DELIVERED, FakeSource, fetch

ROUTE = "contoso-to-fourthcoffee"
REPLY = ("2.6.0 <p-9@contoso.com> [InternalId=105849469029151, Hostname=FC-EDGE-1.fourthcoffee.com] 1171 bytes in "
         "0.013, 87.971 KB/sec Queued mail for delivery")
BOUNCE = {"status": "5.1.1", "reason": "recipient", "reporting_mta": "FC-MBX-1.fourthcoffee.com",
          "diagnostic": "550 5.1.1 <script>RESOLVER.ADR.RecipNotFound</script>; not found", "received_at": 1.7e9}
BOUNCED = {"state": "bounced", "stage": None, "reason": "recipient", "smtp_code": 250, "latency": None,
           "created_at": 1_700_000_000.0, "deadline": 1_700_000_300.0, "decided_at": 1_700_000_010.0,
           "message_id": "<p-9@contoso.com>", "probe_id": "p-9",
           "detail": {"smtp_reply": REPLY, "queue_id": "105849469029151", "bounce": BOUNCE}}
LOST = {**BOUNCED, "state": "lost", "reason": None, "probe_id": "p-8", "message_id": "<p-8@contoso.com>",
        "detail": {"smtp_reply": "2.0.0 Ok: queued as 4Q1xYz", "queue_id": "4Q1xYz"}}
DELAYED = {"status": "4.4.7", "reporting_mta": "FC-EDGE-1.fourthcoffee.com", "diagnostic": "400 4.4.7 Message delayed",
           "count": 1, "will_retry_until": "2026-11-30T09:00:00+00:00"}
WAITING = {**DELIVERED, "state": "in_flight", "probe_id": "p-10", "decided_at": None,
           "detail": {"delayed_dsn": DELAYED}}


@pytest.fixture
def source() -> FakeSource:
    fake = FakeSource()
    fake.rows = {(ROUTE, "fc-edge-1"): [BOUNCED, DELIVERED], (ROUTE, "fc-edge-<2>"): [LOST]}
    fake.open_rows = {(ROUTE, "fc-edge-1"): [WAITING]}
    return fake


@pytest.fixture
def server(source: FakeSource) -> Iterator[WebServer]:
    running = serve("127.0.0.1:0", source=source, metrics=ProbeMetrics(source.conf, process_metrics=False),
                    lifecycle=True)
    yield running
    running.close()


def test_the_status_page_shows_a_bounce_its_code_and_a_delay_warning(server: WebServer) -> None:
    """A bounced verdict with its status code and reason, its chip, and the warning of a probe in flight that an
    Exchange queue reported delayed."""
    page = fetch(server, "/").body
    assert '<span class="v bounced">bounced</span>' in page
    assert "5.1.1 / recipient" in page
    assert 'class="chip bounced"' in page
    assert "delivery delayed: 4.4.7 reported by FC-EDGE-1.fourthcoffee.com (probe p-10, in_flight)" in page


def test_the_debug_view_of_a_bounce_shows_the_ndr_and_how_to_track_it(server: WebServer) -> None:
    """The NDR's facts (escaped) and the Get-MessageTrackingLog command on the server the 250 named."""
    page = fetch(server, f"/debug?route={ROUTE}&smart_host=fc-edge-1&probe_id=p-9").body
    assert "<h3>Non-delivery report</h3>" in page
    assert "&lt;script&gt;RESOLVER.ADR.RecipNotFound&lt;/script&gt;" in page
    assert "<script>" not in page
    assert "<h3>Track it in the smart host's logs</h3>" in page
    assert ("Get-MessageTrackingLog -MessageId &#x27;&lt;p-9@contoso.com&gt;&#x27; -Start &#x27;2023-11-14T22:08:20Z"
            "&#x27; -End &#x27;2023-11-14T22:33:20Z&#x27; -Server &#x27;FC-EDGE-1.fourthcoffee.com&#x27;") in page
    assert "105849469029151" in page


def test_the_debug_view_of_a_lost_probe_through_postfix_gives_the_log_search(server: WebServer) -> None:
    """A lost probe through a Postfix smart host: the searches for its queue id."""
    page = fetch(server, f"/debug?route={ROUTE}&smart_host=fc-edge-%3C2%3E").body
    assert "grep -F 4Q1xYz /var/log/mail.log" in page
    assert "journalctl --since" in page


def test_a_delivered_probe_offers_no_tracking(server: WebServer) -> None:
    """Tracking is for lost and bounced probes only."""
    page = fetch(server, f"/debug?route={ROUTE}&smart_host=fc-edge-1&probe_id={DELIVERED['probe_id']}").body
    assert "Track it" not in page
    assert "Non-delivery report" not in page


def test_every_row_kind_renders(source: FakeSource, server: WebServer) -> None:
    """Rows without the optional facts (no detail, no timestamps) still render."""
    bare: dict[str, Any] = {"state": "bounced", "probe_id": "p-0"}
    source.rows[(ROUTE, "fc-edge-1")] = [bare]
    assert fetch(server, "/").status == 200
    assert fetch(server, f"/debug?route={ROUTE}&smart_host=fc-edge-1").status == 200
