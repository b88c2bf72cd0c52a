"""``mailflow-probe check``: one probe through every smart host of the chosen routes, wait, report, exit."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from probe.config import Config, ConfigError, load_config
from probe.duration import parse_duration
from probe.ledger import Decision, Ledger
from probe.local_faults import explain, local_fault
from probe.logs import configure_logging
from probe.mailbox.backends import MailboxFactory, open_mailbox
from probe.mailbox.base import Mailbox
from probe.pipeline import Carriers, NullObserver, Target, carriers, confirm, expire, send_probe, targets
from probe.report import EXIT_UNKNOWN, EXIT_USAGE, FORMATS, Format, Report
from probe.secret import redact
from probe.signing import SigningKeyError, load_or_create_key
from probe.tracking import tracking_hint
from probe.vocabulary import Verdict

TRACKED = frozenset({Verdict.LOST, Verdict.BOUNCED})  # verdicts whose debug output says how to follow the probe
POLL_SECONDS = 1.0
MAX_PARALLEL_SENDS = 32


@dataclass(kw_only=True)
class CheckOptions:
    """What one check probes and how long it waits."""

    routes: Sequence[str] | None = None
    timeout: float | None = None
    poll_seconds: float = POLL_SECONDS
    progress: TextIO | None = None


@dataclass(kw_only=True)
class CheckOutcome:
    """The verdict of every probe of one check, with the ledger that decided them."""

    decisions: list[Decision]
    ledger: Ledger


def run_check(config: Config, options: CheckOptions, mailbox_factory: MailboxFactory | None = None) -> CheckOutcome:
    """Send one probe through each chosen smart host, then search until each has a verdict."""
    key = load_or_create_key(config.signing_key_file)
    chosen = targets(config, options.routes)
    ledger = Ledger(":memory:")
    factory = mailbox_factory or (lambda mailbox, key: open_mailbox(mailbox, key=key))
    names = {t.mailbox.name for t in chosen} | {t.bounces for t in chosen if t.bounces is not None}
    mailboxes = {name: factory(config.mailboxes[name], key) for name in sorted(names)}
    try:
        decisions = _send_all(chosen, mailboxes, key=key, ledger=ledger, timeout=options.timeout)
        decisions += _wait(mailboxes, key=key, ledger=ledger, options=options, carried=carriers(config))
    finally:
        for mailbox in mailboxes.values():
            mailbox.close()
    return CheckOutcome(decisions=decisions, ledger=ledger)


def _send_all(chosen: Sequence[Target], mailboxes: dict[str, Mailbox], *, key: bytes, ledger: Ledger,
              timeout: float | None) -> list[Decision]:
    """Send every probe in parallel while each mailbox's clock offset is calibrated, before any search."""
    workers = max(1, min(MAX_PARALLEL_SENDS, len(chosen) + len(mailboxes)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        calibrations = [pool.submit(m.calibrate_clock) for m in mailboxes.values()]
        futures = [pool.submit(send_probe, t, key=key, ledger=ledger, observer=NullObserver(), timeout=timeout)
                   for t in chosen]
        results = [f.result() for f in futures]
        for calibration in calibrations:
            calibration.result()
    return [d for d in results if d is not None]


def _wait(mailboxes: dict[str, Mailbox], *, key: bytes, ledger: Ledger, options: CheckOptions,
          carried: Carriers) -> list[Decision]:
    """Search each mailbox a probe waits on (its target, and its route's bounces mailbox) until every probe has a
    verdict or the last deadline passed; then one last look, and the rest is lost or unknown."""
    decisions: list[Decision] = []
    observer = NullObserver()
    last_deadline = max((p.deadline for p in ledger.open_probes()), default=time.time())
    while ledger.open_probes() and time.time() < last_deadline:
        for name, mailbox in mailboxes.items():
            if ledger.awaits(name):
                decisions += confirm(name, mailbox, key=key, ledger=ledger, observer=observer, late_window=0,
                                     carriers=carried)
        _progress(options.progress, ledger, last_deadline)
        if ledger.open_probes():
            time.sleep(min(options.poll_seconds, max(0.0, last_deadline - time.time())))
    # One last look, started after every deadline: what it does not find is lost; if it fails, unknown.
    for name, mailbox in mailboxes.items():
        if ledger.awaits(name):
            decisions += confirm(name, mailbox, key=key, ledger=ledger, observer=observer, late_window=0,
                                 carriers=carried)
    decisions += expire(ledger, observer=observer, unknown_after=0.0, now=max(time.time(), last_deadline))
    _progress(options.progress, ledger, last_deadline, final=True)
    return decisions


def _progress(stream: TextIO | None, ledger: Ledger, deadline: float, *, final: bool = False) -> None:
    if stream is None:
        return
    waiting = len(ledger.open_probes())
    decided = sum(n for state, n in ledger.counts().items() if state not in ("submitting", "in_flight"))
    left = max(0, int(deadline - time.time()))
    line = f"\r{decided} decided, {waiting} waiting, {left}s left "
    stream.write(line + ("\n" if final else ""))
    stream.flush()


def main(args: argparse.Namespace) -> int:
    """Run ``check`` from parsed arguments; return the exit code of DESIGN.md (or Nagios' with --format nagios).

    Whatever goes wrong, the chosen format's contract holds (probe.report): a usage or config error, a
    failure of this host, even a bug, ends in the format's error shape, never in a bare traceback.
    """
    fmt = FORMATS[args.format]
    configure_logging("logfmt", "debug" if args.debug else "warn")  # libraries' news as lines, not tracebacks
    try:
        config = load_config(args.config_file, uses_state_file=False)  # check keeps its probes in memory
        options = _options(args, config)
        outcome = run_check(config, options)
        report = Report(decisions=outcome.decisions, details=_details(outcome), debug=args.debug)
        text = fmt.render(report)
    except (ConfigError, SigningKeyError) as exc:
        return _fail(fmt, exc.describe() if isinstance(exc, ConfigError) else str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(fmt, "interrupted before every probe had a verdict", EXIT_UNKNOWN)
    except Exception as exc:  # a failure of this host, or a bug: still the format's shape, exit 3
        resource = local_fault(exc)
        message = explain(resource) if resource is not None else f"internal error: {type(exc).__name__}: {exc}"
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        return _fail(fmt, message, EXIT_UNKNOWN)
    sys.stdout.write(text)
    return fmt.exit_code(outcome.decisions)


def _fail(fmt: Format, message: str, code: int) -> int:
    print(f"mailflow-probe check: {redact(message)}", file=sys.stderr)
    out, exit_with = fmt.failure(message, code)
    sys.stdout.write(out)
    return exit_with


def _details(outcome: CheckOutcome) -> dict[str, dict[str, Any]]:
    """Return each probe's details from the ledger; a lost or bounced one's with how to track it further."""
    details = {}
    for decision in outcome.decisions:
        row = outcome.ledger.probe(decision.probe_id) or {}
        detail = dict(row.get("detail") or {})
        if decision.verdict in TRACKED and row:
            detail["tracking"] = tracking_hint(
                detail=detail, message_id=decision.message_id, created_at=row["created_at"],
                finished_at=max(row["deadline"], row.get("decided_at") or 0.0)).to_json()
        details[decision.probe_id] = detail
    return details


def _options(args: argparse.Namespace, config: Config) -> CheckOptions:
    known = {r.name for r in config.routes}
    for name in args.route or []:
        if name not in known:
            raise ConfigError(f"no route named {name!r}; routes: {', '.join(sorted(known))}",
                              file=config.source, field_path="--route")
    try:
        timeout = None if args.timeout is None else parse_duration(args.timeout)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None
    progress = sys.stderr if sys.stderr.isatty() and args.format == "text" else None
    return CheckOptions(routes=args.route, timeout=timeout, progress=progress)
