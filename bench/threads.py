"""Benchmark where the daemon's CPU goes: CPU per probe of each of its threads (send pool, watchers, streams...).

Run: python bench/threads.py [--quick] [--pairs 500] [--interval 15] [--window 30]
The lab runs in its own process; the daemon runs in this one (probe.daemon.Daemon, the real thing), so each
of its threads' CPU clocks can be read (CLOCK_THREAD_CPUTIME_ID via pthread_getcpuclockid). After a warm-up
of one interval plus 15 s (``--quick``: until as many verdicts as pairs are in), the window starts; at its end,
each thread's CPU in the window is divided by the verdicts decided in it. Threads are grouped by name (the send
pool's workers together). Nothing scrapes /metrics. Prints the table only (the figures move with the machine's
load; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import lab_process, table, write_config

from probe.config import load_config
from probe.daemon import Daemon
from probe.logs import configure_logging

WARM_UP_EXTRA = 15.0
# The smoke run: 20 pairs every 2 s for a 2 s window, mailboxes searched at most every second on new mail; its
# warm-up ends as soon as as many verdicts as pairs are in (at most the full warm-up).
QUICK_PAIRS, QUICK_INTERVAL, QUICK_WINDOW, QUICK_POLL_INTERVAL = 20, 2.0, 2.0, 1.0


def group(name: str) -> str:
    """Return a thread's group: its name without the numbers that tell pool workers apart."""
    return re.sub(r"[\d_ -]+$", "", re.sub(r"\(.*\)", "", name)).strip() or name


def cpu_by_group() -> dict[str, float]:
    """Return the CPU seconds so far of this process's live threads, summed by group."""
    seconds: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        with contextlib.suppress(OSError, ProcessLookupError):  # a thread that ended meanwhile
            name = group(thread.name)
            seconds[name] = seconds.get(name, 0.0) + time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return seconds


def decided(state_db: Path) -> int:
    """Return how many probes have a verdict in the ledger."""
    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)) as db:
        return int(db.execute("SELECT COUNT(*) FROM probes WHERE state NOT IN ('submitting', 'in_flight')")
                   .fetchone()[0])


def warm_up(state_db: Path, seconds: float, *, verdicts: int | None) -> None:
    """Sleep ``seconds``; or, given ``verdicts``, only until that many probes have a verdict."""
    end = time.monotonic() + seconds
    if verdicts is None:
        time.sleep(seconds)
        return
    while time.monotonic() < end and not (state_db.exists() and decided(state_db) >= verdicts):
        time.sleep(0.1)


def main() -> int:
    """Run the daemon in this process on a lab and print each thread group's CPU per probe."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (20 pairs, 2 s interval)")
    parser.add_argument("--pairs", type=int, default=500, help="(route, smart host) pairs, a multiple of 4")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured after the warm-up")
    args = parser.parse_args()
    pairs, interval, window = ((QUICK_PAIRS, QUICK_INTERVAL, QUICK_WINDOW) if args.quick
                               else (args.pairs, args.interval, args.window))
    configure_logging("logfmt", "warn")
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=pairs // 4, mailboxes=2) as lab:
        state = Path(tmp) / "state"
        config = write_config(lab, state / "probe.yaml", interval=interval, timeout=30.0, jitter=0.9 * interval,
                              watch="streaming", poll_interval=QUICK_POLL_INTERVAL if args.quick else 10.0,
                              state_dir=state)
        daemon = Daemon(load_config(config))
        daemon.start()
        try:
            warm_up(state / "state.db", interval + WARM_UP_EXTRA, verdicts=pairs if args.quick else None)
            n0, cpu0, process0 = decided(state / "state.db"), cpu_by_group(), time.process_time()
            time.sleep(window)
            n1, cpu1, process1 = decided(state / "state.db"), cpu_by_group(), time.process_time()
        finally:
            daemon.stop()
    probes = max(1, n1 - n0)
    used = {name: seconds - cpu0.get(name, 0.0) for name, seconds in cpu1.items()}
    rows = [[name, f"{1000 * seconds / probes:.2f}"]
            for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]) if seconds > 0.005]
    rows.append(["the whole process", f"{1000 * (process1 - process0) / probes:.2f}"])
    print(f"{pairs} pairs every {interval:g} s, streaming; {n1 - n0} verdicts in a {window:g} s window")
    print(table(["thread", "CPU ms per probe"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
