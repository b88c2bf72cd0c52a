"""Benchmark how true the probe's delivery latency is, against the lab's own record of each delivery.

Run: python bench/accuracy.py [--quick]
The lab runs in its own process with groups of smart hosts per forest, each group delaying delivery by
0, 0.5, 2, 10 or 60 s (the ``delay_delivery`` fault). The real daemon (probe.daemon.start_daemon, in
this process) probes every (route, smart host) pair of both directions at a short interval; every
probe's latency is its ledger decision's (what the metrics and logs report). The truth is the lab's
record of the same message: ``delivered_at - accepted_at``, both true time (``accepted_at`` is stamped
by the lab just after it writes the 250; the probe reads the 250 a little later, so its latency is a
little shorter: a small negative bias from the accept side is expected and counted as error). Runs:
streaming, polling, and streaming with the EWS clock of one forest 30 s ahead and the other's 30 s behind.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LabProcess, lab_process, percentile, table, update_report, write_config

from probe.config import load_config
from probe.daemon import start_daemon

DELAYS = (0.0, 0.5, 2.0, 10.0, 60.0)
QUICK_DELAYS = (0.0, 0.5)
FORESTS = ("contoso", "fourthcoffee")
STREAMING_GOAL, OTHER_GOAL = 0.25, 1.0


@dataclass(frozen=True)
class Run:
    """One condition: how the mailbox is watched and the EWS clock offset of each forest."""

    label: str
    watch: str
    offsets: dict[str, float]

    def goal(self, backend: str) -> float:
        """Return the p99 |error| goal of this condition (0.25 s for EWS streaming, 1 s for IMAP and Graph)."""
        streaming = self.watch == "streaming" and not any(self.offsets.values()) and backend == "ews"
        return STREAMING_GOAL if streaming else OTHER_GOAL


@dataclass(frozen=True)
class Plan:
    """How big the benchmark is."""

    delays: tuple[float, ...]
    hosts_per_delay: int
    interval: float
    duration: float
    until_each_pair: bool = False  # end a run as soon as every pair has a verdict (within ``duration``)


RUNS = (
    Run("streaming", "streaming", {}),
    Run("polling (2 s)", "polling", {}),
    Run("streaming, server clock +30 s", "streaming", {"fourthcoffee": 30.0}),
    Run("streaming, server clock -30 s", "streaming", {"contoso": -30.0}),
)


def delay_of_hosts(lab: LabProcess, plan: Plan) -> dict[str, float]:
    """Assign each smart host of each forest to a delay group, in order."""
    groups: dict[str, float] = {}
    for forest in FORESTS:
        for i, name in enumerate(lab.smart_hosts(forest)):
            groups[name] = plan.delays[i // plan.hosts_per_delay]
    return groups


def set_faults(lab: LabProcess, delays: dict[str, float], run: Run) -> None:
    """Put the delivery delays and this run's clock offsets in force."""
    lab.clear_faults()
    for name, seconds in delays.items():
        if seconds:
            lab.add_fault(target=f"smarthost/{name}", kind="delay_delivery", seconds=seconds)
    for forest, seconds in run.offsets.items():
        lab.add_fault(target=f"{lab.backend}/{forest}", kind="clock_offset", seconds=seconds)


def run_daemon(lab: LabProcess, run: Run, plan: Plan, work: Path, routes: list[str]) -> Path:
    """Run the daemon on the lab for the plan's duration (a quick plan: only until every pair has a verdict);
    return its state file."""
    state = work / run.label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    config = write_config(lab, state / "probe.yaml", interval=plan.interval, timeout=max(DELAYS) * 2 + 30,
                          jitter=0.0, watch=run.watch, poll_interval=2.0, routes=routes, state_dir=state)
    pairs = sum(len(route.smart_hosts) for route in load_config(config).routes)
    daemon, server = start_daemon(config, listen_address="127.0.0.1:0")
    try:
        end = time.monotonic() + plan.duration
        while time.monotonic() < end and not (plan.until_each_pair and pairs_decided(state / "state.db") >= pairs):
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    finally:
        server.close()
        daemon.stop()
    return state / "state.db"


def pairs_decided(state_db: Path) -> int:
    """Return how many (route, smart host) pairs have a probe with a verdict."""
    if not state_db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)) as db:
        return int(db.execute("SELECT COUNT(DISTINCT route || '/' || smart_host) FROM probes"
                              " WHERE decided_at IS NOT NULL").fetchone()[0])


def errors_by_delay(state_db: Path, lab: LabProcess, delays: dict[str, float],
                    run: Run) -> tuple[dict[float, list[float]], dict[float, int]]:
    """Return, per delay group, the error of each delivered probe's latency; and the other verdicts' count."""
    truth: dict[str, float] = {}
    for record in lab.deliveries():
        if record["accepted_at"] is not None:
            truth.setdefault(record["message_id"], record["delivered_at"] - record["accepted_at"])
    errors: dict[float, list[float]] = defaultdict(list)
    others: dict[float, int] = defaultdict(int)
    offset_forests = set(run.offsets) or set(FORESTS)
    with sqlite3.connect(state_db) as db:
        rows = db.execute("SELECT smart_host, mailbox, message_id, state, latency FROM probes"
                          " WHERE decided_at IS NOT NULL").fetchall()
    for smart_host, mailbox, message_id, state, latency in rows:
        if mailbox.split("-")[0] not in offset_forests:
            continue  # the other direction of an offset run: its mailbox's clock is not offset
        delay = delays[smart_host]
        if state == "delivered" and message_id in truth:
            errors[delay].append(latency - truth[message_id])
        else:
            others[delay] += 1
    return errors, others


def rows_of(run: Run, errors: dict[float, list[float]], others: dict[float, int]) -> list[list[object]]:
    """Return the table rows of one run."""
    rows: list[list[object]] = []
    for delay in sorted(errors):
        values = errors[delay]
        absolute = [abs(e) for e in values]
        rows.append([run.label, f"{delay:g}", len(values), others.get(delay, 0),
                     f"{percentile(values, 0.5):+.3f}", f"{percentile(absolute, 0.5):.3f}",
                     f"{percentile(absolute, 0.99):.3f}", f"{max(absolute):.3f}"])
    return rows


def goal_line(run: Run, errors: dict[float, list[float]], backend: str) -> str:
    """Return the goal verdict of one run, over all its delays."""
    absolute = [abs(e) for values in errors.values() for e in values]
    p99 = percentile(absolute, 0.99)
    goal = run.goal(backend)
    status = "met" if p99 <= goal else "MISSED"
    return f"- {run.label}: p99 |error| {p99:.3f} s over {len(absolute)} probes, goal <= {goal} s: **{status}**"


def main() -> int:
    """Run every condition against one lab, print the table, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (two delays, short)")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--backend", choices=("ews", "imap", "graph"), default="ews",
                        help="how the lab's mailboxes are read (imap: IDLE for streaming; graph: polled)")
    args = parser.parse_args()
    plan = (Plan(QUICK_DELAYS, 2, 2.0, 12.0, until_each_pair=True) if args.quick
            else Plan(DELAYS, 10, 10.0, 100.0))
    runs = RUNS[:1] if args.quick else RUNS
    rows: list[list[object]] = []
    goals: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        work = Path(tmp)
        with lab_process(work / "lab", smart_hosts=len(plan.delays) * plan.hosts_per_delay, mailboxes=1,
                         backend=args.backend) as lab:
            delays = delay_of_hosts(lab, plan)
            routes = list(lab.info["routes"])
            for run in runs:
                set_faults(lab, delays, run)
                started = datetime.now().strftime("%H:%M:%S")
                until = " at most, until every pair has a verdict" if plan.until_each_pair else ""
                print(f"{started} {run.label}: {len(delays)} pairs every {plan.interval:g} s "
                      f"for {plan.duration:g} s{until}", flush=True)
                state_db = run_daemon(lab, run, plan, work, routes)
                errors, others = errors_by_delay(state_db, lab, delays, run)
                rows += rows_of(run, errors, others)
                goals.append(goal_line(run, errors, args.backend))
            lab.clear_faults()
    header = ["run", "delay s", "probes", "not delivered", "median error s", "p50 abs s", "p99 abs s",
              "max abs s"]
    body = table(header, rows)
    print(body)
    print("\n".join(goals))
    if not args.no_report and not args.quick:
        name, title = ("accuracy", "") if args.backend == "ews" else (f"accuracy-{args.backend}",
                                                                       f", over {args.backend}")
        update_report(name, f"1. Accuracy of the reported delivery latency{title}", _explain(plan) + body
                      + "\n\nGoals:\n" + "\n".join(goals),
                      command=shlex.join(["python", "bench/accuracy.py", *sys.argv[1:]]))
    return 0


def _explain(plan: Plan) -> str:
    return (
        f"Each delay group is {plan.hosts_per_delay} smart hosts per forest; both directions (2 routes) probe "
        f"every {plan.interval:g} s for {plan.duration:g} s with the real daemon (streaming, or polling every "
        "2 s), the lab in its own process. Error = the ledger's latency (what metrics and logs report) minus "
        "the lab's record (store `delivered_at - accepted_at`, true time). The lab stamps `accepted_at` just "
        "after writing the 250 and the probe reads the 250 a little later (its latency starts later), so part "
        "of a negative error is the accept side. Probes still in flight at the end are not counted; "
        "\"not delivered\" counts any other verdict. Offset runs count only the direction into the offset forest.\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
