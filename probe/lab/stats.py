"""Counters the lab keeps so tests and benchmarks can see what the probe really did."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Final

_NOT_COMMANDS: Final = frozenset({"connections", "login_before_tls"})  # counted beside the IMAP commands


class LabStats:
    """Requests per EWS operation and IMAP command (per forest) and messages per smart host; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ews: Counter[tuple[str, str]] = Counter()
        self._smarthost: Counter[tuple[str, str]] = Counter()
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
            self._imap.clear()
            self._graph.clear()

    def to_json(self) -> dict[str, Any]:
        """Return the counts as ``GET /stats`` shows them."""
        with self._lock:
            ews: dict[str, dict[str, int]] = {}
            for (forest, op), n in sorted(self._ews.items()):
                ews.setdefault(forest, {})[op] = n
            imap: dict[str, dict[str, int]] = {}
            for (forest, command), n in sorted(self._imap.items()):
                imap.setdefault(forest, {})[command] = n
            graph: dict[str, dict[str, int]] = {}
            for (forest, op), n in sorted(self._graph.items()):
                graph.setdefault(forest, {})[op] = n
            hosts: dict[str, dict[str, int]] = {}
            for (name, event), n in sorted(self._smarthost.items()):
                hosts.setdefault(name, {})[event] = n
        totals = {op: sum(v.get(op, 0) for v in ews.values()) for op in {o for v in ews.values() for o in v}}
        imap_totals = {c: sum(v.get(c, 0) for v in imap.values()) for c in {c for v in imap.values() for c in v}}
        graph_totals = {o: sum(v.get(o, 0) for v in graph.values()) for o in {o for v in graph.values() for o in v}}
        return {"ews": ews, "ews_total": dict(sorted(totals.items())), "smarthosts": hosts, "imap": imap,
                "imap_total": dict(sorted(imap_totals.items())), "graph": graph,
                "graph_total": dict(sorted(graph_totals.items()))}
