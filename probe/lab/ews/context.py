"""What an EWS operation handler gets to work with: the store, the forest and the request's options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lxml import etree

from probe.lab.store import MailboxStore

if TYPE_CHECKING:
    from probe.lab.ews.subscriptions import SubscriptionRegistry


class Outbox(Protocol):
    """Where a forest's EWS endpoint hands a message it sends (CreateItem SendOnly, SendAndSaveCopy)."""

    def send(self, *, sender: str, recipients: Sequence[str], raw: bytes) -> str:
        """Queue ``raw`` from the mailbox ``sender`` to ``recipients``; return its queue id."""
        ...


@dataclass(kw_only=True)
class EwsRequest:
    """One authenticated EWS request, as the operation handlers see it."""

    store: MailboxStore
    forest: str
    operation: etree._Element
    header: etree._Element | None
    milliseconds: bool
    default_mailbox: str
    subscriptions: SubscriptionRegistry
    owa_url: str = "https://localhost/owa/"
    outbox: Outbox | None = None  # the forest's transport; without one, sending is refused

    def serves(self, address: str) -> bool:
        """Say whether this endpoint serves the mailbox ``address``."""
        return self.store.has_mailbox(address) and self.store.forest_of(address) == self.forest
