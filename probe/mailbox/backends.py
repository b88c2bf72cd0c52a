"""The mailbox backends, one row each: how a mailbox of a config's backend section is opened.

The daemon and ``check`` both open every mailbox through ``open_mailbox``; nothing else names a backend's
class. A backend's module is imported when a mailbox of it is opened, so each brings in its own
libraries only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from probe.config import MailboxConfig
from probe.mailbox.base import Mailbox

MailboxFactory = Callable[[MailboxConfig, bytes], Mailbox]
"""Open a mailbox from its config and the signing key (what the daemon and check accept for tests)."""


def _ews(config: MailboxConfig, key: bytes) -> Mailbox:
    from probe.mailbox.ews import EwsMailbox

    return EwsMailbox(config, key=key)


def _imap(config: MailboxConfig, key: bytes) -> Mailbox:
    from probe.mailbox.imap import ImapMailbox

    return ImapMailbox(config, key=key)


def _graph(config: MailboxConfig, key: bytes) -> Mailbox:
    from probe.mailbox.graph import GraphMailbox

    return GraphMailbox(config, key=key)


OPENERS: Final[dict[str, MailboxFactory]] = {
    "ews": _ews,
    "imap": _imap,
    "graph": _graph,
}
"""By backend name (a mailbox config's backend section key, probe.config.backends), how to open one."""


def open_mailbox(config: MailboxConfig, *, key: bytes) -> Mailbox:
    """Open the mailbox ``config`` describes with the backend its config section names."""
    return OPENERS[config.backend.name](config, key)
