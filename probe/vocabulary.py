"""The one vocabulary of verdicts, stages and reasons (DESIGN.md), shared by CLI, JSON, metrics and logs."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What became of one probe."""

    DELIVERED = "delivered"
    SEND_FAILED = "send_failed"
    LOST = "lost"
    LATE = "late"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"


class Stage(StrEnum):
    """The SMTP submission stage at which a send failed (or was timed)."""

    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class SendReason(StrEnum):
    """Why the smart host did not accept a probe."""

    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    TLS_UNAVAILABLE = "tls_unavailable"
    TLS_CERTIFICATE = "tls_certificate"
    TLS_HANDSHAKE = "tls_handshake"
    AUTH_UNAVAILABLE = "auth_unavailable"
    AUTH_FAILED = "auth_failed"
    TEMPFAIL = "tempfail"
    REJECTED = "rejected"
    PROTOCOL = "protocol"


class MailboxReason(StrEnum):
    """Why a mailbox could not be observed."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    UNAUTHORIZED = "unauthorized"
    TLS = "tls"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    PROTOCOL = "protocol"


class BounceReason(StrEnum):
    """Why a probe bounced: the class of the enhanced status code of its NDR (RFC 3463)."""

    RECIPIENT = "recipient"  # X.1.X: addressing (unknown recipient, bad address)
    ROUTING = "routing"  # X.4.X: network and routing (loop, no route, expired in a queue, access denied at the edge)
    SIZE = "size"  # X.3.4: message too big for the system
    POLICY = "policy"  # X.7.X: security or policy (transport rule, not authorized)
    OTHER = "other"


class UnknownReason(StrEnum):
    """Why a probe ended ``unknown``, where one reason is known (DESIGN.md: reason ``local``)."""

    LOCAL = "local"  # the probe's own host failed: never blamed on a smart host or a mailbox


class LocalResource(StrEnum):
    """What the probe's own host ran out of (verdict ``unknown``, reason ``local``)."""

    DESCRIPTORS = "descriptors"  # EMFILE, ENFILE
    MEMORY = "memory"  # MemoryError, ENOMEM, ENOBUFS
    DISK = "disk"  # ENOSPC, EDQUOT (the state file)
    THREADS = "threads"  # RuntimeError("can't start new thread")


class MailboxFolder(StrEnum):
    """A mailbox folder by its backend-neutral name; each backend maps it to its own (EWS: distinguished ids)."""

    INBOX = "inbox"
    JUNKEMAIL = "junkemail"
    DELETEDITEMS = "deleteditems"


SEARCHED_FOLDERS: tuple[MailboxFolder, ...] = (MailboxFolder.INBOX, MailboxFolder.JUNKEMAIL)
"""The folders a mailbox's ``folders`` may name: where a probe can arrive."""


CONNECTOR_PAIR = "@connector"
"""The ``smart_host`` label of a route's connector probe: submitted into the source forest as a user would send it,
so that its Send connector, not the probe, chooses the smart host (``connector_carried_total`` says which)."""


class Diagnosis(StrEnum):
    """Where a route's trouble lies, read across its connector probe and its direct probes."""

    SOURCE_SIDE = "source_side"  # the connector path fails while a smart host delivers directly
    FAILING_OVER = "failing_over"  # the connector delivers while a smart host fails directly: redundancy lost
    TARGET_SIDE = "target_side"  # the connector path and every smart host fail
