"""One IMAP connection of a probe mailbox, with IMAPClient: TLS first, SASL, the folders' names, and errors.

TLS always comes before credentials: implicit TLS (IMAPS), or STARTTLS on a server that offers it (one
that does not gets no credentials: the connection fails with reason ``tls``). The certificate and the
host name are checked against the system's CAs or the mailbox's ``ca_file``. SASL PLAIN or LOGIN carry
the password as UTF-8 (the LOGIN command cannot: it is never used).

IMAPClient (BSD, maintained) is used for what hand-written code would get wrong: response parsing
(literals, FETCH items, modified UTF-7 mailbox names), IDLE, MOVE and SPECIAL-USE listing. Python 3.11's
imaplib under it has no IDLE.
"""

from __future__ import annotations

import contextlib
import email.header
import email.parser
import email.policy
import imaplib
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from probe.config import ImapConfig, MailboxConfig
from probe.secret import redact
from probe.vocabulary import MailboxFolder, MailboxReason

JUNK_FLAG: Final = b"\\Junk"
TRASH_FLAG: Final = b"\\Trash"
_MAX_ERROR: Final = 400
_CODE: Final = re.compile(r"\[([A-Z-]+)")
_CODES: Final = {  # RFC 5530 response codes (and Exchange's THROTTLED) to reasons
    "AUTHENTICATIONFAILED": MailboxReason.UNAUTHORIZED, "AUTHORIZATIONFAILED": MailboxReason.UNAUTHORIZED,
    "EXPIRED": MailboxReason.UNAUTHORIZED, "PRIVACYREQUIRED": MailboxReason.TLS,
    "LIMIT": MailboxReason.THROTTLED, "INUSE": MailboxReason.THROTTLED, "THROTTLED": MailboxReason.THROTTLED,
    "SERVERBUG": MailboxReason.SERVER_ERROR, "UNAVAILABLE": MailboxReason.SERVER_ERROR,
}


class ImapError(Exception):
    """A failure the probe found itself (no STARTTLS, no such mailbox...), with the reason it counts as."""

    def __init__(self, reason: MailboxReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def imap_section(config: MailboxConfig) -> ImapConfig:
    """Return the mailbox's ``imap:`` section; a mailbox of another backend is a caller's mistake."""
    if not isinstance(config.backend, ImapConfig):
        raise TypeError(f"mailbox {config.name} is not an IMAP mailbox")
    return config.backend


def tls_context(imap: ImapConfig) -> ssl.SSLContext:
    """Return the TLS context of a mailbox: its CAs, name checks on unless ``verify: false``, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=str(imap.ca_file) if imap.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not imap.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(imap: ImapConfig) -> IMAPClient:
    """Open a TLS connection (implicit, or STARTTLS before anything else) and authenticate; raise on failure."""
    context = tls_context(imap)
    implicit = imap.tls == "implicit"
    client = IMAPClient(imap.host, port=imap.port, ssl=implicit, ssl_context=context, timeout=imap.timeout)
    try:
        if not implicit:
            _starttls(client, context)
        client.normalise_times = False  # INTERNALDATE as the server wrote it, with its zone
        _authenticate(client, imap)
    except BaseException:
        shut(client)
        raise
    return client


def _starttls(client: IMAPClient, context: ssl.SSLContext) -> None:
    if not client.has_capability("STARTTLS"):
        raise ImapError(MailboxReason.TLS, "the server offers no STARTTLS; no credentials were sent")
    client.starttls(context)


def _authenticate(client: IMAPClient, imap: ImapConfig) -> None:
    mechanism = imap.auth.upper()
    if not client.has_capability(f"AUTH={mechanism}"):
        offered = sorted(c.decode()[5:] for c in client.capabilities() if c.startswith(b"AUTH="))
        raise ImapError(MailboxReason.PROTOCOL, f"the server offers no SASL {mechanism} (it offers "
                        f"{', '.join(offered) or 'none'}); set imap.auth to one the probe knows: plain, login")
    password = imap.password.reveal()
    if mechanism == "PLAIN":
        client.plain_login(imap.username, password)
        return
    answers = {b"username:": imap.username, b"password:": password}
    client.sasl_login("LOGIN", lambda challenge: answers.get(challenge.strip().lower(), ""))


def shut(client: IMAPClient) -> None:
    """Close a connection at once, without LOGOUT (it may be dead already)."""
    with contextlib.suppress(OSError, AttributeError):
        client.socket().shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):  # closing what may already be closed
        client.shutdown()


def logout(client: IMAPClient) -> None:
    """Log out politely, or close the connection when that fails."""
    try:
        client.logout()
    except Exception:
        shut(client)


@dataclass(frozen=True, kw_only=True)
class Folder:
    """A searched folder: its IMAP mailbox name and the name it is reported by (neutral where there is one)."""

    imap_name: str
    reported: MailboxFolder | str


@dataclass(frozen=True, kw_only=True)
class Folders:
    """The configured folders as this server names them, and where cleanup moves probes."""

    searched: tuple[Folder, ...]
    trash: str | None


def resolve_folders(client: IMAPClient, config: MailboxConfig) -> Folders:
    """Map the configured folders to the server's mailboxes (junkemail: the ``\\Junk`` one); raise if one is missing."""
    listing = [(flags, str(name)) for flags, _delimiter, name in client.list_folders()]
    names = {name for _flags, name in listing}
    junk = next((name for flags, name in listing if JUNK_FLAG in flags), None)
    trash = imap_section(config).trash_folder or next((name for flags, name in listing if TRASH_FLAG in flags), None)
    searched = []
    for wanted in config.folders:
        if wanted == MailboxFolder.INBOX or str(wanted).upper() == "INBOX":
            searched.append(Folder(imap_name="INBOX", reported=MailboxFolder.INBOX))
        elif wanted == MailboxFolder.JUNKEMAIL:
            if junk is None:
                raise ImapError(MailboxReason.PROTOCOL, "no mailbox is marked \\Junk (SPECIAL-USE); name the junk "
                                "mailbox in folders, e.g. [INBOX, Junk]")
            searched.append(Folder(imap_name=junk, reported=MailboxFolder.JUNKEMAIL))
        elif wanted in names:
            searched.append(Folder(imap_name=str(wanted), reported=MailboxFolder.JUNKEMAIL if wanted == junk
                                   else str(wanted)))
        else:
            shown = ", ".join(sorted(names)[:20])
            raise ImapError(MailboxReason.PROTOCOL, f"the server has no mailbox named {wanted!r}; it has {shown}")
    return Folders(searched=tuple(searched), trash=trash)


# -- what a fetched message says --------------------------------------------------------------------------

_HEADER_PARSER: Final = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def header_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Return the (name, value) pairs of a header block; encoded words decoded where they can be."""
    message = _HEADER_PARSER.parsebytes(raw)
    return [(name, _decoded(str(value))) for name, value in message.items()]


def _decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


# -- errors -------------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _by_code(exc: BaseException) -> MailboxReason | None:
    if not isinstance(exc, IMAPClientError | imaplib.IMAP4.error):
        return None
    for code in _CODE.findall(str(exc)):
        if code in _CODES:
            return _CODES[code]
    return None


_RULES: Final[tuple[tuple[MailboxReason, Callable[[BaseException], bool]], ...]] = (
    (MailboxReason.UNREACHABLE, lambda e: isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError)),  # dropped
    (MailboxReason.TLS, lambda e: isinstance(e, ssl.SSLError | ssl.CertificateError)),
    (MailboxReason.TIMEOUT, lambda e: isinstance(e, TimeoutError)),
    (MailboxReason.UNREACHABLE, lambda e: isinstance(e, OSError | IMAPClientAbortError | imaplib.IMAP4.abort)),
    (MailboxReason.UNAUTHORIZED, lambda e: isinstance(e, LoginError)),
)


def classify(exc: BaseException) -> MailboxReason:
    """Say why an IMAP operation failed: the probe's own finding, a response code, or the exception's kind."""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, ImapError):
            return link.reason
        coded = _by_code(link)
        if coded is not None:
            return coded
    for reason, matches in _RULES:
        if any(matches(link) for link in chain):
            return reason
    return MailboxReason.PROTOCOL


def describe(exc: BaseException) -> str:
    """Return a short, redacted description of a failure."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _MAX_ERROR:
        text = text[:_MAX_ERROR] + "..."
    return redact(text)
