"""Benchmark the daemon's web listener against slow clients (slowloris), as issue 13 found them.

Run: python bench/slow_clients.py [--quick] [--connections 1100] [--hold 180] [--open-files 1024]

The lab runs in its own process, the daemon in another (``python -m probe run``) with soft and hard open-files
limits of ``--open-files`` (systemd's default soft limit is 1,024) and the default connection cap. This process
then holds ``--connections`` connections to the web port, each sending one byte of a request head every
``--byte-every`` seconds and opening again at its next round when the server cuts it (at once with
``--aggressive``), for ``--hold`` seconds, while a
scraper asks for /metrics every second. Printed: every scrape's latency, how long the server let each slow
client hold on, and what the daemon counted meanwhile (send failures, local faults, deliveries).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, lab_process, percentile, scrape_sum, stop_process, table, write_config

from probe.http_server import HEAD_SECONDS as DEADLINE

# The smoke run holds its clients for less than the head deadline: the server cuts them to make room (the cap
# under 256 open files is below 150); tests/test_daemon_hostile.py proves the cut at the deadline.
QUICK_HOLD = 5.0


def free_port() -> int:
    """Return a free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(config: Path, port: int, open_files: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the daemon as its own process under open-files limits of ``open_files``."""
    setter = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files}));"
              " os.execv(sys.argv[1], sys.argv[1:])")
    argv = [sys.executable, "-c", setter, sys.executable, "-m", "probe", "run", "-c", str(config),
            "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"]
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """Return status, body and seconds taken of one GET."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read(), time.perf_counter() - start
    finally:
        conn.close()


def wait_ready(port: int, timeout: float = 60.0) -> None:
    """Wait until the daemon has delivered a probe."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            status, body, _ = get(port, "/metrics")
            if status == 200 and scrape_sum(body.decode(), "mailflow_probe_delivered_total") > 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the daemon delivered nothing in time")


class Attack:
    """Slow clients: each sends a byte of a header every ``every`` seconds, and reconnects when cut."""

    def __init__(self, port: int, connections: int, every: float, *, aggressive: bool) -> None:
        self.port, self.connections, self.every, self.aggressive = port, connections, every, aggressive
        self.held_for: list[float] = []  # seconds from connect to the server's cut
        self.refused = 0
        self.open = 0
        self.peak = 0

    async def _one(self, stop: float) -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.refused += 1
                await asyncio.sleep(self.every)
                continue
            start = time.monotonic()
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                writer.write(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                while time.monotonic() < stop:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.every):
                            if await reader.read(1024) == b"":
                                break  # the server cut this client
                    writer.write(b"a")
                    await writer.drain()
                else:
                    continue
                self.held_for.append(time.monotonic() - start)
            except OSError:
                self.held_for.append(time.monotonic() - start)
            finally:
                self.open -= 1
                writer.close()
            if not self.aggressive:  # as slowloris does: the cut socket is opened again at the next round
                await asyncio.sleep(max(0.0, self.every - (time.monotonic() - start) % self.every))

    async def run(self, seconds: float) -> None:
        """Hold the connections for ``seconds``."""
        stop = time.monotonic() + seconds
        await asyncio.gather(*(self._one(stop) for _ in range(self.connections)))


def scrape_loop(port: int, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    """Scrape /metrics every second until ``stop``; keep each latency, or the failure."""
    while not stop.wait(1.0):
        try:
            status, _, seconds = get(port, "/metrics")
        except OSError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        if status != 200:
            failures.append(f"HTTP {status}")
        latencies.append(seconds)


def counters(port: int) -> dict[str, float]:
    """Return the daemon's send failures, local errors and deliveries so far."""
    _, body, _ = get(port, "/metrics")
    text = body.decode()
    return {name: scrape_sum(text, f"mailflow_probe_{name}") for name in
            ("send_failures_total", "local_errors_total", "delivered_total", "sent_total")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=180.0, help="seconds")
    parser.add_argument("--open-files", type=int, default=1024)
    parser.add_argument("--byte-every", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=5.0, help="the probes' interval, seconds")
    parser.add_argument("--aggressive", action="store_true",
                        help="open a cut connection again at once (a connection flood), not at the next round")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: 150 connections for {QUICK_HOLD:g} s, 256 open files, probes every 2 s")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.hold, args.open_files, args.byte_every = 150, QUICK_HOLD, 256, 2.0
        args.interval = 2.0  # the first delivery (what the attack waits for) comes sooner
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the slow clients
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=2, mailboxes=1) as lab:
        config = write_config(lab, Path(tmp) / "probe.yaml", interval=args.interval, timeout=30, jitter=0.5,
                              state_dir=Path(tmp) / "state")
        port = free_port()
        daemon = start_daemon(config, port, args.open_files, Path(tmp) / "daemon.log")
        try:
            wait_ready(port)
            before = counters(port)
            attack = Attack(port, args.connections, args.byte_every, aggressive=args.aggressive)
            latencies: list[float] = []
            failures: list[str] = []
            stop = threading.Event()
            scraper = threading.Thread(target=scrape_loop, args=(port, stop, latencies, failures), daemon=True)
            scraper.start()
            asyncio.run(attack.run(args.hold))
            stop.set()
            scraper.join(15)
            after = counters(port)
        finally:
            stop_process(daemon, grace=15)
    delta = {k: after[k] - before[k] for k in after}
    held = attack.held_for
    rows = [
        ("slow clients (target at once)", args.connections), ("held for", f"{args.hold:g} s"),
        ("a cut client opens again", "at once" if args.aggressive else f"at its next round ({args.byte_every:g} s)"),
        ("daemon open-files limit (soft = hard)", args.open_files), ("probe interval", f"{args.interval:g} s"),
        ("peak slow clients connected (client side)", attack.peak),
        ("slow clients cut by the server", len(held)),
        ("held before the cut: p50 / max", f"{percentile(held, 0.5):.1f} s / {max(held, default=0):.1f} s"),
        ("cut at the head deadline (held 9.5 s or more) / earlier, to make room",
         f"{sum(1 for h in held if h >= DEADLINE - 0.5)} / {sum(1 for h in held if h < DEADLINE - 0.5)}"),
        ("scrapes / answered 200", f"{len(latencies) + len(failures)} / {len(latencies)}"),
        ("scrape latency p50 / p99 / max",
         f"{percentile(latencies, 0.5) * 1000:.0f} / {percentile(latencies, 0.99) * 1000:.0f} / "
         f"{max(latencies, default=0) * 1000:.0f} ms"),
        ("scrape failures", "; ".join(failures[:3]) or "none"),
        ("send failures counted during the hold", f"{delta['send_failures_total']:g}"),
        ("local errors counted during the hold", f"{delta['local_errors_total']:g}"),
        ("probes sent / delivered during the hold", f"{delta['sent_total']:g} / {delta['delivered_total']:g}"),
    ]
    print(table(["slow clients against the web listener", "figure"], rows))
    return 0 if not failures and delta["send_failures_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
