"""The lab's EWS endpoint, driven by real exchangelib 5.6 over real sockets."""

from __future__ import annotations

import re
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
from exchangelib import BASIC, DELEGATE, NTLM, Account, Configuration, Credentials, FailFast, Q, Version
from exchangelib.errors import ErrorInvalidIdMalformed, ErrorItemNotFound, ErrorSubscriptionNotFound, TransportError
from exchangelib.extended_properties import ExtendedProperty
from exchangelib.folders import FolderCollection
from exchangelib.items import Message
from exchangelib.properties import NewMailEvent
from exchangelib.protocol import BaseProtocol
from exchangelib.version import Build

from tests.ews_schema import MAILBOX, PASSWORD, StandaloneEws, message

UPN = "svc-mailflow@fourthcoffee.test"
GIVEN = Version(build=Build(15, 2, 1544, 4))


def account(env: StandaloneEws, *, version: Version | None = None, username: str = UPN,
            password: str = PASSWORD, auth: str = BASIC, url: str | None = None) -> Account:
    config = Configuration(service_endpoint=url or env.server.http_url, credentials=Credentials(username, password),
                           auth_type=auth, version=version, retry_policy=FailFast())
    return Account(MAILBOX, config=config, autodiscover=False, access_type=DELEGATE)


def seed(env: StandaloneEws, tag: str) -> tuple[str, str]:
    """Deliver a tagged message to Inbox and one to Junk; return their item ids."""
    inbox = env.store.deliver(MAILBOX, message(f"probe {tag}", message_id=f"<{tag}-1@probe>", tag=tag))
    junk = env.store.deliver(MAILBOX, message(f"probe {tag}", message_id=f"<{tag}-2@probe>", tag=tag),
                             folder="junkemail")
    env.store.deliver(MAILBOX, message("unrelated", message_id="<other@probe>"))
    return inbox.item_id, junk.item_id


@pytest.mark.parametrize("version", [None, GIVEN], ids=["guessed", "given"])
def test_one_finditem_finds_the_message_in_inbox_and_junk(ews: StandaloneEws, version: Version | None) -> None:
    """One FindItem over Inbox and Junk finds both copies, whether the version is guessed or given."""
    inbox_id, junk_id = seed(ews, "TAG-1234")
    a = account(ews, version=version)
    folders = FolderCollection(account=a, folders=[a.inbox, a.junk])
    ews.stats.reset()
    found = list(folders.filter(subject__contains="TAG-1234").only("subject", "datetime_received"))
    assert {i.id for i in found} == {inbox_id, junk_id}
    assert ews.stats.ews_requests("FindItem") == 1
    assert ews.stats.ews_requests("ConvertId") == 0


def test_version_is_guessed_with_convertid(ews: StandaloneEws) -> None:
    """Without a given version exchangelib asks with ConvertId and reads ServerVersionInfo."""
    a = account(ews)
    assert a.version.build == Build(15, 2, 1544, 4)
    assert ews.stats.ews_requests("ConvertId") == 1


def test_getitem_returns_headers_subject_message_id_and_receipt_time(ews: StandaloneEws) -> None:
    """GetItem returns the Internet headers, Message-ID, subject and DateTimeReceived in whole seconds."""
    stored = ews.store.deliver(MAILBOX, message("probe TAG-9", message_id="<tag-9@probe>", tag="TAG-9"))
    a = account(ews, version=GIVEN)
    [item] = list(a.fetch(ids=[(stored.item_id, stored.change_key)],
                          only_fields=["headers", "datetime_received", "subject", "message_id", "body"]))
    headers = {h.name: h.value for h in item.headers}
    assert headers["X-Probe-Tag"] == "TAG-9"
    assert headers["Received"].startswith("from fc-edge-1")
    assert item.message_id == "<tag-9@probe>"
    assert item.subject == "probe TAG-9"
    assert item.body.strip() == "probe body"
    assert item.datetime_received.timestamp() == int(stored.received.timestamp())


def test_getitem_of_a_missing_item_is_error_item_not_found(ews: StandaloneEws) -> None:
    """An id no longer in the store is ErrorItemNotFound, one that Exchange could not have issued is malformed."""
    gone = ews.store.deliver(MAILBOX, message("gone", message_id="<gone@probe>"))
    gone_id = gone.item_id
    ews.store.delete(gone_id, "HardDelete")
    stored = ews.store.deliver(MAILBOX, message("x", message_id="<x@probe>"))
    a = account(ews, version=GIVEN)
    results = list(a.fetch(ids=[(gone_id, "ck"), ("bm90LWFuLWl0ZW0=", "ck"), (stored.item_id, stored.change_key)]))
    assert isinstance(results[0], ErrorItemNotFound)
    assert isinstance(results[1], ErrorInvalidIdMalformed)
    assert results[2].id == stored.item_id


@pytest.mark.parametrize(("how", "left_in"), [
    ("delete", None), ("soft_delete", "recoverableitemsdeletions"), ("move_to_trash", "deleteditems"),
])
def test_each_delete_type_removes_the_message(ews: StandaloneEws, how: str, left_in: str | None) -> None:
    """HardDelete removes the item, SoftDelete puts it in Recoverable Items, MoveToDeletedItems in Deleted Items."""
    stored = ews.store.deliver(MAILBOX, message("probe TAG-D", message_id="<d@probe>"))
    old_id = stored.item_id
    a = account(ews, version=GIVEN)
    [item] = list(a.inbox.filter(subject__contains="TAG-D"))
    getattr(item, how)()
    assert ews.store.items(MAILBOX, ["inbox", "junkemail"]) == []
    assert ews.store.get(old_id) is None
    for folder in ("deleteditems", "recoverableitemsdeletions"):
        held = [i.message_id for i in ews.store.items(MAILBOX, [folder])]
        assert held == (["<d@probe>"] if folder == left_in else [])


def test_moveitem_moves_and_gives_a_new_id(ews: StandaloneEws) -> None:
    """MoveItem puts the item in the target folder under a new id, which the response carries."""
    stored = ews.store.deliver(MAILBOX, message("probe TAG-M", message_id="<m@probe>"))
    old_id = stored.item_id
    a = account(ews, version=GIVEN)
    [item] = list(a.inbox.filter(subject__contains="TAG-M"))
    item.move(a.trash)
    [moved] = ews.store.items(MAILBOX, ["deleteditems"])
    assert moved.item_id != old_id
    assert item.id == moved.item_id


def test_restrictions_select_the_right_messages(ews: StandaloneEws) -> None:
    """IsEqualTo, Contains (case-insensitive, prefix), Or, Not, Exists and date ranges select as Exchange does."""
    for n in range(4):
        ews.store.deliver(MAILBOX, message(f"Probe TAG-{n}", message_id=f"<r{n}@probe>", tag=f"TAG-{n}"))
    a = account(ews, version=GIVEN)
    inbox = a.inbox

    def subjects(qs: Any) -> set[str]:
        return {i.subject for i in qs.only("subject")}

    assert subjects(inbox.filter(message_id="<r2@probe>")) == {"Probe TAG-2"}
    assert subjects(inbox.filter(subject__icontains="tag-1")) == {"Probe TAG-1"}
    assert subjects(inbox.filter(subject__istartswith="probe tag-3")) == {"Probe TAG-3"}
    assert subjects(inbox.filter(Q(subject="Probe TAG-0") | Q(subject="Probe TAG-3"))) == {"Probe TAG-0", "Probe TAG-3"}
    assert subjects(inbox.filter(~Q(subject__contains="TAG-0"))) == {"Probe TAG-1", "Probe TAG-2", "Probe TAG-3"}
    received = sorted(i.received for i in ews.store.items(MAILBOX, ["inbox"]))
    assert len(list(inbox.filter(datetime_received__gte=received[0].replace(microsecond=0)))) == 4
    assert list(inbox.filter(datetime_received__gt=received[-1].replace(year=received[-1].year + 1))) == []
    assert len(list(inbox.filter(subject__exists=True))) == 4


def test_internet_header_restriction_finds_by_tag(ews: StandaloneEws) -> None:
    """The InternetHeaders extended-property restriction (scenario G) finds the message by its X-Probe-Tag."""

    class ProbeTag(ExtendedProperty):  # type: ignore[misc]
        distinguished_property_set_id = "InternetHeaders"
        property_name = "X-Probe-Tag"
        property_type = "String"

    inbox_id, junk_id = seed(ews, "TAG-G")
    Message.register("probe_tag", ProbeTag)
    try:
        a = account(ews, version=GIVEN)
        folders = FolderCollection(account=a, folders=[a.inbox, a.junk])
        found = list(folders.filter(probe_tag="TAG-G").order_by("-datetime_received").only("probe_tag", "subject"))
    finally:
        Message.deregister("probe_tag")
    assert {i.id for i in found} == {inbox_id, junk_id}
    assert {i.probe_tag for i in found} == {"TAG-G"}


def test_paging_walks_250_items_in_order(ews: StandaloneEws) -> None:
    """IndexedPageItemView pages of 100 cover 250 items exactly once, in DateTimeReceived order."""
    for n in range(250):
        ews.store.deliver(MAILBOX, message(f"bulk {n:03d}", message_id=f"<bulk-{n}@probe>"))
    a = account(ews, version=GIVEN)
    ews.stats.reset()
    subjects = [i.subject for i in a.inbox.all().order_by("datetime_received").only("subject")]
    assert subjects == [f"bulk {n:03d}" for n in range(250)]
    assert ews.stats.ews_requests("FindItem") == 3


def test_streaming_subscription_sees_new_mail(ews: StandaloneEws) -> None:
    """A streaming subscription receives a NewMailEvent for a delivery while the stream is open."""
    a = account(ews, version=GIVEN)
    sub_id = a.inbox.subscribe_to_streaming()
    delivered: list[str] = []

    def deliver() -> None:
        delivered.append(ews.store.deliver(MAILBOX, message("stream", message_id="<s@probe>")).item_id)

    timer = threading.Timer(0.2, deliver)
    timer.start()
    seen: list[str] = []
    for notification in a.inbox.get_streaming_events(sub_id, connection_timeout=1):
        seen += [e.item_id.id for e in notification.events if isinstance(e, NewMailEvent)]
        if seen:
            break
    timer.join()
    a.inbox.unsubscribe(sub_id)
    assert seen == delivered


def test_stream_ends_with_connection_closed_at_the_timeout(ews: StandaloneEws) -> None:
    """GetStreamingEvents sends keep-alives and ends with ConnectionStatus Closed at ConnectionTimeout."""
    ews.server.subscriptions.minute_seconds = 0.5
    ews.server.subscriptions.keepalive_seconds = 0.1
    a = account(ews, version=GIVEN)
    sub_id = a.inbox.subscribe_to_streaming()
    assert list(a.inbox.get_streaming_events(sub_id, connection_timeout=1)) == []
    bodies = [b for b, op in ews.responses if op == "GetStreamingEvents"]
    assert len(bodies) >= 2
    assert b"<m:ConnectionStatus>Closed</m:ConnectionStatus>" in bodies[-1]
    assert all(b"<m:ConnectionStatus>OK</m:ConnectionStatus>" in b for b in bodies[:-1])


def test_pull_subscription_returns_new_mail_from_getevents(ews: StandaloneEws) -> None:
    """GetEvents returns the NewMailEvent of a delivery; after Unsubscribe the subscription is gone."""
    a = account(ews, version=GIVEN)
    sub_id, watermark = a.inbox.subscribe_to_pull()
    stored = ews.store.deliver(MAILBOX, message("pull", message_id="<p@probe>"))
    events = [e for n in a.inbox.get_events(sub_id, watermark) for e in n.events]
    assert [e.item_id.id for e in events if isinstance(e, NewMailEvent)] == [stored.item_id]
    a.inbox.unsubscribe(sub_id)
    with pytest.raises(ErrorSubscriptionNotFound):
        list(a.inbox.get_events(sub_id, watermark))


FIND_BY_SUBJECT = """<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
 xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<s:Header><t:RequestServerVersion Version="Exchange2016"/>{precision}</s:Header>
<s:Body><m:FindItem Traversal="Shallow">
<m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>
<t:FieldURI FieldURI="item:DateTimeReceived"/></t:AdditionalProperties></m:ItemShape>
<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds>
</m:FindItem></s:Body></s:Envelope>"""


@pytest.mark.parametrize("precision", ["", "Seconds", "Milliseconds"])
def test_datetime_precision_header_gives_milliseconds(ews: StandaloneEws, precision: str) -> None:
    """DateTimeReceived is in whole seconds unless t:DateTimePrecision asks for Milliseconds."""
    stored = ews.store.deliver(MAILBOX, message("precise", message_id="<ms@probe>"))
    header = f"<t:DateTimePrecision>{precision}</t:DateTimePrecision>" if precision else ""
    reply = requests.post(ews.server.http_url or "", data=FIND_BY_SUBJECT.format(precision=header).encode(),
                          auth=(UPN, PASSWORD), headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=10)
    assert reply.status_code == 200
    stamp = re.search(r"<t:DateTimeReceived>([^<]+)</t:DateTimeReceived>", reply.text)
    assert stamp is not None
    whole = stored.received.strftime("%Y-%m-%dT%H:%M:%S")
    if precision == "Milliseconds":
        assert stamp.group(1) == f"{whole}.{stored.received.microsecond // 1000:03d}Z"
    else:
        assert stamp.group(1) == f"{whole}Z"


def ca_adapter(ca_file: Path) -> type[requests.adapters.HTTPAdapter]:
    """Return a requests adapter class that verifies servers against the lab CA only."""

    class LabCaAdapter(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn=conn, url=url, verify=str(ca_file), cert=cert)

    return LabCaAdapter


def test_https_with_the_lab_ca(ews: StandaloneEws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS exchangelib trusts the endpoint through an adapter that verifies against the lab CA."""
    seed(ews, "TAG-TLS")
    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", ca_adapter(ews.ca_file))
    a = account(ews, version=GIVEN, url=ews.server.https_url)
    assert len(list(a.inbox.filter(subject__contains="TAG-TLS"))) == 1


def test_https_without_the_lab_ca_fails_verification(ews: StandaloneEws) -> None:
    """Without the lab CA, certificate verification fails: verification is on by default."""
    a = account(ews, version=GIVEN, url=ews.server.https_url)
    with pytest.raises((TransportError, requests.exceptions.SSLError, ssl.SSLError)):
        list(a.inbox.filter(subject__contains="x"))


@pytest.mark.parametrize("username", ["FOURTHCOFFEE\\svc-mailflow", UPN])
def test_ntlm_authenticates_and_finds(ews: StandaloneEws, username: str) -> None:
    """NTLM (pyspnego acceptor, connection-based) lets exchangelib in as DOMAIN\\user or as a UPN."""
    seed(ews, "TAG-NTLM")
    a = account(ews, version=GIVEN, username=username, auth=NTLM)
    folders = FolderCollection(account=a, folders=[a.inbox, a.junk])
    assert len(list(folders.filter(subject__contains="TAG-NTLM"))) == 2


def test_ntlm_over_https_with_the_lab_ca(ews: StandaloneEws, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM works over HTTPS too (the client's channel binding does not stop the lab's acceptor)."""
    seed(ews, "TAG-NTLMS")
    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", ca_adapter(ews.ca_file))
    a = account(ews, version=GIVEN, username="FOURTHCOFFEE\\svc-mailflow", auth=NTLM, url=ews.server.https_url)
    assert len(list(a.inbox.filter(subject__contains="TAG-NTLMS"))) == 1
