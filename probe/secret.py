"""Secrets: a value whose repr is ``<secret>``, and redaction of every known secret from text."""

from __future__ import annotations

import threading
from typing import Final

REDACTED: Final = "<secret>"

_known: set[str] = set()
_known_lock = threading.Lock()
_longest_first: tuple[str, ...] = ()  # _known, longest first (so a secret inside another goes with it)
_sorted = True  # whether _longest_first holds every known secret


class Secret:
    """Hold a password or key; it never shows itself in repr, str, format or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 4:
            _remember(value)

    def reveal(self) -> str:
        """Return the value itself, for the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not serialised")


def _remember(value: str) -> None:
    global _sorted  # noqa: PLW0603 - the sorted copy is made again by the next redact, not per new secret
    with _known_lock:
        if value not in _known:
            _known.add(value)
            _sorted = False  # sorting here made 25,000 distinct passwords take 19.6 s to load


def _by_length() -> tuple[str, ...]:
    """Return the known secrets, longest first (sorted again only after a new one appeared)."""
    global _longest_first, _sorted  # noqa: PLW0603 - one sorted copy, shared by every redact
    if not _sorted:
        with _known_lock:
            _longest_first = tuple(sorted(_known, key=len, reverse=True))
            _sorted = True
    return _longest_first


def redact(text: str) -> str:
    """Replace every secret known to this process in ``text`` by ``<secret>``."""
    for value in _by_length():
        if value in text:
            text = text.replace(value, REDACTED)
    return text
