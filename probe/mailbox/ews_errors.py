"""An EWS failure in the probe's words: which mailbox reason an exchangelib, requests or socket error is.

Shared by the two EWS clients of the probe, the mailbox backend (probe.mailbox.ews) and the connector probe's
submission (probe.submit.ews), so both read the same exception the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Final

import requests
from exchangelib.errors import (
    CASError,
    ErrorAccessDenied,
    ErrorExceededConnectionCount,
    ErrorInternalServerError,
    ErrorInternalServerTransientError,
    ErrorMailboxStoreUnavailable,
    ErrorServerBusy,
    ErrorTimeoutExpired,
    ErrorTooManyObjectsOpened,
    MalformedResponseError,
    UnauthorizedError,
)

from probe.secret import redact
from probe.vocabulary import MailboxReason

_MAX_ERROR: Final = 400


def _chain(exc: BaseException) -> list[BaseException]:
    """Return the exception and those it was raised from, during, or because of; outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    pending: list[BaseException] = [exc]
    while pending and len(chain) < 32:
        current = pending.pop(0)
        if current in chain:
            continue
        chain.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None),
                  *(a for a in current.args[:1])]
        pending += [e for e in linked if isinstance(e, BaseException)]
    return chain


def _is_server_error(exc: BaseException) -> bool:
    if isinstance(exc, ErrorInternalServerError | ErrorInternalServerTransientError | CASError
                  | ErrorMailboxStoreUnavailable | ErrorTimeoutExpired):
        return not any(isinstance(e, requests.RequestException | OSError) for e in _chain(exc))
    return isinstance(exc, MalformedResponseError) and "Code: 5" in str(exc)


_RULES: Final[tuple[tuple[MailboxReason, Callable[[BaseException], bool]], ...]] = (
    (MailboxReason.UNREACHABLE, lambda e: isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError)),  # dropped
    (MailboxReason.TLS, lambda e: isinstance(e, requests.exceptions.SSLError | ssl.SSLError)),
    (MailboxReason.TIMEOUT, lambda e: isinstance(e, requests.exceptions.Timeout | TimeoutError)),
    (MailboxReason.UNREACHABLE, lambda e: isinstance(
        e, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError | ConnectionError)),
    (MailboxReason.UNAUTHORIZED, lambda e: isinstance(e, UnauthorizedError | ErrorAccessDenied)
     or (isinstance(e, PermissionError) and str(e).startswith("Access denied"))),  # requests_ntlm: a bare 401
    (MailboxReason.THROTTLED, lambda e: isinstance(
        e, ErrorServerBusy | ErrorExceededConnectionCount | ErrorTooManyObjectsOpened)),
    (MailboxReason.SERVER_ERROR, _is_server_error),
)


def classify(exc: BaseException) -> MailboxReason:
    """Say why a mailbox request failed, from the most specific cause in the exception's chain."""
    chain = _chain(exc)
    for reason, matches in _RULES:
        if any(matches(e) for e in chain):
            return reason
    return MailboxReason.PROTOCOL


def describe(exc: BaseException) -> str:
    """Return a short, redacted description of a failure."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _MAX_ERROR:
        text = text[:_MAX_ERROR] + "..."
    return redact(text)
