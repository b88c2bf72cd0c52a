"""Benchmark what one submission costs the probe: the floor under the daemon's CPU per probe.

Run: python bench/submit.py [--quick] [--count 1000] [--no-report]
The lab runs in its own process (25 smart hosts per forest); this process submits to them in turn, one at a
time, and reads its own thread's CPU clock (the system part from getrusage's sampled user/system split):

- ``submit()``: the probe's whole submit step (connect, EHLO, STARTTLS with certificate verification,
  EHLO, AUTH, MAIL, RCPT, DATA, QUIT, transcript, stage times, TLS facts);
- the TLS handshake alone, full and resumed from a session ticket (the probe resumes each smart host's session
  and does a full handshake at least every 5 minutes per host: probe/tls_sessions.py), each after a
  plain-socket EHLO and STARTTLS;
- a TCP connect and close alone, to the same smart hosts.

On loopback the kernel runs the receiving side's TCP work in the sending thread, so the system time here
includes part of the lab's share of each connection.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import lab_process, table, update_report

from probe.config import SmartHostConfig, load_config
from probe.smtp import _tls_context, submit
from probe.tls_sessions import TlsSessions

SMART_HOSTS_PER_FOREST = 25
SUBMIT_ROW = "submit(): the whole submit step, a full TLS handshake each"
SUBMIT_RESUMING_ROW = "submit(), resuming each host's TLS session (as the daemon does)"
FULL_HANDSHAKE_ROW = "TLS handshake after STARTTLS, full"
TCP_ROW = "TCP connect and close"
MESSAGE = b"From: bench@contoso.com\r\nSubject: bench\r\n\r\nA benchmark message.\r\n"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Cost:
    """CPU milliseconds per operation of this thread, and the part of it in the kernel where known."""

    what: str
    count: int
    cpu_ms: float
    system_ms: float | None  # None: the spans were too short for the kernel's user/system split
    wall_ms: float | None  # None: only part of each operation was on the clock

    def row(self) -> list[object]:
        """Return the table row."""
        return [self.what, self.count, f"{self.cpu_ms:.2f}", _shown(self.system_ms), _shown(self.wall_ms)]


HEADER = ["operation", "count", "CPU ms each", "of which system ms", "wall ms"]


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def timed(what: str, count: int, operation: Callable[[int], object]) -> Cost:
    """Run ``operation(i)`` for i in range(count) and return this thread's CPU per call."""
    operation(0)  # warm: caches, the first connection
    before, cpu, wall = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time(), time.perf_counter()
    for i in range(count):
        operation(i)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_THREAD)  # its user/system split is sampled: fine over a long loop
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    split = (after.ru_stime - before.ru_stime) / used if used > 0 else 0.0
    return Cost(what, count, 1000 * cpu / count, 1000 * cpu * split / count, 1000 * wall / count)


def _starttls_socket(host: SmartHostConfig) -> socket.socket:
    """Connect, read the banner, say EHLO and STARTTLS in the clear; return the socket ready for TLS."""
    sock = socket.create_connection((host.host, host.port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"EHLO bench.invalid\r\n")
    while reader.readline()[3:4] == b"-":
        pass
    sock.sendall(b"STARTTLS\r\n")
    reader.readline()
    reader.close()
    return sock


class Handshakes:
    """TLS handshakes after STARTTLS, timed alone (the clear-text part is outside the clock)."""

    def __init__(self, hosts: Sequence[SmartHostConfig]) -> None:
        self.hosts = hosts
        self.context = _tls_context(hosts[0])
        self.sessions: dict[str, ssl.SSLSession] = {}
        self.cpu = 0.0
        self.resumed = 0

    def run(self, i: int, *, resume: bool) -> None:
        """Do one handshake with host ``i`` (resuming its last session if asked) and close politely."""
        host = self.hosts[i % len(self.hosts)]
        sock = _starttls_socket(host)
        before = time.thread_time()
        tls = self.context.wrap_socket(sock, server_hostname=host.server_name or host.host,
                                       session=self.sessions.get(host.name) if resume else None)
        self.cpu += time.thread_time() - before
        self.resumed += bool(tls.session_reused)
        reader = tls.makefile("rb")
        tls.sendall(b"EHLO bench.invalid\r\n")  # reading the reply also reads TLS 1.3's session tickets
        while reader.readline()[3:4] == b"-":
            pass
        if tls.session is not None:
            self.sessions[host.name] = tls.session
        tls.sendall(b"QUIT\r\n")
        reader.readline()
        reader.close()
        tls.close()

    def cost(self, what: str, count: int, *, resume: bool) -> Cost:
        """Time ``count`` handshakes; only the handshakes themselves are on the clock."""
        self.run(0, resume=resume)
        self.cpu = 0.0
        self.resumed = 0
        for i in range(count):
            self.run(i, resume=resume)
        shown = f"{what} ({self.resumed} of {count} resumed)" if resume else what
        return Cost(shown, count, 1000 * self.cpu / count, None, None)


def measure(hosts: Sequence[SmartHostConfig], sender: str, recipient: str, count: int) -> list[Cost]:
    """Return the cost of each operation, ``count`` times over the smart hosts in turn."""
    def submitting(sessions: TlsSessions) -> Callable[[int], None]:
        def one_submit(i: int) -> None:
            result = submit(host=hosts[i % len(hosts)], sender=sender, recipient=recipient, message=MESSAGE,
                            sessions=sessions)
            if not result.ok:
                raise RuntimeError(f"the lab refused a submission: {result.error}")
        return one_submit

    def connect_close(i: int) -> None:
        host = hosts[i % len(hosts)]
        socket.create_connection((host.host, host.port), timeout=TIMEOUT).close()

    handshakes = Handshakes(hosts)
    return [
        timed(SUBMIT_ROW, count, submitting(TlsSessions(max_age=0))),  # max_age 0: no session kept or resumed
        timed(SUBMIT_RESUMING_ROW, count, submitting(TlsSessions())),
        handshakes.cost(FULL_HANDSHAKE_ROW, count, resume=False),
        handshakes.cost("TLS handshake after STARTTLS, resumed", count, resume=True),
        timed(TCP_ROW, count, connect_close),
    ]


def main() -> int:
    """Measure against a lab in its own process, print the table, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (10 of each)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    count = 10 if args.quick else args.count
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=SMART_HOSTS_PER_FOREST, mailboxes=1) as lab:
        config = load_config(lab.state_dir / "probe.yaml")
        route = config.routes[0]
        costs = measure(route.smart_hosts, route.sender, config.recipient_of(route), count)
    body = table(HEADER, [c.row() for c in costs])
    print(body)
    if not args.no_report and not args.quick:
        command = shlex.join(["python", "bench/submit.py", *sys.argv[1:]])
        update_report("submit", "4. The floor: what one submission costs", _explain(count) + body, command=command)
    return 0


def _explain(count: int) -> str:
    return (
        f"One thread submits {count} times, to the {SMART_HOSTS_PER_FOREST} smart hosts of one forest in turn (the "
        "lab in its own process), and reads its own CPU clock (CLOCK_THREAD_CPUTIME_ID; the system part from "
        "getrusage's sampled user/system split, over whole loops only). The handshake rows time only "
        "`wrap_socket` after a clear-text EHLO and STARTTLS; resumed = offering the host's last TLS 1.3 session "
        "ticket. On loopback the kernel runs the receiving side's TCP work in the sending thread, so system time "
        "includes part of the lab's share.\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
