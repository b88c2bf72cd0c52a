"""Benchmark what one connector probe's submission costs the probe, beside a direct probe's.

Run: python bench/connector.py [--quick] [--count 200]
The lab runs in its own process; this process submits one way at a time, ``count`` times, and reads its own
thread's CPU clock and the lab's count of EWS requests:

- a direct probe: ``submit()`` straight to a smart host (STARTTLS, AUTH, the message);
- a connector probe by client submission (``submit: smtp``): ``submit()`` to the source forest's port;
- a connector probe over EWS (``submit: ews``): CreateItem SendOnly from the sender's mailbox, with NTLM, each
  submission on a new connection (as the probe does), with the server's version remembered from the first
  submission's guess (the lab's probe.yaml gives none) and given (``version:`` set).

The source transport's own work (queue, smart host) happens in the lab's process, off this clock.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LabProcess, lab_process, table

from probe.config import Config, EwsConfig, load_config
from probe.message import build_probe_message
from probe.smtp import SubmitResult, submit
from probe.submit.connector import submission_host
from probe.submit.ews import send_from_mailbox

HEADER = ["submission", "count", "CPU ms each", "wall ms each", "EWS requests each"]
ROUTE = "contoso-to-fourthcoffee"


def _ews_requests(lab: LabProcess) -> int:
    return int(sum(lab.stats()["ews_total"].values()))


def timed(lab: LabProcess, what: str, count: int, operation: Callable[[], SubmitResult]) -> list[object]:
    """Run ``operation`` ``count`` times (after one warm-up); return the table row."""
    warm = operation()
    if not warm.ok:
        raise RuntimeError(f"{what}: {warm.error}")
    requests, cpu, wall = _ews_requests(lab), time.thread_time(), time.perf_counter()
    for _ in range(count):
        result = operation()
        if not result.ok:
            raise RuntimeError(f"{what}: {result.error}")
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return [what, count, f"{1000 * cpu / count:.2f}", f"{1000 * wall / count:.2f}",
            f"{(_ews_requests(lab) - requests) / count:.1f}"]


def measure(lab: LabProcess, config: Config, count: int) -> list[list[object]]:
    """Return a row per way of submitting."""
    route = next(r for r in config.routes if r.name == ROUTE)
    recipient = config.recipient_of(route)
    source = config.sender_mailbox(route)
    assert source is not None
    assert isinstance(source.backend, EwsConfig)
    assert route.connector is not None
    given = replace(source, backend=replace(source.backend, version="15.2.1544.4"))
    port = lab.info["forests"]["contoso"]["submission"]
    password = source.backend.password
    smtp = submission_host(replace(route.connector, submit="smtp", host=port["host"], port=port["port"],
                                   username=route.sender, password=password, ca_file=route.smart_hosts[0].ca_file))

    def message() -> bytes:
        return build_probe_message(key=b"k" * 32, route=ROUTE, smart_host="@connector", sender=route.sender,
                                   recipient=recipient).raw

    return [
        timed(lab, "direct: submit() to a smart host", count, lambda: submit(
            host=route.smart_hosts[0], sender=route.sender, recipient=recipient, message=message())),
        timed(lab, "connector, submit: smtp", count, lambda: submit(
            host=smtp, sender=route.sender, recipient=recipient, message=message())),
        timed(lab, "connector, submit: ews (version remembered)", count,
              lambda: send_from_mailbox(source, message=message())),
        timed(lab, "connector, submit: ews (version given)", count,
              lambda: send_from_mailbox(given, message=message())),
    ]


def main() -> int:
    """Measure against a lab in its own process and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (5 of each)")
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    count = 5 if args.quick else args.count
    with tempfile.TemporaryDirectory(prefix="bench-connector-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=2, mailboxes=1) as lab:
        rows = measure(lab, load_config(lab.state_dir / "probe.yaml"), count)
    print(table(HEADER, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
