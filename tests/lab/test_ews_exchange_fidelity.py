"""Where the lab's EWS endpoint once differed from Exchange 2013-2019 (issue 14), it now answers as Exchange does.

Authentication of every method, ConvertId, the GetItem shapes, millisecond stamps that round-trip, the folder
tree and its counts, the delete modes and the Message-ID Exchange stamps; driven with exchangelib 5.6 and
with raw SOAP over real sockets.
"""

from __future__ import annotations

import base64
import re

import pytest
import requests
from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials, FailFast, Version
from exchangelib.errors import ErrorInvalidIdMalformed, ErrorNonExistentMailbox
from exchangelib.properties import AlternateId
from exchangelib.services import ConvertId
from exchangelib.version import Build
from lxml import etree

from tests.ews_schema import MAILBOX, PASSWORD, StandaloneEws, message

UPN = "svc-mailflow@fourthcoffee.test"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
CHALLENGES = ["Negotiate", "NTLM", 'Basic realm="127.0.0.1"']
FIND = """<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
 xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<s:Header><t:RequestServerVersion Version="Exchange2016"/>
<t:DateTimePrecision>Milliseconds</t:DateTimePrecision></s:Header>
<s:Body><m:FindItem Traversal="Shallow">
<m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>
<t:FieldURI FieldURI="item:DateTimeReceived"/></t:AdditionalProperties></m:ItemShape>
{restriction}
<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds>
</m:FindItem></s:Body></s:Envelope>"""
RECEIVED_IS = """<m:Restriction><t:IsEqualTo><t:FieldURI FieldURI="item:DateTimeReceived"/>
<t:FieldURIOrConstant><t:Constant Value="{stamp}"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>"""


def convert(a: Account, ews_id: str, fmt: str) -> AlternateId:
    """Convert one EwsId of the mailbox with exchangelib's ConvertId."""
    [converted] = list(ConvertId(protocol=a.protocol).call(
        items=[AlternateId(id=ews_id, format="EwsId", mailbox=MAILBOX)], destination_format=fmt))
    return converted


def account(env: StandaloneEws) -> Account:
    config = Configuration(service_endpoint=env.server.http_url, credentials=Credentials(UPN, PASSWORD),
                           auth_type=BASIC, version=Version(build=Build(15, 2, 1544, 4)), retry_policy=FailFast())
    return Account(MAILBOX, config=config, autodiscover=False, access_type=DELEGATE)


def soap(env: StandaloneEws, body: str) -> etree._Element:
    reply = requests.post(env.server.http_url or "", data=body.encode(), auth=(UPN, PASSWORD), timeout=10,
                          headers={"Content-Type": "text/xml; charset=utf-8"})
    assert reply.status_code == 200, reply.text
    return etree.fromstring(reply.content)


def addressed(subject: str, message_id: str) -> bytes:
    """Return a message with display names on From and To, and a Cc."""
    return message(subject, message_id=message_id).replace(
        f"To: {MAILBOX}".encode(), f"To: Mailflow Probe <{MAILBOX}>\r\nCc: Ops <ops@fourthcoffee.test>".encode())


# -- 2: every method is authenticated first -----------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PROPFIND"])
def test_any_unauthenticated_method_gets_401_with_the_challenges(ews: StandaloneEws, method: str) -> None:
    """Whatever the method, a request without credentials gets 401 and the Negotiate, NTLM and Basic challenges."""
    reply = requests.request(method, ews.server.http_url or "", timeout=10)
    assert reply.status_code == 401
    assert reply.raw.headers.getlist("WWW-Authenticate") == CHALLENGES


def test_authenticated_get_gets_the_service_page(ews: StandaloneEws) -> None:
    """With credentials a GET of /EWS/Exchange.asmx gets the service's page; other methods than GET/POST get 405."""
    page = requests.get(ews.server.http_url or "", auth=(UPN, PASSWORD), timeout=10)
    assert page.status_code == 200
    assert "You have created a service" in page.text
    put = requests.put(ews.server.http_url or "", auth=(UPN, PASSWORD), timeout=10)
    assert put.status_code == 405


def test_an_unauthenticated_post_to_another_path_gets_401_too(ews: StandaloneEws) -> None:
    """Authentication comes before the path: an unknown path is 401 without credentials, 404 with them."""
    other = (ews.server.http_url or "").replace("/EWS/Exchange.asmx", "/owa/")
    assert requests.post(other, data=b"x", timeout=10).status_code == 401
    assert requests.post(other, data=b"x", auth=(UPN, PASSWORD), timeout=10).status_code == 404


# -- 3: ConvertId ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["EntryId", "HexEntryId", "EwsLegacyId", "StoreId", "OwaId"])
def test_convertid_round_trips_items_and_folders(ews: StandaloneEws, fmt: str) -> None:
    """An item's and a folder's EwsId convert to each format and back to the same EwsId, naming the mailbox."""
    stored = ews.store.deliver(MAILBOX, message("convert", message_id="<convert@probe>"))
    a = account(ews)
    for ews_id in (stored.item_id, a.inbox.id):
        there = convert(a, ews_id, fmt)
        assert (there.format, there.mailbox) == (fmt, MAILBOX)
        [back] = list(ConvertId(protocol=a.protocol).call(items=[there], destination_format="EwsId"))
        assert back.id == ews_id


def test_entry_ids_are_mapi_entry_ids(ews: StandaloneEws) -> None:
    """EntryId is base64 of a 70-byte message entry id (46 for a folder); HexEntryId the same bytes in hex."""
    stored = ews.store.deliver(MAILBOX, message("entry", message_id="<entry@probe>"))
    a = account(ews)
    entry, hexed = (convert(a, stored.item_id, fmt).id for fmt in ("EntryId", "HexEntryId"))
    assert len(base64.b64decode(entry)) == 70
    assert hexed == base64.b64decode(entry).hex().upper()
    assert stored.item_id.startswith("AAMk")


def test_convertid_errors(ews: StandaloneEws) -> None:
    """A malformed id is ErrorInvalidIdMalformed; an entry id for a mailbox this endpoint lacks is refused."""
    stored = ews.store.deliver(MAILBOX, message("x", message_id="<x@probe>"))
    a = account(ews)
    entry = convert(a, stored.item_id, "EntryId")
    [malformed] = list(ConvertId(protocol=a.protocol).call(
        items=[AlternateId(id="DUMMY", format="EwsId", mailbox="DUMMY")], destination_format="EwsId"))
    assert isinstance(malformed, ErrorInvalidIdMalformed)
    with pytest.raises(ErrorNonExistentMailbox):
        list(ConvertId(protocol=a.protocol).call(
            items=[AlternateId(id=entry.id, format="EntryId", mailbox="nobody@contoso.test")],
            destination_format="EwsId"))


# -- 4: GetItem shapes ------------------------------------------------------------------------------------

def test_fetch_with_every_field_gives_what_exchange_gives(ews: StandaloneEws) -> None:
    """exchangelib's fetch of every field reads recipients, sender, dates, body type, MIME and conversation."""
    stored = ews.store.deliver(MAILBOX, addressed("full", "<full@probe>"))
    [item] = list(account(ews).fetch(ids=[(stored.item_id, stored.change_key)]))
    assert [(r.name, r.email_address, r.routing_type) for r in item.to_recipients] == [
        ("Mailflow Probe", MAILBOX, "SMTP")]
    assert [r.email_address for r in item.cc_recipients] == ["ops@fourthcoffee.test"]
    assert (item.sender.name, item.sender.email_address) == ("Probe", "probe@contoso.test")
    assert item.author.name == "Probe"
    assert item.datetime_sent.isoformat() == "2026-11-28T09:00:00+00:00"
    assert int(item.datetime_created.timestamp()) == int(stored.received.timestamp())
    assert type(item.body).__name__ == "Body"  # BodyType="Text"
    assert item.body.strip() == "probe body"
    assert item.mime_content == stored.raw
    assert item.conversation_id is not None
    assert (item.importance, item.sensitivity, item.is_read) == ("Normal", "Normal", False)
    assert (item.is_read_receipt_requested, item.is_delivery_receipt_requested) == (False, False)
    assert item.display_to == "Mailflow Probe"
    assert item.message_id == "<full@probe>"
    assert item.item_class == "IPM.Note"


def test_allproperties_is_the_first_class_set(ews: StandaloneEws) -> None:
    """GetItem AllProperties returns the first-class message properties; FindItem AllProperties its subset."""
    stored = ews.store.deliver(MAILBOX, addressed("all", "<all@probe>"))
    get = f"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{M_NS}" xmlns:t="{T_NS}">
<s:Body><m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape>
<m:ItemIds><t:ItemId Id="{stored.item_id}"/></m:ItemIds></m:GetItem></s:Body></s:Envelope>"""
    got = {etree.QName(e).localname for e in soap(ews, get).iterfind(f".//{{{T_NS}}}Message/*")}
    assert {"ToRecipients", "CcRecipients", "Sender", "From", "DateTimeSent", "DateTimeCreated", "Body",
            "ConversationId", "Importance", "IsDeliveryReceiptRequested", "IsReadReceiptRequested",
            "ResponseObjects", "InternetMessageHeaders", "EffectiveRights", "ReceivedBy"} <= got
    find = FIND.replace("<t:BaseShape>IdOnly</t:BaseShape>", "<t:BaseShape>AllProperties</t:BaseShape>")
    listed = {etree.QName(e).localname for e in soap(ews, find.format(restriction="")).iterfind(
        f".//{{{T_NS}}}Message/*")}
    assert {"Subject", "From", "Sender", "DateTimeReceived", "ConversationId"} <= listed
    assert not {"Body", "ToRecipients", "CcRecipients", "ResponseObjects", "InternetMessageHeaders"} & listed


@pytest.mark.parametrize("uri", ["item:Body", "message:ToRecipients", "item:MimeContent"])
def test_finditem_refuses_properties_only_getitem_returns(ews: StandaloneEws, uri: str) -> None:
    """Asked by name for a body, recipient list or MIME, FindItem answers ErrorInvalidPropertyForOperation."""
    ews.store.deliver(MAILBOX, message("refused", message_id="<refused@probe>"))
    request = FIND.replace('<t:FieldURI FieldURI="item:DateTimeReceived"/>', f'<t:FieldURI FieldURI="{uri}"/>')
    reply = soap(ews, request.format(restriction=""))
    assert reply.findtext(f".//{{{M_NS}}}ResponseCode") == "ErrorInvalidPropertyForOperation"
    named = reply.find(f".//{{{M_NS}}}MessageXml/{{{T_NS}}}FieldURI")
    assert named is not None
    assert named.get("FieldURI") == uri


# -- 5: millisecond stamps --------------------------------------------------------------------------------

def test_a_millisecond_stamp_sent_back_in_isequalto_finds_the_message(ews: StandaloneEws) -> None:
    """DateTimeReceived as returned with Milliseconds precision, sent back in IsEqualTo, finds that message."""
    for n in range(3):
        ews.store.deliver(MAILBOX, message(f"ms {n}", message_id=f"<ms-{n}@probe>"))
    stamps = [e.text or "" for e in soap(ews, FIND.format(restriction="")).iter(f"{{{T_NS}}}DateTimeReceived")]
    assert len(stamps) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)
    for stamp in stamps:
        found = soap(ews, FIND.format(restriction=RECEIVED_IS.format(stamp=stamp)))
        matched = [e.text for e in found.iter(f"{{{T_NS}}}DateTimeReceived")]
        assert matched == [stamp] * stamps.count(stamp)  # messages received in one millisecond share it


# -- 6: folders -------------------------------------------------------------------------------------------

def test_unread_count_counts_unread_messages(ews: StandaloneEws) -> None:
    """Inbox's UnreadCount and TotalCount count the messages delivered to it (all unread)."""
    for n in range(3):
        ews.store.deliver(MAILBOX, message(f"unread {n}", message_id=f"<u-{n}@probe>"))
    inbox = account(ews).inbox
    assert (inbox.total_count, inbox.unread_count) == (3, 3)


def test_the_message_folder_root_holds_the_default_folders(ews: StandaloneEws) -> None:
    """FindFolder under msgfolderroot lists Calendar, Contacts, Drafts, Sent Items, Outbox and the rest."""
    names = {f.name for f in account(ews).msg_folder_root.children}
    assert {"Calendar", "Contacts", "Deleted Items", "Drafts", "Inbox", "Journal", "Junk Email", "Notes",
            "Outbox", "RSS Feeds", "Sent Items", "Sync Issues", "Tasks"} == names


def test_distinguished_folders_resolve_by_name(ews: StandaloneEws) -> None:
    """Every default folder resolves by its distinguished id; its display name is Exchange's English one."""
    a = account(ews)
    assert (a.drafts.name, a.sent.name, a.outbox.name, a.calendar.name) == ("Drafts", "Sent Items", "Outbox",
                                                                             "Calendar")
    assert a.recoverable_items_deletions.name == "Deletions"


# -- 9: Message-ID ----------------------------------------------------------------------------------------

def test_a_message_without_message_id_gets_one_stamped(ews: StandaloneEws) -> None:
    """A message that arrives without Message-ID gets one from the server, in its headers and InternetMessageId."""
    raw = b"\r\n".join(line for line in message("no id", message_id="x").split(b"\r\n")
                       if not line.startswith(b"Message-ID"))
    stored = ews.store.deliver(MAILBOX, raw)
    [item] = list(account(ews).fetch(ids=[(stored.item_id, stored.change_key)],
                                     only_fields=["message_id", "headers", "mime_content"]))
    assert re.fullmatch(r"<[0-9a-f]{32}@mail\.fourthcoffee\.test>", item.message_id)
    assert {h.name: h.value for h in item.headers}["Message-ID"] == item.message_id
    assert f"Message-ID: {item.message_id}".encode() in stored.raw
