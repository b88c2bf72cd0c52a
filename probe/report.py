"""The one-shot check's report: each output format from one table (text, JSON, Nagios), with its exit codes.

Every format keeps its contract under every fault: ``json`` always prints one JSON document (the list of
DESIGN.md, with ``--debug`` details inside each object; on an error, one object with ``error``), ``nagios``
exactly one status line first (long output after it with ``--debug``, as the plugin API allows) and 3
(UNKNOWN) on an unexpected error. Text from the network (SMTP replies, transcripts, Received hops) is made
terminal-safe in text and Nagios output: control characters are shown escaped, never sent to the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from probe.diagnosis import RouteDiagnosis, diagnose_decisions
from probe.ledger import Decision
from probe.secret import redact
from probe.vocabulary import CONNECTOR_PAIR, Verdict

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3

_NAGIOS_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
_FAILED = frozenset({Verdict.SEND_FAILED, Verdict.LOST, Verdict.LATE, Verdict.BOUNCED})
_REPLY_WIDTH: Final = 60

# C0 controls, DEL, C1 controls (\x9b is a CSI on some terminals) and the bidirectional overrides and
# isolates (they reorder what follows them on screen): shown as escapes.
_UNSAFE: Final = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F),
                  *range(0x2066, 0x206A)]
_ESCAPES: Final = {code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _UNSAFE}


def terminal_safe(text: str) -> str:
    """Return ``text`` with every control character (ESC, CR, BEL, C1, bidi overrides...) shown escaped."""
    return text.translate(_ESCAPES)


@dataclass(frozen=True, kw_only=True)
class Report:
    """What a check found: the verdicts, each probe's details from the ledger, and whether to show them."""

    decisions: Sequence[Decision]
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # probe id -> ledger detail
    debug: bool = False

    def sorted(self) -> list[Decision]:
        """Return the decisions by route and smart host."""
        return sorted(self.decisions, key=lambda d: (d.route, d.smart_host))

    def detail(self, decision: Decision) -> Mapping[str, Any]:
        """Return one probe's details (transcript, hops, reply), redacted where shown."""
        return self.details.get(decision.probe_id, {})

    def diagnoses(self) -> dict[str, RouteDiagnosis]:
        """Return the diagnosis of each route with a connector probe, by route (probe.diagnosis)."""
        return diagnose_decisions(self.decisions)

    @property
    def has_connector(self) -> bool:
        """Say whether any row is a connector probe's."""
        return any(d.smart_host == CONNECTOR_PAIR for d in self.decisions)


@dataclass(frozen=True, kw_only=True)
class Format:
    """One output format: how a report is written, its exit code, and what an error looks like."""

    render: Callable[[Report], str]
    exit_code: Callable[[Sequence[Decision]], int]
    failure: Callable[[str, int], tuple[str, int]]  # (message, DESIGN.md exit code) -> (stdout, exit code)


def exit_code(decisions: Sequence[Decision]) -> int:
    """Return 0 when all were delivered, 1 when any failed, was lost, late or bounced, else 3 when any is unknown."""
    verdicts = {d.verdict for d in decisions}
    if verdicts & _FAILED:
        return EXIT_FAILED
    if Verdict.UNKNOWN in verdicts or not decisions:
        return EXIT_UNKNOWN
    return EXIT_OK


def nagios_code(decisions: Sequence[Decision]) -> int:
    """Return the Nagios state: OK, WARNING (late only), CRITICAL (send_failed, lost or bounced), UNKNOWN."""
    verdicts = {d.verdict for d in decisions}
    if verdicts & {Verdict.SEND_FAILED, Verdict.LOST, Verdict.BOUNCED}:
        return 2
    if Verdict.UNKNOWN in verdicts or not decisions:
        return 3
    if Verdict.LATE in verdicts:
        return 1
    return 0


def _latency(decision: Decision) -> str:
    return "-" if decision.latency is None else f"{decision.latency:.2f}s"


def _why(decision: Decision) -> str:
    if decision.verdict is Verdict.BOUNCED:  # where: the NDR's status code; why: its class
        return f"{decision.status_code or '-'}/{decision.reason or '-'}"
    if decision.stage or decision.reason:
        return f"{decision.stage or '-'}/{decision.reason or '-'}"
    return "-"


def _reply(report: Report, decision: Decision) -> str:
    if decision.verdict is Verdict.BOUNCED and decision.diagnostic:  # the refusing server's words, from the NDR
        return terminal_safe(redact(decision.diagnostic))[:_REPLY_WIDTH]
    detail = report.detail(decision)
    reply, queue_id = detail.get("smtp_reply"), detail.get("queue_id")
    if reply and decision.smtp_code:
        text = f"{decision.smtp_code} {reply}"
        if len(text) > _REPLY_WIDTH and queue_id:  # Exchange's 250 names the Message-ID first: show what matters
            text = f"{decision.smtp_code} {detail.get('enhanced_code') or ''} queued, id {queue_id}".replace("  ", " ")
        return terminal_safe(redact(text))[:_REPLY_WIDTH]
    return str(decision.smtp_code) if decision.smtp_code else "-"


def _summary(decisions: Sequence[Decision]) -> str:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[str(d.verdict)] = counts.get(str(d.verdict), 0) + 1
    parts = [f"{n} {v}" for v, n in sorted(counts.items())]
    return f"{len(decisions)} probes: " + (", ".join(parts) if parts else "none")


def _carried(decision: Decision) -> str:
    if decision.smart_host != CONNECTOR_PAIR:
        return "-"
    if decision.carried_by:
        return decision.carried_by
    return "unknown path" if decision.verdict in (Verdict.DELIVERED, Verdict.LATE) else "-"


def _diagnosis_lines(report: Report) -> list[str]:
    return [f"diagnosis: {terminal_safe(route)}: {d.text}" for route, d in sorted(report.diagnoses().items())
            if d.text is not None]


def _debug_lines(report: Report, decision: Decision) -> list[str]:
    """Return a probe's debug lines (header, transcript, hops), redacted and terminal-safe."""
    detail = report.detail(decision)
    lines = [f"--- {decision.route} via {decision.smart_host}: {decision.verdict} (message {decision.message_id})"]
    lines += [f"    {line}" for line in detail.get("transcript", [])]
    lines += [f"    hop: {hop}" for hop in detail.get("hops", [])]
    if detail.get("error"):
        lines.append(f"    error: {detail['error']}")
    lines += _report_lines(detail)
    lines += _tracking_lines(detail.get("tracking"))
    return [terminal_safe(redact(line)) for line in lines]


def _report_lines(detail: Mapping[str, Any]) -> list[str]:
    """Return a probe's NDR and its delay warning, as the debug lines show them."""
    lines = []
    bounce = detail.get("bounce")
    if isinstance(bounce, Mapping):
        lines.append(f"    bounced: {bounce.get('status')} ({bounce.get('reason')}) reported by "
                     f"{bounce.get('reporting_mta') or '?'}" + (f" for {bounce['remote_mta']}" if bounce.get(
                         "remote_mta") else "") + f": {bounce.get('diagnostic') or '-'}")
    delayed = detail.get("delayed_dsn")
    if isinstance(delayed, Mapping):
        lines.append(f"    warning: delivery delayed ({delayed.get('status')}, {delayed.get('count', 1)} notice(s)) "
                     f"reported by {delayed.get('reporting_mta') or '?'}: {delayed.get('diagnostic') or '-'}"
                     + (f"; retrying until {delayed['will_retry_until']}" if delayed.get("will_retry_until") else ""))
    return lines


def _tracking_lines(tracking: object) -> list[str]:
    """Return where to follow a lost or bounced probe: queue id, Message-ID, the command to run."""
    if not isinstance(tracking, Mapping):
        return []
    lines = [f"    track: Message-ID {tracking.get('message_id')}, queue id {tracking.get('queue_id') or '-'}"
             + (f" at {tracking['server']}" if tracking.get("server") else "")]
    lines += [f"    track: {command}" for command in tracking.get("commands") or []]
    return lines


# -- text ------------------------------------------------------------------------------------------------


def format_table(report: Report) -> str:
    """Return an aligned plain-text table, one row per (route, smart host); with debug, the transcripts after."""
    carried = report.has_connector  # the CARRIED BY column shows only beside connector rows
    header = ["ROUTE", "SMART HOST", "VERDICT", "LATENCY", *(["CARRIED BY"] if carried else []), "STAGE/REASON",
              "SMTP REPLY"]
    rows = [header] + [[terminal_safe(d.route), terminal_safe(d.smart_host), str(d.verdict), _latency(d),
                        *([terminal_safe(_carried(d))] if carried else []), _why(d), _reply(report, d)]
                       for d in report.sorted()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip() for r in rows]
    lines += ["", _summary(report.decisions), *_diagnosis_lines(report)]
    if report.debug:
        lines += [line for d in report.sorted() for line in _debug_lines(report, d)]
    return "\n".join(lines) + "\n"


def _text_failure(message: str, code: int) -> tuple[str, int]:
    return "", code  # the message goes to stderr alone


# -- JSON ------------------------------------------------------------------------------------------------


def _debug_json(report: Report, decision: Decision) -> dict[str, Any]:
    detail = report.detail(decision)
    return {"transcript": [redact(str(line)) for line in detail.get("transcript", [])],
            "hops": detail.get("hops", []), "smtp_reply": redact(str(detail.get("smtp_reply") or "")) or None,
            "error": redact(str(detail.get("error") or "")) or None, "queue_id": detail.get("queue_id"),
            "bounce": detail.get("bounce"), "delayed_dsn": detail.get("delayed_dsn"),
            "tracking": detail.get("tracking")}


def format_json(report: Report) -> str:
    """Return the JSON list of DESIGN.md (route, smart_host, verdict, stage, reason, smtp_code, latency...); a
    connector row also holds ``carried_by`` and ``diagnosis`` (source_side, failing_over, target_side or null) with
    ``diagnosis_text``; with debug, each object also holds ``debug`` (transcript, hops, reply, error)."""
    items = []
    diagnoses = report.diagnoses()
    for d in report.sorted():
        item = d.to_json()
        if d.smart_host == CONNECTOR_PAIR:
            found = diagnoses.get(d.route)
            item["carried_by"] = d.carried_by
            item["diagnosis"] = None if found is None or found.diagnosis is None else str(found.diagnosis)
            item["diagnosis_text"] = None if found is None else found.text
        if report.debug:
            item["debug"] = _debug_json(report, d)
        items.append(item)
    return json.dumps(items, indent=2) + "\n"


def _json_failure(message: str, code: int) -> tuple[str, int]:
    return json.dumps({"error": redact(message), "exit_code": code}, indent=2) + "\n", code


# -- Nagios ----------------------------------------------------------------------------------------------


def _nagios_text(text: str) -> str:
    """Return ``text`` fit for a plugin line: terminal-safe, no ``|`` (it starts perfdata)."""
    return terminal_safe(text).replace("|", "\u00a6")


def format_nagios(report: Report) -> str:
    """Return one Nagios status line with perfdata (latency per pair, counts); with debug, long output after."""
    decisions = report.decisions
    code = nagios_code(decisions)
    bad = [d for d in decisions if d.verdict is not Verdict.DELIVERED]
    text = _summary(decisions)
    if bad:
        text += "; " + ", ".join(f"{d.route}/{d.smart_host} {d.verdict} {_why(d)}" for d in bad)
    text += "".join(f"; {line}" for line in _diagnosis_lines(report))
    perf = [f"'{d.route}/{d.smart_host}'={d.latency:.3f}s;;;0" for d in decisions if d.latency is not None]
    delivered = sum(1 for d in decisions if d.verdict is Verdict.DELIVERED)
    perf.append(f"delivered={delivered};;;0;{len(decisions)}")
    lines = [f"MAILFLOW {_NAGIOS_STATES[code]} - {_nagios_text(text)} | {' '.join(perf)}"]
    if report.debug:
        lines += [_nagios_text(line) for d in report.sorted() for line in _debug_lines(report, d)]
    return "\n".join(lines) + "\n"


def _nagios_failure(message: str, code: int) -> tuple[str, int]:
    first = " ".join(redact(message).split())
    return f"MAILFLOW UNKNOWN - {_nagios_text(first)}\n", EXIT_UNKNOWN


FORMATS: Final[dict[str, Format]] = {
    "text": Format(render=format_table, exit_code=exit_code, failure=_text_failure),
    "json": Format(render=format_json, exit_code=exit_code, failure=_json_failure),
    "nagios": Format(render=format_nagios, exit_code=nagios_code, failure=_nagios_failure),
}
