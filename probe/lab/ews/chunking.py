"""How the EWS endpoint cuts a notification stream (GetStreamingEvents) into HTTP chunks.

Exchange writes each notification when it happens, but nothing keeps one notification in one HTTP chunk or
one read on the client's side: IIS, load balancers and TCP may hand over several in one piece, or one in
several. By default the lab writes one envelope per chunk; ``RandomCuts`` cuts the stream anywhere (inside an
envelope, across several), holding the tail back until the next notification, so that clients' stream
readers are tried on what a network can make of Exchange's stream.
"""

from __future__ import annotations

import itertools
import random
from typing import Protocol


class Chunking(Protocol):
    """Turns the envelopes of one stream into the chunks to write, in order."""

    pause: float  # seconds between two chunks written for one envelope, so that they arrive apart

    def cut(self, envelope: bytes) -> list[bytes]:
        """Return the chunks to write now that ``envelope`` is ready (may hold some of it back)."""
        ...

    def rest(self) -> list[bytes]:
        """Return what is still held back, at the end of the stream."""
        ...


class EnvelopePerChunk:
    """Each envelope in a chunk of its own (what Exchange writes, read as written)."""

    pause = 0.0

    def cut(self, envelope: bytes) -> list[bytes]:
        """Write the envelope whole."""
        return [envelope]

    def rest(self) -> list[bytes]:
        """Hold nothing back."""
        return []


class RandomCuts:
    """Cut the stream at seeded random places: a chunk may end inside an envelope or hold several."""

    def __init__(self, seed: int, *, pause: float = 0.002) -> None:
        self._random = random.Random(seed)
        self._held = b""
        self.pause = pause

    def cut(self, envelope: bytes) -> list[bytes]:
        """Release a random prefix of what is pending, in one to three chunks; hold back the rest."""
        data = self._held + envelope
        release = self._random.randint(0, len(data))
        self._held = data[release:]
        points = sorted(self._random.sample(range(1, release), k=min(2, max(0, release - 1))))
        bounds = [0, *points, release]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def rest(self) -> list[bytes]:
        """Release what is held."""
        held, self._held = self._held, b""
        return [held] if held else []
