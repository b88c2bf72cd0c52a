"""The lab's CreateItem, driven by real exchangelib 5.6: SendOnly, SendAndSaveCopy and SaveOnly messages.

The standalone endpoint's transport has no Send connectors: the mailbox itself receives what it sends, and
mail for any other domain is an NDR it owes the sender. Every response must validate against the schema.
"""

from __future__ import annotations

import email

import pytest
from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials, FailFast, Version
from exchangelib.errors import ErrorInvalidRecipients, ErrorSendAsDenied
from exchangelib.items import Message
from exchangelib.properties import Mailbox
from exchangelib.version import Build

from probe.lab.store import StoredItem
from tests.daemon_harness import wait_for
from tests.ews_schema import FOREST, MAILBOX, PASSWORD, StandaloneEws

UPN = "svc-mailflow@fourthcoffee.test"


@pytest.fixture
def account(ews: StandaloneEws) -> Account:
    """An exchangelib account of the endpoint's mailbox (Basic over HTTPS to the lab CA is not needed here)."""
    config = Configuration(service_endpoint=ews.server.http_url, credentials=Credentials(UPN, PASSWORD),
                           auth_type=BASIC, version=Version(build=Build(15, 2, 1544, 4)), retry_policy=FailFast())
    return Account(MAILBOX, config=config, autodiscover=False, access_type=DELEGATE)


def mime(subject: str, *, sender: str = MAILBOX, to: str = MAILBOX) -> bytes:
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Bcc: <{MAILBOX}>", f"Subject: {subject}",
             "X-Mailflow-Probe: MFP-0123456789abcdef-00112233445566778899aabbccddeeff", "", "body", ""]
    return "\r\n".join(lines).encode()


def received(ews: StandaloneEws, subject: str, folder: str = "inbox") -> list[StoredItem]:
    return [i for i in ews.store.items(MAILBOX, [folder]) if i.subject == subject]


def test_sendonly_with_mime_content_sends_the_message_as_given_and_saves_nothing(ews: StandaloneEws,
                                                                                  account: Account) -> None:
    """Message(mime_content=...).send(save_copy=False) is CreateItem SendOnly: the message arrives with its own
    headers, Bcc taken off, a Date and Message-ID stamped, the submission hop's Received on top; no copy kept."""
    Message(account=account, mime_content=mime("send only")).send(save_copy=False)
    wait_for(lambda: bool(received(ews, "send only")), timeout=10, what="the sent message")
    (item,) = received(ews, "send only")
    parsed = email.message_from_bytes(item.raw)
    assert parsed["X-Mailflow-Probe"].startswith("MFP-0123456789abcdef")
    assert parsed["Bcc"] is None
    assert parsed["Date"]
    assert parsed["Message-ID"]
    assert "via Mailbox Transport" in parsed["Received"]
    assert received(ews, "send only", "sentitems") == []
    assert ews.stats.ews_requests("CreateItem") == 1


def test_send_and_save_keeps_a_read_copy_in_sent_items(ews: StandaloneEws, account: Account) -> None:
    """send_and_save() is SendAndSaveCopy: sent, and a read copy kept in Sent Items."""
    Message(account=account, folder=account.sent, mime_content=mime("send and save")).send_and_save()
    wait_for(lambda: bool(received(ews, "send and save")), timeout=10, what="the sent message")
    (copy,) = received(ews, "send and save", "sentitems")
    assert copy.is_read


def test_save_only_returns_the_drafts_id(ews: StandaloneEws, account: Account) -> None:
    """save() is SaveOnly: the message is kept in Drafts, not sent, and its id comes back."""
    draft = Message(account=account, folder=account.drafts, subject="a draft", body="not sent",
                    to_recipients=[Mailbox(email_address=MAILBOX)])
    draft.save()
    (kept,) = [i for i in ews.store.items(MAILBOX, ["drafts"]) if i.subject == "a draft"]
    assert draft.id == kept.item_id
    assert ews.stats.transport(FOREST, "queued") == 0  # a send is queued before CreateItem answers


def test_a_from_the_account_may_not_use_is_error_send_as_denied(ews: StandaloneEws, account: Account) -> None:
    """A message whose From is not the mailbox is refused with ErrorSendAsDenied, and nothing is sent."""
    with pytest.raises(ErrorSendAsDenied):
        Message(account=account, mime_content=mime("forged", sender="ceo@fourthcoffee.test")).send(save_copy=False)
    assert ews.stats.transport(FOREST, "queued") == 0


def test_a_message_without_recipients_is_error_invalid_recipients(ews: StandaloneEws, account: Account) -> None:
    """Sending a message with no recipient at all is ErrorInvalidRecipients."""
    with pytest.raises(ErrorInvalidRecipients):
        Message(account=account, subject="nobody", body="to no one").send(save_copy=False)


def test_mail_for_a_domain_no_connector_serves_is_an_ndr_owed_to_the_sender(ews: StandaloneEws,
                                                                             account: Account) -> None:
    """Sent to a domain the forest has no Send connector for, the transport owes the sender an NDR 5.4.4."""
    Message(account=account, mime_content=mime("far away", to="someone@contoso.example")).send(save_copy=False)
    wait_for(lambda: bool(ews.notices.notices()), timeout=10, what="the NDR")
    (notice,) = ews.notices.notices()
    assert (notice.action, notice.status, notice.sender) == ("failed", "5.4.4", MAILBOX)
