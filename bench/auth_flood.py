"""Benchmark basic auth under a flood of wrong passwords (issue 13): does an authenticated scrape stay quick?

Run: python bench/auth_flood.py [--quick] [--threads 256] [--seconds 25] [--cost 10]

The lab runs in its own process, the daemon in another, with an exporter-toolkit web config holding one
bcrypt user (cost ``--cost``). For each phase this process runs ``--threads`` threads that ask for /metrics
with a wrong password as fast as they are answered, while one scraper asks with the right one every 0.25 s:
no flood, then a new wrong password on every request (no cache can help: each costs a bcrypt check), then
one wrong password over and over. Printed per phase: the scraper's latencies, the wrong requests answered,
and the daemon's CPU seconds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, lab_process, percentile, stop_process, table, write_config

USER, PASSWORD = "prometheus", "right-horse-battery"


def auth(password: str) -> dict[str, str]:
    """Return a basic auth header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()}


def get(port: int, headers: dict[str, str]) -> tuple[int, float]:
    """Return the status and seconds of one GET /metrics."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics", headers=headers)
        reply = conn.getresponse()
        reply.read()
        return reply.status, time.perf_counter() - start
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(port: int, pid: int, *, threads: int, seconds: float,
          wrong: Callable[[int, int], str] | None) -> list[object]:
    """Run one phase; return its table row."""
    stop = threading.Event()
    answered = [0] * threads

    def flood(index: int) -> None:
        for n in itertools.count():
            if stop.is_set() or wrong is None:
                return
            with contextlib.suppress(OSError):
                if get(port, auth(wrong(index, n)))[0] == 401:
                    answered[index] += 1

    workers = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(threads if wrong else 0)]
    cpu = cpu_seconds(pid)
    for worker in workers:
        worker.start()
    latencies, statuses = [], set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, took = get(port, auth(PASSWORD))
        statuses.add(status)
        latencies.append(took)
        time.sleep(0.25)
    used = cpu_seconds(pid) - cpu
    stop.set()
    for worker in workers:
        worker.join(60)
    ms = [x * 1000 for x in latencies]
    return [len(workers), sum(answered), len(latencies), ",".join(map(str, sorted(statuses))),
            f"{percentile(ms, 0.5):.0f}", f"{percentile(ms, 0.9):.0f}", f"{max(ms):.0f}", f"{used:.1f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 threads, 1 s a phase")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.seconds, args.cost = 16, 1.0, 6
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=2, mailboxes=1) as lab:
        config = write_config(lab, Path(tmp) / "probe.yaml", interval=5, timeout=30, jitter=0.5,
                              state_dir=Path(tmp) / "state")
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
        web = Path(tmp) / "web.yml"
        web.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
        port = free_port()
        with (Path(tmp) / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(config),
                                       "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web)],
                                      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_up(port)
            rows = [["no flood", *phase(port, daemon.pid, threads=args.threads, seconds=args.seconds, wrong=None)],
                    ["a new wrong password each request",
                     *phase(port, daemon.pid, threads=args.threads, seconds=args.seconds,
                            wrong=lambda i, n: f"wrong-{i}-{n}")],
                    ["one wrong password repeated",
                     *phase(port, daemon.pid, threads=args.threads, seconds=args.seconds,
                            wrong=lambda i, n: "wrong")]]
        finally:
            stop_process(daemon, grace=15)
    print(f"bcrypt cost {args.cost}, {args.seconds:g} s a phase, one authenticated scrape every 0.25 s")
    print(table(["phase", "flood threads", "wrong requests answered 401", "scrapes", "scrape statuses",
                 "scrape p50 ms", "p90 ms", "max ms", "daemon CPU s"], rows))
    return 0


def free_port() -> int:
    """Return a free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, timeout: float = 60.0) -> None:
    """Wait until the daemon answers an authenticated scrape."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if get(port, auth(PASSWORD))[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("the daemon did not answer in time")


if __name__ == "__main__":
    sys.exit(main())
