"""Benchmark the daemon's cost at scale: 100, 500 and 2,000 (route, smart host) pairs in one process.

Run: python bench/scale.py [--quick] [--sizes 100,500,2000] [--interval 60] [--intervals 3]
Per size, a lab runs in its own process (``python -m probe lab``) with pairs/4 smart hosts per forest and
2 mailboxes per forest (4 routes, 4 mailboxes); the daemon runs in another (``python -m probe run``),
streaming, no jitter. The window starts when the daemon serves /metrics and lasts ``intervals`` whole
intervals, so each pair is due exactly that many times in it. Figures for the daemon's process only:
CPU (utime + stime from /proc) per probe sent in the window, RSS (VmRSS at the end, VmHWM peak),
scheduling lag (its own ``mailflow_probe_scheduler_lag_seconds`` histogram, interpolated within buckets
as Prometheus does), EWS requests per probe (the lab's /stats), probes completed vs scheduled (the
daemon's ledger, after a short drain).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    LabProcess,
    cpu_seconds,
    cpu_split,
    histogram_quantile,
    lab_process,
    profile_top,
    profiling,
    rss_mib,
    scrape_histogram,
    stop_process,
    table,
    update_report,
    write_config,
)
from submit import FULL_HANDSHAKE_ROW, SUBMIT_ROW, TCP_ROW
from submit import measure as measure_submit

from probe.config import load_config

ROUTES_PER_LAB = 4  # 2 forests x 2 mailboxes each
LAG = "mailflow_probe_scheduler_lag_seconds"
LAG_PAGE = f"/metrics?name[]={LAG}_bucket"  # only the lag buckets: cheap, unlike the whole page at scale
DRAIN_SECONDS = 20.0
SCRAPE_EVERY = 15.0
POLL_INTERVAL = 10.0
# The smoke run: 20 pairs, one 5 s interval; its mailboxes searched at most every second on new mail (not 10 s),
# so that the drain after the window does not wait out a 10 s poll interval; 5 submissions for the floor.
QUICK_PAIRS, QUICK_INTERVAL, QUICK_POLL_INTERVAL, QUICK_SUBMIT_COUNT = 20, 5.0, 1.0, 5
# What Prometheus 2.x asks for: OpenMetrics first, the text format as a fallback.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROBE_RUN = ("-m", "probe", "run")
GOAL_CPU_MS, GOAL_RSS_MB, GOAL_LAG_P99, GOAL_EWS = 5.0, 250.0, 1.0, 0.05
GOAL_SUBMIT_RATIO, GOAL_PAGE_MB = 2.0, 5.0
MIB = 2**20 / 1e6  # MB per MiB


@dataclass(frozen=True, kw_only=True)
class Result:
    """What one size came to."""

    pairs: int
    interval: float
    intervals: int
    cpu_seconds: float
    system_seconds: float
    startup_cpu: float
    sent: int
    delivered: int
    other: int
    open_left: int
    missed: int
    scrape_cpu: float
    scrape_mb: float
    scrapes: int
    rss: float
    peak_rss: float
    lag_p50: float
    lag_p99: float
    ews: int
    series_per_pair: float = float("nan")
    submit_ms: float = float("nan")  # bench/submit.py's whole submit step, CPU ms each, measured in the same run
    floor_ms: float = float("nan")  # one TCP connect and close plus one full TLS handshake, CPU ms each

    @property
    def scheduled(self) -> int:
        """Return how many probes were due in the window."""
        return self.pairs * self.intervals

    @property
    def cpu_ms_per_probe(self) -> float:
        """Return the daemon's CPU milliseconds per probe sent in the window."""
        return 1000 * self.cpu_seconds / max(1, self.sent)

    @property
    def system_ms_per_probe(self) -> float:
        """Return the part of the CPU per probe spent in the kernel (system time)."""
        return 1000 * self.system_seconds / max(1, self.sent)

    @property
    def ews_per_probe(self) -> float:
        """Return the EWS requests per probe sent in the window."""
        return self.ews / max(1, self.sent)

    def row(self) -> list[object]:
        """Return the table row."""
        user = self.cpu_ms_per_probe - self.system_ms_per_probe
        return [self.pairs, f"{self.interval:g} s x {self.intervals}",
                f"{self.cpu_ms_per_probe:.2f} ({user:.2f} + {self.system_ms_per_probe:.2f})",
                f"{self.startup_cpu:.1f}", f"{self.rss:.0f} / {self.peak_rss:.0f}", f"{1000 * self.lag_p50:.1f}",
                f"{1000 * self.lag_p99:.1f}", f"{self.ews_per_probe:.3f}", self.ews,
                f"{self.delivered} / {self.scheduled}", self.missed, self.other, self.open_left,
                self.scrapes, f"{self.scrape_cpu:.2f} / {self.scrape_mb:.1f}"]


FLOOR_HEADER = ["pairs", "daemon CPU ms/probe", "submit step CPU ms (bench/submit.py)",
                "floor CPU ms: TCP connect + full TLS handshake", "daemon / submit step", "daemon / floor",
                "/metrics MB", "series per pair"]


def floor_row(result: Result) -> list[object]:
    """Return the row comparing the daemon's CPU per probe with the submit step and its floor."""
    cpu = result.cpu_ms_per_probe
    return [result.pairs, f"{cpu:.2f}", f"{result.submit_ms:.2f}", f"{result.floor_ms:.2f}",
            f"{cpu / result.submit_ms:.2f}x", f"{cpu / result.floor_ms:.2f}x", f"{result.scrape_mb:.2f}",
            f"{result.series_per_pair:.1f}"]


HEADER = ["pairs", "interval", "CPU ms/probe (user + system)", "start-up CPU s", "RSS / peak MiB", "lag p50 ms",
          "lag p99 ms", "EWS req/probe", "EWS req", "delivered / scheduled", "missed", "other verdicts",
          "open after drain", "scrapes in window", "one more /metrics scrape: CPU s / MB"]


def free_port() -> int:
    """Return a loopback TCP port free just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def daemon_process(config: Path, port: int, log: Path,
                   runner: Sequence[str] = PROBE_RUN) -> Iterator[subprocess.Popen[bytes]]:
    """Run the daemon (``python -m probe run`` by default) in a child process; SIGTERM it on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *runner, "-c", str(config), "--web.listen-address", f"127.0.0.1:{port}",
             "--log.level", "warn"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop_process(process, grace=30)


def scrape(port: int, path: str = "/metrics", accept: str = "text/plain") -> str:
    """Return a page of the daemon's (its /metrics by default)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=120) as reply:  # noqa: S310 - the daemon's loopback http URL
        text: str = reply.read().decode()
        return text


@contextlib.contextmanager
def prometheus(port: int, every: float) -> Iterator[list[int]]:
    """Scrape /metrics every ``every`` seconds, as Prometheus would, while the block runs; yield the sizes."""
    sizes: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            sizes.append(len(scrape(port, accept=PROMETHEUS_ACCEPT)))

    thread = threading.Thread(target=run, name="prometheus", daemon=True)
    if every > 0:
        thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        if every > 0:
            thread.join()


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 120.0) -> None:
    """Wait until the daemon says it is ready (/-/ready: cheap, unlike /metrics at scale)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}")
        with contextlib.suppress(OSError):
            scrape(port, "/-/ready")
            return
        time.sleep(0.1)
    raise RuntimeError("the daemon did not start in time")


def ledger_counts(state_db: Path, start: float, end: float, due: int) -> tuple[int, int, int, int, int]:
    """Return (sent, delivered, other verdicts, still open, missed) of probes created in [start, end).

    Missed: per pair, how many of its ``due`` probes in the window were not delivered.
    """
    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute("SELECT state, COUNT(*) FROM probes WHERE created_at >= ? AND created_at < ?"
                          " GROUP BY state", (start, end)).fetchall()
        per_pair = db.execute("SELECT COUNT(*) FROM probes WHERE created_at >= ? AND created_at < ?"
                              " AND state = 'delivered' GROUP BY route, smart_host", (start, end)).fetchall()
        pairs = db.execute("SELECT COUNT(DISTINCT route || '/' || smart_host) FROM probes").fetchone()[0]
    states = dict(rows)
    sent = sum(states.values())
    delivered = states.get("delivered", 0)
    still_open = states.get("submitting", 0) + states.get("in_flight", 0)
    missed = sum(max(0, due - n) for (n,) in per_pair) + due * (pairs - len(per_pair))
    return sent, delivered, sent - delivered - still_open, still_open, missed


def measure(lab: LabProcess, work: Path, pairs: int, interval: float, intervals: int, *,
            runner: Sequence[str] = PROBE_RUN, profile: bool = False, scrape_every: float = SCRAPE_EVERY,
            poll_interval: float = POLL_INTERVAL) -> Result:
    """Run the daemon on the lab for ``intervals`` intervals and return its figures."""
    # poll_interval 10 s: with streaming, new mail starts a search at most every 10 s per mailbox, so one
    # search covers every delivery of the gap (the setting for thousands of pairs; the lab's default is 2 s).
    config = write_config(lab, work / "probe.yaml", interval=interval, timeout=120.0, jitter=0.0,
                          watch="streaming", poll_interval=poll_interval, state_dir=work / "state")
    port = free_port()
    with daemon_process(config, port, work / "daemon.log", runner) as process:
        wait_ready(process, port)
        start, (user0, sys0), ews0 = time.time(), cpu_split(process.pid), lab.mailbox_requests()
        lag0 = scrape_histogram(scrape(port, LAG_PAGE), LAG)
        with profiling(process.pid, work / "profile.txt", enabled=profile), prometheus(port, scrape_every) as sizes:
            time.sleep(interval * intervals)
        end, (user1, sys1), ews1 = time.time(), cpu_split(process.pid), lab.mailbox_requests()
        lag = histogram_delta(scrape_histogram(scrape(port, LAG_PAGE), LAG), lag0)
        rss, peak = rss_mib(process.pid), rss_mib(process.pid, "VmHWM")
        before = cpu_seconds(process.pid)
        page = scrape(port)
        scrape_cpu, scrape_mb = cpu_seconds(process.pid) - before, len(page) / 1e6
        per_pair = sum(1 for line in page.splitlines() if 'smart_host="' in line and line[:1] != "#") / pairs
        counts = _drain(work / "state" / "state.db", start, end, intervals)
    sent, delivered, other, still_open, missed = counts
    return Result(pairs=pairs, interval=interval, intervals=intervals, cpu_seconds=user1 + sys1 - user0 - sys0,
                  system_seconds=sys1 - sys0, startup_cpu=user0 + sys0,
                  sent=sent, delivered=delivered, other=other, open_left=still_open, missed=missed, rss=rss,
                  peak_rss=peak, scrape_cpu=scrape_cpu, scrape_mb=scrape_mb, scrapes=len(sizes),
                  lag_p50=histogram_quantile(lag, 0.5), lag_p99=histogram_quantile(lag, 0.99), ews=ews1 - ews0,
                  series_per_pair=per_pair)


def with_submit_costs(result: Result, lab: LabProcess, count: int) -> Result:
    """Return ``result`` with what bench/submit.py measures, against the same lab, the daemon stopped."""
    config = load_config(lab.state_dir / "probe.yaml")
    route = config.routes[0]
    costs = {cost.what: cost.cpu_ms for cost in measure_submit(route.smart_hosts, route.sender,
                                                                config.recipient_of(route), count)}
    floor = costs[TCP_ROW] + costs[FULL_HANDSHAKE_ROW]
    return replace(result, submit_ms=costs[SUBMIT_ROW], floor_ms=floor)


def histogram_delta(end: list[tuple[float, float]], start: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the buckets of what a histogram observed between two readings (same bounds)."""
    before = dict(start)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in end]


def _drain(state_db: Path, start: float, end: float, due: int) -> tuple[int, int, int, int, int]:
    deadline = time.monotonic() + DRAIN_SECONDS
    counts = ledger_counts(state_db, start, end, due)
    while counts[3] and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = ledger_counts(state_db, start, end, due)
    return counts


def runner_from(root: Path | None) -> Sequence[str]:
    """Return how to start the daemon: this checkout's, or the probe package under ``root``."""
    if root is None:
        return PROBE_RUN
    code = (f"import sys; sys.path.insert(0, {str(root.resolve())!r}); from probe.cli import main; "
            "sys.exit(main(['run', *sys.argv[1:]]))")
    return ("-c", code)


def profile_table(collapsed: Path) -> str:
    """Return the top of a py-spy profile as a markdown table."""
    if not collapsed.exists():
        return "(no profile: is py-spy installed?)"
    rows = [[name, f"{inclusive:.1f}", f"{own:.1f}"] for name, inclusive, own in profile_top(collapsed, 20)]
    return table(["function (file)", "inclusive %", "self %"], rows)


def goal_lines(result: Result, *, backend: str = "ews") -> list[str]:
    """Return one line per goal, judged on the largest size."""
    def judge(ok: bool) -> str:
        return "met" if ok else "**MISSED**"

    missed = result.missed
    cpu, rss, lag, ews = result.cpu_ms_per_probe, result.peak_rss, result.lag_p99, result.ews_per_probe
    ratio = cpu / result.submit_ms
    return [
        f"- daemon CPU per probe <= {GOAL_SUBMIT_RATIO:g}x the submit step of the same run: {cpu:.2f} ms = "
        f"{ratio:.2f}x {result.submit_ms:.2f} ms ({cpu / result.floor_ms:.2f}x the floor, {result.floor_ms:.2f} ms), "
        f"{judge(ratio <= GOAL_SUBMIT_RATIO)}",
        f"- /metrics <= {GOAL_PAGE_MB:g} MB: {result.scrape_mb:.2f} MB ({result.series_per_pair:.1f} series per pair), "
        f"{judge(result.scrape_mb <= GOAL_PAGE_MB)}",
        f"- CPU per probe <= {GOAL_CPU_MS:g} ms: {cpu:.2f} ms, {judge(cpu <= GOAL_CPU_MS)}",
        f"- RSS <= {GOAL_RSS_MB:g} MB ({GOAL_RSS_MB / MIB:.0f} MiB): {result.rss:.0f} MiB at the end, "
        f"peak {rss:.0f} MiB ({rss * MIB:.0f} MB), {judge(rss * MIB <= GOAL_RSS_MB)}",
        f"- scheduling lag p99 <= {GOAL_LAG_P99:g} s: {lag:.3f} s, {judge(lag <= GOAL_LAG_P99)}",
        f"- {backend.upper()} requests per probe <= {GOAL_EWS:g}: {ews:.3f}, {judge(ews <= GOAL_EWS)}",
        f"- none missed: {result.delivered} delivered of {result.scheduled} due; {missed} due and not delivered, "
        f"{judge(missed <= 0)}",
    ]


def main() -> int:
    """Measure each size against its own lab, print the table, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (20 pairs, one 5 s interval)")
    parser.add_argument("--sizes", default="100,500,2000", help="pair counts, multiples of 4")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--backend", choices=("ews", "imap", "graph"), default="ews",
                        help="how the lab's mailboxes are read (requests per probe are that backend's)")
    parser.add_argument("--profile", action="store_true", help="sample the daemon with py-spy; print the top")
    parser.add_argument("--scrape-every", type=float, default=SCRAPE_EVERY,
                        help="seconds between full /metrics scrapes in the window, as Prometheus would (0: none)")
    parser.add_argument("--submit-count", type=int, default=500,
                        help="submissions bench/submit.py times per size, after the daemon's window")
    parser.add_argument("--probe-root", type=Path, default=None,
                        help="run the daemon from another checkout's probe/ (before/after comparisons)")
    args = parser.parse_args()
    sizes = [QUICK_PAIRS] if args.quick else [int(s) for s in args.sizes.split(",")]
    interval, intervals = (QUICK_INTERVAL, 1) if args.quick else (args.interval, args.intervals)
    poll_interval = QUICK_POLL_INTERVAL if args.quick else POLL_INTERVAL
    results = []
    header = [h.replace("EWS", args.backend.upper()) for h in HEADER]  # the requests are the backend's
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for pairs in sizes:
            work = Path(tmp) / str(pairs)
            print(f"{time.strftime('%H:%M:%S')} {pairs} pairs, {interval:g} s x {intervals}", flush=True)
            with lab_process(work / "lab", smart_hosts=pairs // ROUTES_PER_LAB, mailboxes=2,
                             backend=args.backend) as lab:
                result = measure(lab, work, pairs, interval, intervals, profile=args.profile,
                                 runner=runner_from(args.probe_root), scrape_every=args.scrape_every,
                                 poll_interval=poll_interval)
                results.append(with_submit_costs(result, lab, QUICK_SUBMIT_COUNT if args.quick else args.submit_count))
            print(table(header, [results[-1].row()]), flush=True)
            print(table(FLOOR_HEADER, [floor_row(results[-1])]), flush=True)
            if args.profile:
                print(profile_table(work / "profile.txt"), flush=True)
    body = table(header, [r.row() for r in results]) + "\n\nCPU per probe against the floor, in the same run:\n\n" + \
        table(FLOOR_HEADER, [floor_row(r) for r in results])
    goals = goal_lines(max(results, key=lambda r: r.pairs), backend=args.backend)
    print(body)
    print("\n".join(goals))
    if not args.no_report and not args.quick:
        command = shlex.join(["python", "bench/scale.py", *sys.argv[1:]])
        name, title = ("scale", "") if args.backend == "ews" else (f"scale-{args.backend}", f", over {args.backend}")
        update_report(name, f"2. Scale: one daemon, many (route, smart host) pairs{title}",
                      _explain(interval, intervals, args.scrape_every) + _backend_note(args.backend)
                      + body + f"\n\nGoals, at {max(sizes)} pairs:\n" + "\n".join(goals), command=command)
    return 0


def _backend_note(backend: str) -> str:
    if backend == "ews":
        return ""
    what = ("IMAP commands the lab's IMAP front relayed to Dovecot (UID SEARCH, UID FETCH, UID MOVE, IDLE, the "
            "clock's APPEND/UID EXPUNGE, logins; not the connections)" if backend == "imap" else
            "Graph HTTP requests (listings, $batch as one, clock pings, tokens)")
    return (f"Over {backend}, the requests counted are {what}, in place of the EWS operations; the lab "
            f"runs with `--mailbox-backend {backend}`.\n\n")


def _explain(interval: float, intervals: int, scrape_every: float) -> str:
    scraping = (f"A Prometheus stand-in scrapes the whole /metrics every {scrape_every:g} s during the window (with "
                "Prometheus's Accept header, so OpenMetrics), and that CPU and memory are in the figures; "
                if scrape_every > 0 else "Nothing scrapes the whole /metrics during the window; ")
    return (
        f"Interval {interval:g} s, no jitter, streaming; the window is {intervals} whole intervals from the moment "
        "the daemon is ready (/-/ready; start-up CPU, shown apart, is not in the per-probe figure). Lab: pairs/4 smart "
        "hosts per forest, 2 mailboxes per forest, in its own process; the daemon in another. CPU ms/probe = the "
        "daemon process's utime+stime in the window / probes sent in it, user + system apart (on loopback the "
        "system time includes the kernel's receive work for the lab's end of each connection). "
        + scraping +
        "RSS: at the window's end, and the process's peak (VmHWM). Lag: the daemon's own histogram, "
        "read (only its buckets, `/metrics?name[]=`) at the window's start and end, the difference "
        "interpolated within its buckets (so neither start-up nor the closing full scrape is in it). "
        "EWS requests: every operation the lab served in the window (FindItem, "
        "GetItem, DeleteItem, streaming subscriptions, clock pings). Delivered / scheduled: probes created in the "
        "window and delivered by the end of a drain of up to 20 s, against pairs x intervals; missed: per pair, "
        "the due probes (one per interval) without a delivered one. The last column is one more full scrape "
        "(text format), taken after the window: the process's CPU while it ran, the probing that went on "
        "meanwhile included (`bench/metrics_render.py` times the rendering alone).\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
