"""Faults and errors of the lab's EWS endpoint, as exchangelib 5.6 and a raw HTTP client see them."""

from __future__ import annotations

import email.utils
import time

import pytest
import requests
from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials, FailFast, Version
from exchangelib.errors import (
    ErrorInternalServerError,
    ErrorInvalidSubscription,
    ErrorServerBusy,
    TransportError,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol
from exchangelib.version import Build

from probe.lab.faults import parse_fault
from tests.ews_schema import FOREST, MAILBOX, PASSWORD, StandaloneEws

UPN = "svc-mailflow@fourthcoffee.test"
TARGET = f"ews/{FOREST}"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
GET_INBOX = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
 xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>
<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>
<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>"""


def inject(env: StandaloneEws, kind: str, **params: object) -> None:
    env.faults.add(parse_fault({"target": TARGET, "kind": kind, **params}))


def account(env: StandaloneEws, *, password: str = PASSWORD) -> Account:
    config = Configuration(service_endpoint=env.server.http_url, credentials=Credentials(UPN, password),
                           auth_type=BASIC, version=Version(build=Build(15, 2, 1544, 4)), retry_policy=FailFast())
    return Account(MAILBOX, config=config, autodiscover=False, access_type=DELEGATE)


def post(env: StandaloneEws, body: bytes, *, auth: tuple[str, str] | None = (UPN, PASSWORD)) -> requests.Response:
    return requests.post(env.server.http_url or "", data=body, auth=auth, headers=SOAP_HEADERS, timeout=10)


def test_server_busy_raises_with_back_off(ews: StandaloneEws) -> None:
    """ErrorServerBusy arrives as a SOAP fault whose BackOffMilliseconds exchangelib reads as back_off."""
    inject(ews, "server_busy", back_off_ms=2500)
    with pytest.raises(ErrorServerBusy) as caught:
        account(ews).inbox.total_count  # noqa: B018 - the property access is the request
    assert caught.value.back_off == 2.5


def test_unauthorized_fault_raises_unauthorized_error(ews: StandaloneEws) -> None:
    """The unauthorized fault answers every request with 401, even with the right password."""
    inject(ews, "unauthorized")
    with pytest.raises(UnauthorizedError):
        account(ews).inbox.total_count  # noqa: B018


def test_wrong_password_raises_unauthorized_error(ews: StandaloneEws) -> None:
    """A wrong Basic password gets 401 and exchangelib raises UnauthorizedError under FailFast."""
    with pytest.raises(UnauthorizedError):
        account(ews, password="wrong").inbox.total_count  # noqa: B018


def test_401_offers_negotiate_ntlm_and_basic(ews: StandaloneEws) -> None:
    """A request without credentials gets 401 with Negotiate, NTLM and a Basic realm, and no body."""
    reply = post(ews, GET_INBOX, auth=None)
    assert reply.status_code == 401
    offered = reply.raw.headers.getlist("WWW-Authenticate")
    assert offered == ["Negotiate", "NTLM", 'Basic realm="127.0.0.1"']


def test_server_error_raises_internal_server_error(ews: StandaloneEws) -> None:
    """The server_error fault is an HTTP 500 SOAP fault ErrorInternalServerError."""
    inject(ews, "server_error")
    with pytest.raises(ErrorInternalServerError):
        account(ews).inbox.total_count  # noqa: B018


def test_slow_beyond_the_client_timeout_is_a_transport_error(ews: StandaloneEws,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A server slower than exchangelib's timeout makes the request fail with a transport error."""
    monkeypatch.setattr(BaseProtocol, "TIMEOUT", 0.5)
    inject(ews, "slow", seconds=3)
    with pytest.raises(TransportError):
        account(ews).inbox.total_count  # noqa: B018


def test_unreachable_closes_connections_without_an_answer(ews: StandaloneEws) -> None:
    """The unreachable fault drops connections: exchangelib sees a transport error, not an EWS error."""
    inject(ews, "unreachable")
    with pytest.raises(TransportError):
        account(ews).inbox.total_count  # noqa: B018
    ews.faults.clear()
    assert account(ews).inbox.total_count == 0


def test_clock_offset_moves_the_date_header(ews: StandaloneEws) -> None:
    """The Date header follows the forest's clock, so a clock_offset fault shows in it."""
    inject(ews, "clock_offset", seconds=3600)
    before = time.time()
    reply = post(ews, GET_INBOX)
    after = time.time()
    served = email.utils.parsedate_to_datetime(reply.headers["Date"]).timestamp()
    assert int(before) + 3600 <= served <= after + 3600


def test_unknown_operation_is_a_soap_fault(ews: StandaloneEws) -> None:
    """An operation the lab does not know gets an HTTP 500 SOAP fault ErrorInvalidRequest, not a traceback."""
    reply = post(ews, GET_INBOX.replace(b"GetFolder", b"GetNothing"))
    assert reply.status_code == 500
    assert "<faultcode" in reply.text
    assert "ErrorInvalidRequest" in reply.text
    assert ews.stats.ews_requests("GetNothing") == 1


BAD_BODIES = [b"", b"<not xml", b"<a>not soap</a>", GET_INBOX.replace(b"m:GetFolder>", b"m:GetFolder/>", 1)]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_unparseable_requests_are_soap_faults(ews: StandaloneEws, body: bytes) -> None:
    """Bad XML, non-SOAP XML and malformed envelopes get a SOAP fault ErrorInvalidRequest."""
    reply = post(ews, body)
    assert reply.status_code == 500
    assert "ErrorInvalidRequest" in reply.text


def test_invalid_subscription_id_is_error_invalid_subscription(ews: StandaloneEws) -> None:
    """GetEvents on an id the server never issued is ErrorInvalidSubscription."""
    with pytest.raises(ErrorInvalidSubscription):
        list(account(ews).inbox.get_events("garbage", "watermark"))


def test_stats_count_requests_by_operation(ews: StandaloneEws) -> None:
    """Every authenticated request is counted under its operation name and forest."""
    a = account(ews)
    a.inbox.total_count  # noqa: B018
    list(a.inbox.filter(subject__contains="x"))
    assert ews.stats.ews_requests("GetFolder", forest=FOREST) == 2
    assert ews.stats.ews_requests("FindItem", forest=FOREST) == 1
