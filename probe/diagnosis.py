"""Where a route's trouble lies, read across its connector probe and its direct probes (DESIGN.md, "Two kinds").

Each pair's last decisive verdict counts: delivered (or late: the path works, slowly) is working; send_failed,
lost or bounced is failing; unknown says nothing. Then, for a route with a connector probe:

- the connector fails while a smart host delivers directly: ``source_side`` (the Send connector: enabled,
  address space, stored credentials, TLS setting; its source servers; the source forest's transport);
- the connector delivers (through B) while smart host A fails directly: ``failing_over`` (redundancy lost at A);
- the connector and every smart host fail: ``target_side``.

Anything else (all working, or too little known) is no diagnosis. ``check``, the status page, the daemon's
log lines and the alert rules (dashboards/alerts.yml) say the same.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from probe.vocabulary import CONNECTOR_PAIR, Diagnosis, Verdict

if TYPE_CHECKING:
    from probe.ledger import Decision

WORKING: Final = frozenset({str(Verdict.DELIVERED), str(Verdict.LATE)})
FAILING: Final = frozenset({str(Verdict.SEND_FAILED), str(Verdict.LOST), str(Verdict.BOUNCED)})
SOURCE_SIDE_TEXT: Final = ("the source side: the Send connector (enabled, address space, stored credentials, TLS "
                           "setting), its source servers, the source forest's transport")
TARGET_SIDE_TEXT: Final = "the target side: no smart host delivers, directly or through the connector"


@dataclass(frozen=True, kw_only=True)
class RouteDiagnosis:
    """One route's diagnosis, with the smart hosts failing directly and the one that carried the connector probe."""

    route: str
    diagnosis: Diagnosis | None
    failing: tuple[str, ...] = ()  # smart hosts whose direct probes fail
    carried_by: str | None = None

    @property
    def text(self) -> str | None:
        """Return the diagnosis in words, or None."""
        if self.diagnosis is Diagnosis.SOURCE_SIDE:
            also = f"; {', '.join(self.failing)} also fail directly" if self.failing else ""
            return SOURCE_SIDE_TEXT + also
        if self.diagnosis is Diagnosis.FAILING_OVER:
            via = f" (carried by {self.carried_by})" if self.carried_by else ""
            return f"the connector is failing over: redundancy lost at {', '.join(self.failing)}{via}"
        if self.diagnosis is Diagnosis.TARGET_SIDE:
            return TARGET_SIDE_TEXT
        return None


def _working(verdict: str | None) -> bool | None:
    if verdict in WORKING:
        return True
    return False if verdict in FAILING else None


def diagnose(route: str, *, connector: str | None, direct: Mapping[str, str | None],
             carried_by: str | None = None) -> RouteDiagnosis:
    """Diagnose a route from its connector probe's last decisive verdict and each smart host's (by name)."""
    through = _working(connector)
    known = {host: state for host, state in ((h, _working(v)) for h, v in direct.items()) if state is not None}
    failing = tuple(host for host, state in known.items() if not state)
    result = RouteDiagnosis(route=route, diagnosis=None, failing=failing, carried_by=carried_by)
    if through is None or not known:
        return result
    if through:
        carried_by_a_failing_host = carried_by is not None and carried_by in failing
        found = Diagnosis.FAILING_OVER if failing and not carried_by_a_failing_host else None
    elif len(failing) < len(known):
        found = Diagnosis.SOURCE_SIDE
    else:
        found = Diagnosis.TARGET_SIDE if len(known) == len(direct) else None
    return RouteDiagnosis(route=route, diagnosis=found, failing=failing, carried_by=carried_by)


def last_decisive(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Return the newest row (of ledger history rows, newest first) whose verdict is working or failing."""
    return next((row for row in rows if str(row.get("state")) in WORKING | FAILING), None)


def diagnose_history(route: str, history: Mapping[str, Sequence[Mapping[str, Any]]]) -> RouteDiagnosis:
    """Diagnose a route from each pair's ledger history (by smart host name, "@connector" included)."""
    last = {host: last_decisive(rows) for host, rows in history.items()}
    connector = last.pop(CONNECTOR_PAIR, None)
    detail = (connector or {}).get("detail") or {}
    return diagnose(route, connector=None if connector is None else str(connector["state"]),
                    direct={host: None if row is None else str(row["state"]) for host, row in last.items()},
                    carried_by=detail.get("carried_by") if isinstance(detail, Mapping) else None)


def diagnose_decisions(decisions: Iterable[Decision]) -> dict[str, RouteDiagnosis]:
    """Diagnose each route that has a connector probe among one check's decisions (one verdict per pair)."""
    by_route: dict[str, dict[str, Decision]] = {}
    for decision in decisions:
        by_route.setdefault(decision.route, {})[decision.smart_host] = decision
    found = {}
    for route, pairs in by_route.items():
        connector = pairs.pop(CONNECTOR_PAIR, None)
        if connector is not None:
            found[route] = diagnose(route, connector=str(connector.verdict), carried_by=connector.carried_by,
                                    direct={host: str(d.verdict) for host, d in pairs.items()})
    return found


class DiagnosisTracker:
    """The daemon's view: each pair's last decisive verdict, and each route's diagnosis when it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[str, str], str] = {}
        self._carried: dict[str, str | None] = {}
        self._current: dict[str, RouteDiagnosis] = {}

    def note(self, route: str, smart_host: str, verdict: str, carried_by: str | None = None) -> None:
        """Remember a pair's verdict (ignored unless decisive) without diagnosing (seeding from the ledger)."""
        if verdict not in WORKING | FAILING:
            return
        with self._lock:
            self._verdicts[(route, smart_host)] = verdict
            if smart_host == CONNECTOR_PAIR:
                self._carried[route] = carried_by

    def update(self, route: str, smart_hosts: Sequence[str], smart_host: str, verdict: str,
               carried_by: str | None = None) -> RouteDiagnosis | None:
        """Note a verdict of a route with a connector probe; return its diagnosis when that changed, else None."""
        self.note(route, smart_host, verdict, carried_by)
        with self._lock:
            found = diagnose(route, connector=self._verdicts.get((route, CONNECTOR_PAIR)),
                             direct={h: self._verdicts.get((route, h)) for h in smart_hosts},
                             carried_by=self._carried.get(route))
            before = self._current.get(route)
            self._current[route] = found
        unchanged = before is not None and (before.diagnosis, before.failing) == (found.diagnosis, found.failing)
        if unchanged or (before is None and found.diagnosis is None):
            return None
        return found

    def forget(self, routes: Iterable[str]) -> None:
        """Forget every route not in ``routes`` (after a reload)."""
        keep = set(routes)
        with self._lock:
            self._verdicts = {k: v for k, v in self._verdicts.items() if k[0] in keep}
            self._carried = {k: v for k, v in self._carried.items() if k in keep}
            self._current = {k: v for k, v in self._current.items() if k in keep}
