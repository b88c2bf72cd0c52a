"""The one-shot check's report: a table, JSON, or Nagios plugin output, and the exit code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from probe.ledger import Decision
from probe.vocabulary import Verdict

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3

_NAGIOS_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
_FAILED = frozenset({Verdict.SEND_FAILED, Verdict.LOST, Verdict.LATE})


def exit_code(decisions: Sequence[Decision]) -> int:
    """Return 0 when all were delivered, 1 when any failed or was lost, else 3 when any is unknown."""
    verdicts = {d.verdict for d in decisions}
    if verdicts & _FAILED:
        return EXIT_FAILED
    if Verdict.UNKNOWN in verdicts or not decisions:
        return EXIT_UNKNOWN
    return EXIT_OK


def nagios_code(decisions: Sequence[Decision]) -> int:
    """Return the Nagios state: OK, WARNING (late only), CRITICAL (send_failed or lost), UNKNOWN."""
    verdicts = {d.verdict for d in decisions}
    if verdicts & {Verdict.SEND_FAILED, Verdict.LOST}:
        return 2
    if Verdict.UNKNOWN in verdicts or not decisions:
        return 3
    if Verdict.LATE in verdicts:
        return 1
    return 0


def _latency(decision: Decision) -> str:
    return "-" if decision.latency is None else f"{decision.latency:.2f}s"


def _why(decision: Decision) -> str:
    if decision.stage or decision.reason:
        return f"{decision.stage or '-'}/{decision.reason or '-'}"
    return "-"


def _row(decision: Decision, replies: dict[str, str]) -> list[str]:
    reply = replies.get(decision.probe_id) or (str(decision.smtp_code) if decision.smtp_code else "-")
    return [decision.route, decision.smart_host, str(decision.verdict), _latency(decision), _why(decision), reply]


def format_table(decisions: Sequence[Decision], *, replies: dict[str, str] | None = None) -> str:
    """Return an aligned plain-text table, one row per (route, smart host)."""
    header = ["ROUTE", "SMART HOST", "VERDICT", "LATENCY", "STAGE/REASON", "SMTP REPLY"]
    rows = [header] + [_row(d, replies or {}) for d in sorted(decisions, key=lambda d: (d.route, d.smart_host))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip() for r in rows]
    summary = _summary(decisions)
    return "\n".join([*lines, "", summary]) + "\n"


def _summary(decisions: Sequence[Decision]) -> str:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[str(d.verdict)] = counts.get(str(d.verdict), 0) + 1
    parts = [f"{n} {v}" for v, n in sorted(counts.items())]
    return f"{len(decisions)} probes: " + (", ".join(parts) if parts else "none")


def format_json(decisions: Sequence[Decision], *, extra: dict[str, dict[str, Any]] | None = None) -> str:
    """Return the JSON list of DESIGN.md (route, smart_host, verdict, stage, reason, smtp_code, latency...)."""
    items = []
    for d in sorted(decisions, key=lambda d: (d.route, d.smart_host)):
        items.append({**d.to_json(), **(extra or {}).get(d.probe_id, {})})
    return json.dumps(items, indent=2) + "\n"


def format_nagios(decisions: Sequence[Decision]) -> str:
    """Return one Nagios status line with perfdata (latency per pair, counts)."""
    code = nagios_code(decisions)
    bad = [d for d in decisions if d.verdict is not Verdict.DELIVERED]
    text = _summary(decisions)
    if bad:
        text += "; " + ", ".join(f"{d.route}/{d.smart_host} {d.verdict} {_why(d)}" for d in bad)
    perf = [f"'{d.route}/{d.smart_host}'={d.latency:.3f}s;;;0" for d in decisions if d.latency is not None]
    delivered = sum(1 for d in decisions if d.verdict is Verdict.DELIVERED)
    perf.append(f"delivered={delivered};;;0;{len(decisions)}")
    return f"MAILFLOW {_NAGIOS_STATES[code]} - {text} | {' '.join(perf)}\n"
