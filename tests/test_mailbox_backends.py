"""The mailbox seam: one table of backends, one ``open_mailbox`` for the daemon and check, neutral types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from probe.config import BACKENDS, EwsConfig, MailboxConfig
from probe.mailbox.backends import OPENERS, open_mailbox
from probe.mailbox.base import ItemRef
from probe.mailbox.ews import EwsMailbox
from probe.secret import Secret

REPO = Path(__file__).resolve().parent.parent


def test_every_configurable_backend_can_be_opened_and_no_other() -> None:
    """The config's backend sections and the mailbox openers name the same backends."""
    assert set(OPENERS) == {backend.name for backend in BACKENDS}


@pytest.mark.usefixtures("fresh_exchangelib")
def test_open_mailbox_opens_the_backend_the_config_section_names() -> None:
    """A mailbox with an ews: section opens as an EWS mailbox (nothing is sent until it searches)."""
    config = MailboxConfig(name="fc", address="probe@fourthcoffee.com", backend=EwsConfig(
        url="https://127.0.0.1:9/EWS/Exchange.asmx", username="FC\\svc", password=Secret("pw"), version="15.2.1544.4"))
    mailbox = open_mailbox(config, key=b"k" * 32)
    try:
        assert isinstance(mailbox, EwsMailbox)
    finally:
        mailbox.close()


def _named_backend_classes(path: Path) -> set[str]:
    """Return the backend mailbox classes (``...Mailbox`` from probe.mailbox.<backend>) a module imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("probe.mailbox."):
            backend_module = node.module not in {"probe.mailbox.base", "probe.mailbox.backends",
                                                 "probe.mailbox.clock", "probe.mailbox.received",
                                                 # EWS support that is no backend: its error words, its fence
                                                 "probe.mailbox.ews_errors", "probe.mailbox.ews_internals"}
            names |= {f"{node.module}.{a.name}" for a in node.names if backend_module}
    return names


def test_only_the_backend_table_names_a_backend() -> None:
    """Outside probe/mailbox, nothing imports a backend module: daemon and check open mailboxes by the table."""
    outside = [path for path in (REPO / "probe").rglob("*.py")
               if "mailbox" not in path.relative_to(REPO / "probe").parts[:1] and "lab" not in path.parts]
    assert {str(path.relative_to(REPO)): _named_backend_classes(path) for path in outside
            if _named_backend_classes(path)} == {}


def test_an_item_reference_survives_the_ledgers_text_form() -> None:
    """dumps/loads round-trips any text, quotes and non-ASCII included."""
    for ref in (ItemRef("AAMkAD=="), ItemRef("AAMk/+=", "CQAAABYA"), ItemRef('a"b\\c', "ü\n\x00")):
        assert ItemRef.loads(ref.dumps()) == ref
