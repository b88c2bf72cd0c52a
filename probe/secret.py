"""Secrets: a value whose repr is ``<secret>``, and redaction of every known secret from text."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final

REDACTED: Final = "<secret>"

_SHORTEST: Final = 4  # a secret is remembered from this length on
_known: set[str] = set()
_known_lock = threading.Lock()


class Secret:
    """Hold a password or key; it never shows itself in repr, str, format or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= _SHORTEST:
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


@dataclass(frozen=True)
class _Known:
    """The known secrets as redact reads them, replaced whole when one is added (so a reader sees one state)."""

    longest_first: tuple[str, ...] = ()  # so a secret inside another goes with it
    by_length: dict[int, frozenset[str]] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)  # a secret's place in longest_first


def _remember(value: str) -> None:
    global _stale  # noqa: PLW0603 - the next redact sorts again, not each new secret
    with _known_lock:
        if value not in _known:
            _known.add(value)
            _stale = True  # sorting here made 25,000 distinct passwords take 19.6 s to load


def _current() -> _Known:
    """Return the known secrets, sorted and indexed again only after a new one appeared."""
    global _snapshot, _stale  # noqa: PLW0603 - one snapshot, shared by every redact
    if _stale:
        with _known_lock:
            longest = tuple(sorted(_known, key=len, reverse=True))
            by_length: dict[int, set[str]] = {}
            for value in longest:
                by_length.setdefault(len(value), set()).add(value)
            _snapshot = _Known(longest, {size: frozenset(values) for size, values in by_length.items()},
                               {value: place for place, value in enumerate(longest)})
            _stale = False
    return _snapshot


def _present(known: _Known, text: str) -> list[str]:
    """Return the known secrets that occur in ``text``, longest first: each substring of a secret's length
    looked up, so the cost follows the text and the number of distinct lengths, not the number of secrets."""
    found = {text[start:start + size] for size, values in known.by_length.items() if size <= len(text)
             for start in range(len(text) - size + 1) if text[start:start + size] in values}
    return sorted(found, key=known.rank.__getitem__)


def redact(text: str) -> str:
    """Replace every secret known to this process in ``text`` by ``<secret>``."""
    known = _current()
    many = len(known.by_length) * len(text) < len(known.longest_first)  # cheaper to look up than to try each
    candidates = _present(known, text) if many else known.longest_first
    for value in candidates:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


_snapshot = _Known()
_stale = False
