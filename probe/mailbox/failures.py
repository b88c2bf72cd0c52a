"""What every mailbox client says about a failure: the reason it found itself, the chain of causes, the text.

Each backend (and the connector probe's EWS submission) keeps its own rules for which reason an exception
is; these are the pieces those rules and their log lines share.
"""

from __future__ import annotations

from typing import Final

from probe.secret import redact
from probe.vocabulary import MailboxReason

MAX_ERROR: Final = 400  # characters of a failure's description kept


class ReasonedError(Exception):
    """A failure the probe found itself, with the mailbox reason it counts as."""

    def __init__(self, reason: MailboxReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def cause_chain(exc: BaseException, *, limit: int = 16) -> list[BaseException]:
    """Return the exception and those it was raised from or during (``__cause__``, else ``__context__``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < limit:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe(exc: BaseException) -> str:
    """Return a short, redacted description of a failure."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR] + "..."
    return redact(text)
