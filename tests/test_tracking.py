"""The tracking handoff: the command that follows a lost or bounced probe in the smart host's own logs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from probe.tracking import exchange_command, tracking_hint

CREATED = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC).timestamp()
MESSAGE_ID = "<0123456789abcdef.1795856400000@mailflow-probe.contoso.com>"
EXCHANGE_REPLY = ("2.6.0 <0123456789abcdef.1795856400000@mailflow-probe.contoso.com> [InternalId=105849469029151, "
                  "Hostname=FC-EDGE-1.fourthcoffee.com] 1171 bytes in 0.013, 87.971 KB/sec Queued mail for delivery")


def test_an_exchange_smart_host_gets_get_messagetrackinglog_on_the_server_its_250_named() -> None:
    """Exchange's 250 names the server: the command asks it, by Message-ID, over the probe's window (5 minutes
    before it was made to 15 after its verdict), in UTC."""
    hint = tracking_hint(detail={"smtp_reply": EXCHANGE_REPLY, "queue_id": "105849469029151"},
                         message_id=MESSAGE_ID, created_at=CREATED, finished_at=CREATED + 300)
    assert (hint.mta, hint.queue_id, hint.server) == ("exchange", "105849469029151", "FC-EDGE-1.fourthcoffee.com")
    assert hint.commands == (
        f"Get-MessageTrackingLog -MessageId '{MESSAGE_ID}' -Start '2026-11-28T08:55:00Z' -End '2026-11-28T09:20:00Z'"
        " -Server 'FC-EDGE-1.fourthcoffee.com'",)
    assert hint.to_json()["start"] == "2026-11-28T08:55:00Z"


def test_without_a_server_every_transport_server_is_asked() -> None:
    """An Exchange 2010 250 ([InternalId=...] alone) or only Exchange's banner: Get-TransportService | ..."""
    banner = "S: 220 FC-EDGE-1 Microsoft ESMTP MAIL Service ready at x"
    for detail in ({"smtp_reply": "2.6.0 <a@b> [InternalId=274498] Queued mail for delivery"},
                   {"smtp_reply": "2.0.0 OK", "transcript": [banner]}):
        hint = tracking_hint(detail=detail, message_id=MESSAGE_ID, created_at=CREATED, finished_at=CREATED)
        assert hint.mta == "exchange"
        assert hint.server is None
        assert hint.commands[0].startswith(f"Get-TransportService | Get-MessageTrackingLog -MessageId '{MESSAGE_ID}'")


def test_a_postfix_smart_host_gets_the_log_searches_for_its_queue_id() -> None:
    """Postfix's "queued as" names the queue id: the journal and mail.log searches for it, shell-quoted."""
    hint = tracking_hint(detail={"smtp_reply": "2.0.0 Ok: queued as 4Q1xYz0Nd2z9vK", "queue_id": "4Q1xYz0Nd2z9vK"},
                         message_id=MESSAGE_ID, created_at=CREATED, finished_at=CREATED + 60)
    assert hint.mta == "postfix"
    assert hint.commands == (
        "journalctl --since '2026-11-28 08:55:00 UTC' --until '2026-11-28 09:16:00 UTC' --grep 4Q1xYz0Nd2z9vK",
        "grep -F 4Q1xYz0Nd2z9vK /var/log/mail.log")


def test_an_unknown_mta_gets_no_command_and_a_hostile_queue_id_none() -> None:
    """A reply of no known MTA gives no command; a queue id that is not a plain token is not put in a command."""
    other = tracking_hint(detail={"smtp_reply": "2.0.0 OK id=1rAbCd"}, message_id=MESSAGE_ID, created_at=CREATED,
                          finished_at=CREATED)
    assert (other.mta, other.commands) == ("other", ())
    hostile = tracking_hint(detail={"smtp_reply": "2.0.0 Ok: queued as x", "queue_id": "x; rm -rf /"},
                            message_id=MESSAGE_ID, created_at=CREATED, finished_at=CREATED)
    assert (hostile.queue_id, hostile.commands) == (None, ())


@pytest.mark.parametrize("message_id", ["<it's@x>", "<a\u2019b@x>", "<a\u201bb\x1b[31m@x>"])
def test_quotes_in_a_message_id_are_doubled_for_powershell(message_id: str) -> None:
    """Every character PowerShell reads as a single quote is doubled; control characters are dropped: the Message-ID
    cannot end the string early."""
    command = exchange_command(message_id=message_id, start=datetime(2026, 1, 1, tzinfo=UTC),
                               end=datetime(2026, 1, 2, tzinfo=UTC), server=None)
    quoted = command.split("-MessageId ", 1)[1].split(" -Start", 1)[0]
    inner = quoted[1:-1]
    assert quoted[0] == quoted[-1] == "'"
    for quote in "'\u2018\u2019\u201a\u201b":
        assert inner.replace(quote * 2, "").count(quote) == 0
    assert "\x1b" not in command
