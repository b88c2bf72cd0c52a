"""CreateItem for messages: SaveOnly, SendOnly and SendAndSaveCopy, as Exchange 2013-2019 answer them.

A message is given as MimeContent (base64 RFC 5322, as exchangelib sends ``Message(mime_content=...)``) or as
properties (Subject, Body, To/Cc/BccRecipients, From, InternetMessageId, InternetHeaders extended properties).
The mailbox it is created in (and sent from) is the request's: the anchor mailbox the account acts for, or its
own. Sending hands the message to the forest's transport (``EwsRequest.outbox``), stamped as Exchange stamps a
submission (Date, Message-ID and From when missing, Bcc taken off); a From that is not the mailbox is
ErrorSendAsDenied; no recipient is ErrorInvalidRecipients. SendOnly returns no item id (an empty ``m:Items``),
SendAndSaveCopy saves a copy (Sent Items unless SavedItemFolderId says otherwise), SaveOnly saves the message
(Drafts by default) and returns its id.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.policy
import email.utils
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lxml import etree

from probe.lab.ews import soap
from probe.lab.ews.context import EwsRequest
from probe.lab.ews.folders import FolderError, FolderRef, resolve
from probe.lab.ews.soap import m, sub, t

DISPOSITIONS: Final = ("SaveOnly", "SendOnly", "SendAndSaveCopy")
_DEFAULT_FOLDER: Final = {"SaveOnly": "drafts", "SendAndSaveCopy": "sentitems"}
_RECIPIENT_LISTS: Final = (("ToRecipients", "To"), ("CcRecipients", "Cc"), ("BccRecipients", "Bcc"))
_POLICY: Final = email.policy.SMTP.clone(max_line_length=998)


class CreateError(Exception):
    """A message that cannot be created or sent: the response code and text Exchange gives."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


@dataclass(frozen=True)
class _Draft:
    """A message ready to save or send: its MIME and its recipients."""

    mime: email.message.EmailMessage
    recipients: tuple[str, ...]


def _addresses(parent: etree._Element | None) -> list[str]:
    if parent is None:
        return []
    return [(text or "").strip() for text in (e.findtext(t("EmailAddress")) for e in parent.iter(t("Mailbox")))
            if text and text.strip()]


def _from_mime(elem: etree._Element) -> email.message.EmailMessage:
    try:
        raw = base64.b64decode((elem.text or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CreateError("ErrorMimeContentInvalid", "The MIME content is not valid base64.") from None
    parsed = email.message_from_bytes(raw, _class=email.message.EmailMessage, policy=_POLICY)
    if not isinstance(parsed, email.message.EmailMessage) or not parsed.keys():
        raise CreateError("ErrorMimeContentConversionFailed", "The MIME content could not be converted.")
    return parsed


def _from_properties(message: etree._Element) -> email.message.EmailMessage:
    mime = email.message.EmailMessage(policy=_POLICY)
    mime["Subject"] = (message.findtext(t("Subject")) or "").strip()
    for container, header in _RECIPIENT_LISTS:
        found = _addresses(message.find(t(container)))
        if found:
            mime[header] = ", ".join(found)
    sender = _addresses(message.find(t("From")))
    if sender:
        mime["From"] = sender[0]
    message_id = (message.findtext(t("InternetMessageId")) or "").strip()
    if message_id:
        mime["Message-ID"] = message_id
    for prop in message.iterfind(t("ExtendedProperty")):
        uri = prop.find(t("ExtendedFieldURI"))
        if uri is not None and uri.get("DistinguishedPropertySetId") == "InternetHeaders" and uri.get("PropertyName"):
            mime[uri.get("PropertyName", "")] = (prop.findtext(t("Value")) or "").strip()
    body = message.find(t("Body"))
    subtype = "html" if body is not None and body.get("BodyType") == "HTML" else "plain"
    mime.set_content(body.text or "" if body is not None else "", subtype=subtype)
    return mime


def _draft(message: etree._Element, mailbox: str, fqdn: str) -> _Draft:
    """Return the message as the mailbox sends it, stamped as Exchange stamps a submission."""
    mime_elem = message.find(t("MimeContent"))
    mime = _from_mime(mime_elem) if mime_elem is not None else _from_properties(message)
    headers = [str(value) for name in ("To", "Cc", "Bcc") for value in mime.get_all(name, [])]
    listed = [address for _, address in email.utils.getaddresses(headers)]
    if mime_elem is not None:
        listed += [a for container, _ in _RECIPIENT_LISTS for a in _addresses(message.find(t(container)))]
    senders = [a for _, a in email.utils.getaddresses([str(v) for v in mime.get_all("From", [])])]
    if any(a.lower() != mailbox for a in senders):
        raise CreateError("ErrorSendAsDenied", "The user account which was used to submit this request does not "
                          "have the right to send mail on behalf of the specified sending account.")
    if not senders:
        mime["From"] = mailbox
    if "Date" not in mime:
        mime["Date"] = email.utils.format_datetime(datetime.now(UTC))
    if "Message-ID" not in mime:
        mime["Message-ID"] = f"<{uuid.uuid4().hex}@{fqdn}>"
    del mime["Bcc"]
    recipients = tuple(dict.fromkeys(a.strip().lower() for a in listed if "@" in a))
    return _Draft(mime=mime, recipients=recipients)


def _saved_folder(request: EwsRequest, disposition: str) -> FolderRef | None:
    """Return where a copy is saved: SavedItemFolderId, else the disposition's default; None for SendOnly."""
    if disposition == "SendOnly":
        return None
    container = request.operation.find(m("SavedItemFolderId"))
    if container is not None and len(container):
        try:
            return resolve(container[0], request)
        except FolderError as exc:
            raise CreateError(exc.code, exc.text) from None
    return FolderRef(request.default_mailbox, _DEFAULT_FOLDER[disposition])


def _create_one(request: EwsRequest, message: etree._Element, disposition: str | None) -> etree._Element | None:
    """Save and/or send one message; return the saved item's element for SaveOnly (else None)."""
    if message.tag != t("Message"):
        raise CreateError("ErrorInvalidRequest", "The lab creates messages only.")
    if disposition not in DISPOSITIONS:
        raise CreateError("ErrorMessageDispositionRequired", "MessageDisposition is required for messages.")
    mailbox = request.default_mailbox
    folder = _saved_folder(request, disposition)
    draft = _draft(message, mailbox, f"mail.{mailbox.rpartition('@')[2]}")
    raw = draft.mime.as_bytes(policy=_POLICY)
    if disposition != "SaveOnly":
        if not draft.recipients:
            raise CreateError("ErrorInvalidRecipients", "At least one recipient isn't valid.")
        if request.outbox is None:
            raise CreateError("ErrorMessageSubmissionBlocked", "This endpoint has no transport to submit to.")
        request.outbox.send(sender=mailbox, recipients=draft.recipients, raw=raw)
    if folder is None:
        return None
    saved = request.store.deliver(folder.address, raw, folder=folder.name)
    saved.is_read = disposition != "SaveOnly"
    if disposition != "SaveOnly":
        return None
    elem = etree.Element(t("Message"))
    sub(elem, t("ItemId"), Id=saved.item_id, ChangeKey=saved.change_key)
    return elem


def create_item(request: EwsRequest) -> etree._Element:
    """Answer CreateItem for messages: one response message per item, each with its (possibly empty) m:Items."""
    disposition = request.operation.get("MessageDisposition")
    root, messages = soap.response("CreateItem")
    for item in request.operation.iterfind(f"{m('Items')}/*"):
        if not isinstance(item.tag, str):
            continue
        try:
            created = _create_one(request, item, disposition)
        except CreateError as exc:
            sub(soap.error(messages, "CreateItem", exc.code, exc.text), m("Items"))
            continue
        items = sub(soap.success(messages, "CreateItem"), m("Items"))
        if created is not None:
            items.append(created)
    return root
