"""A mailbox's ``imap:`` section: how to reach it over IMAP4rev1 (probe.mailbox.imap reads it).

Folders over IMAP are the server's mailbox names (``INBOX``, ``Junk``, ``Spam``...); the neutral names
``inbox`` and ``junkemail`` are accepted too and stand for INBOX and the mailbox the server marks
``\\Junk`` (RFC 6154 SPECIAL-USE). Cleanup: ``move_to_deleted_items`` is UID MOVE to the ``\\Trash`` mailbox
(or ``trash_folder``); ``hard_delete`` is ``\\Deleted`` then UID EXPUNGE of those UIDs only; IMAP has no
recoverable deletion, so ``soft_delete`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal

from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section, warn_unverified
from probe.secret import Secret
from probe.vocabulary import SEARCHED_FOLDERS

ImapTls = Literal["implicit", "starttls"]
ImapAuth = Literal["plain", "login"]

IMPLICIT_PORT: Final = 993
STARTTLS_PORT: Final = 143

DOC: Final = "How to reach the mailbox over IMAP (TLS always: implicit, or STARTTLS before any credentials)."

FIELDS: Final = (
    FieldSpec(key="host", kind="host", required=True, doc="The IMAP server's host name or IP address."),
    FieldSpec(key="port", kind="port", default=IMPLICIT_PORT,
              doc=f"The TCP port; default {IMPLICIT_PORT}, or {STARTTLS_PORT} with tls: starttls."),
    FieldSpec(key="tls", kind="choice", choices=("implicit", "starttls"), default="implicit",
              doc="implicit (IMAPS, TLS from connect) or starttls (required before any credentials)."),
    FieldSpec(key="username", kind="string", required=True, doc="The account, e.g. mailflow.probe@example.com."),
    FieldSpec(key="password", kind="secret", required=True,
              doc="The account's password (UTF-8): password_env, password_file, or password."),
    FieldSpec(key="auth", kind="choice", choices=("plain", "login"), default="plain",
              doc="The SASL mechanism: PLAIN (RFC 4616) or LOGIN; both carry UTF-8."),
    FieldSpec(key="ca_file", kind="path", must_exist=True,
              doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
    FieldSpec(key="verify", kind="boolean", default=True, doc="Verify the server's certificate and name."),
    FieldSpec(key="trash_folder", kind="string",
              doc="Where move_to_deleted_items moves probes; default: the mailbox marked \\Trash."),
    FieldSpec(key="timeout", kind="duration", positive=True, default=30.0, doc="The timeout of each IMAP command."),
)
_DEFAULT: Final = {spec.key: spec.default for spec in FIELDS}

FOLDERS: Final = FieldSpec(
    key="folders", kind="text_list", noun="mailbox name", default=SEARCHED_FOLDERS,
    doc="The IMAP mailboxes searched for probes (inbox: INBOX; junkemail: the \\Junk special-use mailbox).")
"""How an IMAP mailbox's ``folders`` are read: any mailbox names."""

REFUSED_CLEANUPS: Final = {
    "soft_delete": "IMAP has no recoverable deletion; use hard_delete (\\Deleted and UID EXPUNGE of the probes "
                   "only) or move_to_deleted_items (UID MOVE to the \\Trash mailbox)",
}


@dataclass(frozen=True, kw_only=True)
class ImapConfig:
    """How to reach one mailbox over IMAP."""

    name: ClassVar[str] = "imap"  # the backend's name: its section's YAML key, the mailbox_up label

    host: str
    username: str
    password: Secret
    port: int = _DEFAULT["port"]
    tls: ImapTls = _DEFAULT["tls"]
    auth: ImapAuth = _DEFAULT["auth"]
    ca_file: Path | None = _DEFAULT["ca_file"]
    verify: bool = _DEFAULT["verify"]
    trash_folder: str | None = _DEFAULT["trash_folder"]
    timeout: float = _DEFAULT["timeout"]


def build(ctx: Context, section: Section) -> ImapConfig:
    """Make the ImapConfig of a read ``imap:`` section (port 143 by default with STARTTLS)."""
    warn_unverified(ctx, section)
    values = section.scalars()
    if values.get("tls") == "starttls":
        values.setdefault("port", STARTTLS_PORT)
    return ImapConfig(**values)
