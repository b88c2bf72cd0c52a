"""Benchmark what the batched mailbox search saves: one search per mailbox vs one search per probe.

Run: python bench/batching.py [--quick] [--pairs 500] [--interval 60] [--intervals 2]
The same load runs twice against one lab (in its own process), each time with the daemon in its own
process: first the probe as it is (``python -m probe run``: one FindItem per mailbox covers every probe
in flight, then one GetItem for the matches), then with a bench-only mailbox that searches the naive way,
one FindItem per probe in flight (subject contains its probe id), then a GetItem for what it found.
Everything else (scheduler, watchers, ledger, cleanup) is the daemon's own. Reported: EWS requests
(all operations, from the lab's /stats) and the daemon process's CPU, per probe sent.

``python bench/batching.py serve --mode naive -c FILE --web.listen-address HOST:PORT`` is the naive
daemon itself (what the benchmark starts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import lab_process, table, update_report
from scale import POLL_INTERVAL, PROBE_RUN, QUICK_PAIRS, QUICK_POLL_INTERVAL, ROUTES_PER_LAB, Result, measure

from probe.config import MailboxConfig
from probe.mailbox.base import SearchResult
from probe.mailbox.ews import EwsMailbox

NAIVE_RUN = (str(Path(__file__).resolve()), "serve", "--mode", "naive")
QUICK_INTERVAL = 2.0  # the smoke run's one interval: each of its 20 pairs probes once, both ways


class PerProbeMailbox(EwsMailbox):
    """An EWS mailbox that searches once per probe in flight (bench only: what batching avoids)."""

    _term = ""

    def search(self, probe_ids: Collection[str], *, since: float | None = None, deadline: float | None = None,
               reports_for: Collection[str] = ()) -> SearchResult:
        """Search for each probe on its own and merge the results (the bench's routes have no NDRs to look for)."""
        started = time.time()
        results = []
        for probe_id in probe_ids:
            self._term = probe_id
            results.append(super().search([probe_id], since=since, deadline=deadline))
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            return failed
        last = results[-1] if results else None
        return SearchResult(ok=True, started_at=started, finished_at=time.time(),
                            sightings=[s for r in results for s in r.sightings],
                            clock_offset=last.clock_offset if last else None,
                            clock_uncertainty=last.clock_uncertainty if last else None)

    def _subject_term(self) -> str:
        """Search for the one probe of this round (the tag prefix would find them all)."""
        return self._term


def serve(argv: list[str]) -> int:
    """Run the daemon with per-probe searches until SIGTERM (the naive side of the benchmark)."""
    from probe.daemon import run_until_signalled, start_daemon
    from probe.logs import configure_logging

    parser = argparse.ArgumentParser(prog="batching.py serve")
    parser.add_argument("--mode", choices=("naive",), required=True)
    parser.add_argument("-c", "--config.file", dest="config_file", required=True)
    parser.add_argument("--web.listen-address", dest="listen_address", required=True)
    parser.add_argument("--log.level", dest="log_level", default="warn")
    args = parser.parse_args(argv)
    configure_logging("logfmt", args.log_level)

    def factory(config: MailboxConfig, key: bytes) -> PerProbeMailbox:
        return PerProbeMailbox(config, key=key)

    daemon, server = start_daemon(Path(args.config_file), listen_address=args.listen_address,
                                  mailbox_factory=factory)
    return run_until_signalled(daemon, server)


def row(label: str, result: Result) -> list[object]:
    """Return one table row."""
    return [label, result.pairs, f"{result.interval:g} s x {result.intervals}", result.sent, result.ews,
            f"{result.ews_per_probe:.3f}", f"{result.cpu_seconds:.1f}", f"{result.cpu_ms_per_probe:.2f}",
            f"{result.delivered} / {result.scheduled}"]


HEADER = ["search", "pairs", "interval", "probes sent", "EWS requests", "EWS req/probe", "CPU s",
          "CPU ms/probe", "delivered / scheduled"]


def main() -> int:
    """Run both ways against one lab, print the table, and update docs/benchmarks.md."""
    if sys.argv[1:2] == ["serve"]:
        return serve(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (20 pairs, one 2 s interval)")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--intervals", type=int, default=2)
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    pairs, interval, intervals = (QUICK_PAIRS, QUICK_INTERVAL, 1) if args.quick else (args.pairs, args.interval,
                                                                                      args.intervals)
    poll_interval = QUICK_POLL_INTERVAL if args.quick else POLL_INTERVAL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        work = Path(tmp)
        with lab_process(work / "lab", smart_hosts=pairs // ROUTES_PER_LAB, mailboxes=2) as lab:
            for label, runner in (("batched (the probe)", PROBE_RUN), ("one per probe (naive)", NAIVE_RUN)):
                print(f"{time.strftime('%H:%M:%S')} {label}: {pairs} pairs, {interval:g} s x {intervals}",
                      flush=True)
                result = measure(lab, work / label.split()[0], pairs, interval, intervals, runner=runner,
                                 scrape_every=0, poll_interval=poll_interval)
                rows.append(row(label, result))
                print(table(HEADER, rows[-1:]), flush=True)
    body = table(HEADER, rows)
    print(body)
    if not args.no_report and not args.quick:
        update_report("batching", "3. Batching: one search per mailbox vs one per probe", _explain() + body,
                      command=f"python bench/batching.py --pairs {pairs} --interval {interval:g} "
                              f"--intervals {intervals}")
    return 0


def _explain() -> str:
    return (
        "The same load twice against one lab: the probe's batched search (one FindItem per mailbox for every "
        "probe in flight, one GetItem for the matches) and a bench-only mailbox searching once per probe in "
        "flight (FindItem by its probe id in the subject, then GetItem), in the otherwise unchanged daemon. "
        "Streaming, 4 mailboxes. EWS requests are every operation the lab served in the window; CPU is the "
        "daemon process's.\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
