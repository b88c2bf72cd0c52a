"""Benchmark the lab's EWS endpoint: FindItem latency over a 10,000-item mailbox, 1 and 50 concurrent clients.

Run: python bench/lab_ews.py [--items 10000] [--clients 50] [--requests 40]
The requests are exchangelib 5.6's own FindItem bodies (tests/data/ews/requests, scenarios A and G), sent
over keep-alive HTTP connections (one requests.Session per client thread) with Basic auth. The endpoint runs
in a child process, so the clients' own work does not share its interpreter lock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.lab.ews import EwsServer
from probe.lab.faults import FaultRegistry
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore

FOREST = "fourthcoffee.test"
MAILBOX = "mailflow.probe@fourthcoffee.test"
USER, PASSWORD = "svc-mailflow@fourthcoffee.test", "bench-password"
REQUESTS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "ews" / "requests"
QUERIES = {
    "subject Contains, inbox+junk": "A-basic-versionguess/05-FindItem.xml",
    "X-Probe-Tag + date, sorted": "G-extprop-restriction/04-FindItem.xml",
}


def seed(store: MailboxStore, count: int) -> None:
    """Fill the mailbox: most items in Inbox, every tenth in Junk, one in a hundred tagged TAG-1234."""
    for n in range(count):
        tag = "TAG-1234" if n % 100 == 0 else f"OTHER-{n}"
        raw = (f"From: probe@contoso.test\r\nTo: {MAILBOX}\r\nSubject: probe {tag}\r\n"
               f"Message-ID: <bench-{n}@probe>\r\nX-Probe-Tag: {tag}\r\n\r\nbody {n}\r\n").encode()
        store.deliver(MAILBOX, raw, folder="junkemail" if n % 10 == 0 else "inbox")


def load_query(relative: str) -> bytes:
    """Return a recorded FindItem body, addressed to the bench mailbox."""
    return (REQUESTS_DIR / relative).read_bytes().replace(b"probe@example.com", MAILBOX.encode())


def client(url: str, body: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    """Send ``count`` FindItems over one keep-alive session, recording latencies and errors."""
    with requests.Session() as session:
        session.auth = (USER, PASSWORD)
        for _ in range(count):
            start = time.perf_counter()
            try:
                reply = session.post(url, data=body, timeout=30,
                                     headers={"Content-Type": "text/xml; charset=utf-8"})
                content = reply.content
                content = reply.content
                ok = reply.status_code == 200 and b"NoError" in content and b'ResponseClass="Error"' not in content
            except requests.RequestException as exc:
                errors.append(str(exc))
                continue
            latencies.append(time.perf_counter() - start)
            if not ok:
                errors.append(f"HTTP {reply.status_code}")


def run(url: str, body: bytes, clients: int, per_client: int) -> tuple[list[float], list[str], float]:
    """Run ``clients`` threads of ``per_client`` requests; return latencies, errors and wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(url, body, per_client, latencies, errors))
               for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    """Return a percentile (nearest rank) of some values, in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def row(label: str, clients: int, latencies: list[float], errors: list[str], wall: float) -> str:
    """Format one table row."""
    if not latencies:
        return f"| {label} | {clients} | 0 | - | - | - | - | - | {len(errors)} |"
    return (f"| {label} | {clients} | {len(latencies)} | {percentile(latencies, 0.50):.1f} | "
            f"{percentile(latencies, 0.95):.1f} | {percentile(latencies, 0.99):.1f} | {1000 * max(latencies):.1f} | "
            f"{len(latencies) / wall:.0f} | {len(errors)} |")


def serve(items: int, urls: multiprocessing.Queue[str], done: multiprocessing.synchronize.Event) -> None:
    """Seed a mailbox and serve it until told to stop (runs in the child process)."""
    store = MailboxStore()
    store.add_mailbox(MAILBOX, FOREST)
    started = time.perf_counter()
    seed(store, items)
    print(f"seeded {store.count(MAILBOX)} items in {time.perf_counter() - started:.1f} s", flush=True)
    server = EwsServer(FOREST, store=store, faults=FaultRegistry(), stats=LabStats(),
                       users={USER: PASSWORD}, host="127.0.0.1")
    server.start()
    urls.put(server.http_url or "")
    done.wait()
    server.stop()


def measure(url: str, clients: int, per_client: int) -> None:
    """Print the table rows of every query at 1 and ``clients`` concurrent clients."""
    print("| query | clients | requests | p50 ms | p95 ms | p99 ms | max ms | req/s | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, relative in QUERIES.items():
        body = load_query(relative)
        run(url, body, 1, 5)  # warm-up
        for n, count in ((1, per_client * 5), (clients, per_client)):
            latencies, errors, wall = run(url, body, n, count)
            print(row(label, n, latencies, errors, wall), flush=True)


def main() -> int:
    """Start a seeded endpoint in a child process, run the loads, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    args = parser.parse_args()
    if not REQUESTS_DIR.is_dir():
        print(f"needs the recorded requests in {REQUESTS_DIR}", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    urls: multiprocessing.Queue[str] = ctx.Queue()
    done = ctx.Event()
    child = ctx.Process(target=serve, args=(args.items, urls, done), daemon=True)
    child.start()
    try:
        url = urls.get(timeout=120)
        print(f"python {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs, endpoint {url}")
        measure(url, args.clients, args.requests)
    finally:
        done.set()
        child.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
