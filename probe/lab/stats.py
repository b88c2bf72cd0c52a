"""Counters the lab keeps so tests and benchmarks can see what the probe really did."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Final

_NOT_COMMANDS: Final = frozenset({"connections", "login_before_tls"})  # counted beside the IMAP commands


class LabStats:
    """Requests per EWS operation and IMAP command (per forest), messages per smart host and per source transport;
    thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ews: Counter[tuple[str, str]] = Counter()
        self._smarthost: Counter[tuple[str, str]] = Counter()
        self._transport: Counter[tuple[str, str]] = Counter()
        self._imap: Counter[tuple[str, str]] = Counter()
        self._graph: Counter[tuple[str, str]] = Counter()

    def count_ews(self, forest: str, operation: str) -> None:
        """Count one EWS request of ``operation`` at ``forest``'s endpoint."""
        with self._lock:
            self._ews[(forest, operation)] += 1

    def count_imap(self, forest: str, command: str) -> None:
        """Count one IMAP command (or ``connections``, ``login_before_tls``) at ``forest``'s IMAP front."""
        with self._lock:
            self._imap[(forest, command)] += 1

    def imap_commands(self, command: str | None = None, forest: str | None = None) -> int:
        """Return how many IMAP commands were relayed, of one command and/or forest or in all (not connections)."""
        with self._lock:
            return sum(n for (f, c), n in self._imap.items()
                       if ((command is None and c not in _NOT_COMMANDS) or c == command)
                       and (forest is None or f == forest))

    def count_graph(self, forest: str, operation: str) -> None:
        """Count one Graph call (``listMessages``, ``move``, ``$batch``, ``token``...) at ``forest``'s endpoint."""
        with self._lock:
            self._graph[(forest, operation)] += 1

    def graph_requests(self, operation: str | None = None, forest: str | None = None) -> int:
        """Return how many Graph calls were answered, of one operation and/or forest or in all."""
        with self._lock:
            return sum(n for (f, op), n in self._graph.items()
                       if (operation is None or op == operation) and (forest is None or f == forest))

    def count_smarthost(self, name: str, event: str) -> None:
        """Count an event at a smart host: ``connections``, ``accepted``, ``auth_attempts``, ``rejected``..."""
        with self._lock:
            self._smarthost[(name, event)] += 1

    def count_transport(self, forest: str, event: str) -> None:
        """Count an event at a forest's source transport: ``queued``, ``carried:NAME``, ``deferred``, ``ndr``..."""
        with self._lock:
            self._transport[(forest, event)] += 1

    def transport(self, forest: str, event: str) -> int:
        """Return the count of ``event`` at ``forest``'s source transport."""
        with self._lock:
            return self._transport[(forest, event)]

    def ews_requests(self, operation: str | None = None, forest: str | None = None) -> int:
        """Return how many EWS requests were made, of one operation and/or forest or in all."""
        with self._lock:
            return sum(n for (f, op), n in self._ews.items()
                       if (operation is None or op == operation) and (forest is None or f == forest))

    def smarthost(self, name: str, event: str) -> int:
        """Return the count of ``event`` at smart host ``name``."""
        with self._lock:
            return self._smarthost[(name, event)]

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._ews.clear()
            self._smarthost.clear()
            self._transport.clear()
            self._imap.clear()
            self._graph.clear()

    def to_json(self) -> dict[str, Any]:
        """Return the counts as ``GET /stats`` shows them."""
        with self._lock:
            ews, imap, graph = _nested(self._ews), _nested(self._imap), _nested(self._graph)
            hosts, transports = _nested(self._smarthost), _nested(self._transport)
        return {"ews": ews, "ews_total": _totals(ews), "smarthosts": hosts, "transports": transports,
                "imap": imap, "imap_total": _totals(imap), "graph": graph, "graph_total": _totals(graph)}


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Return ``{(outer, inner): n}`` as ``{outer: {inner: n}}``, both sorted."""
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), n in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = n
    return nested


def _totals(nested: dict[str, dict[str, int]]) -> dict[str, int]:
    """Return each inner key's sum over the outer keys, sorted."""
    totals: Counter[str] = Counter()
    for counts in nested.values():
        totals.update(counts)
    return dict(sorted(totals.items()))
