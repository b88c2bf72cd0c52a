"""Measure what two of the EWS backend's reaches into exchangelib and requests buy (probe/mailbox/ews_internals.py).

Run: python bench/ews_internals.py [--quick] [--probes 200] [--searches 20]
A lab runs in its own process; this process submits the probes through its smart hosts, then searches the
target mailbox for all of them again and again, as the probe does (one FindItem, one GetItem), three ways:
as it is; without the DateTimePrecision header (exchangelib's own requests: whole-second receipt stamps);
and without handing responses already read to exchangelib's parser whole (requests' one byte per chunk).
Reported per search: this thread's CPU (CLOCK_THREAD_CPUTIME_ID) and the receipt stamps' uncertainty
(the half-width of the interval each arrival is known to lie in, after a clock calibration).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests
from common import LabProcess, lab_process, table, update_report

import probe.mailbox.ews_internals as internals
from probe.config import Config, load_config
from probe.mailbox.backends import open_mailbox
from probe.message import build_probe_message
from probe.signing import load_or_create_key
from probe.smtp import submit

CALIBRATION_TARGET = 0.05  # the probe's own (EwsMailbox.calibrate_clock's default)
# The smoke run: 20 probes, 3 searches, the clock calibrated to within 0.25 s (two or three timed pings, not
# five or six: each waits for the server clock's next second).
QUICK_PROBES, QUICK_SEARCHES, QUICK_CALIBRATION_TARGET = 20, 3, 0.25
HEADER = ["variant", "probes per search", "searches", "CPU ms per search (this thread)",
          "receipt uncertainty, mean +-s", "receipt uncertainty, max +-s"]


@dataclass(frozen=True)
class Row:
    """One variant's figures."""

    variant: str
    probes: int
    searches: int
    cpu_ms: float
    mean_uncertainty: float
    max_uncertainty: float

    def cells(self) -> list[object]:
        """Return the table row."""
        return [self.variant, self.probes, self.searches, f"{self.cpu_ms:.1f}", f"{self.mean_uncertainty:.3f}",
                f"{self.max_uncertainty:.3f}"]


@contextlib.contextmanager
def _as_is() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _without_precision() -> Iterator[None]:
    original = internals.with_precision
    internals.with_precision = lambda envelope: envelope
    try:
        yield
    finally:
        internals.with_precision = original


@contextlib.contextmanager
def _without_whole_responses() -> Iterator[None]:
    original = internals.WholeResponse.iter_content
    internals.WholeResponse.iter_content = requests.Response.iter_content  # type: ignore[method-assign]
    try:
        yield
    finally:
        internals.WholeResponse.iter_content = original  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "as it is": _as_is,
    "without the DateTimePrecision header": _without_precision,
    "without responses read whole": _without_whole_responses,
}


def send_probes(config: Config, key: bytes, count: int) -> list[str]:
    """Submit ``count`` probes through the first route's smart hosts in turn; return their ids."""
    route = config.routes[0]
    recipient = config.recipient_of(route)
    ids = []
    for n in range(count):
        host = route.smart_hosts[n % len(route.smart_hosts)]
        message = build_probe_message(key=key, route=route.name, smart_host=host.name, sender=route.sender,
                                      recipient=recipient)
        result = submit(host=host, sender=route.sender, recipient=recipient, message=message.raw)
        if not result.ok:
            raise SystemExit(f"the lab refused probe {n}: {result.stage} {result.reason}")
        ids.append(message.probe_id)
    return ids


def measure(config: Config, key: bytes, ids: list[str], searches: int, since: float, *,
            calibration_target: float = CALIBRATION_TARGET) -> list[Row]:
    """Search for every probe ``searches`` times in each variant, its clock calibrated to within
    ``calibration_target`` seconds first; return a row each."""
    rows = []
    mailbox_config = config.mailboxes[config.routes[0].mailbox]
    for name, variant in VARIANTS.items():
        with variant():
            mailbox = open_mailbox(mailbox_config, key=key)
            try:
                mailbox.calibrate_clock(target_uncertainty=calibration_target)
                mailbox.search(ids, since=since)  # connections and exchangelib's version guess, not timed
                cpu: list[float] = []
                uncertainty: list[float] = []
                for _ in range(searches):
                    started = time.thread_time()
                    result = mailbox.search(ids, since=since)
                    cpu.append(time.thread_time() - started)
                    if not result.ok or len(result.sightings) != len(ids):
                        raise SystemExit(f"{name}: found {len(result.sightings)} of {len(ids)}: {result.error}")
                    uncertainty += [s.received_uncertainty for s in result.sightings]
            finally:
                mailbox.close()
        rows.append(Row(name, len(ids), searches, 1000 * statistics.mean(cpu), statistics.mean(uncertainty),
                        max(uncertainty)))
    return rows


def wait_for_deliveries(lab: LabProcess, count: int, timeout: float = 30.0) -> None:
    """Wait until the lab's store has ``count`` deliveries (every probe sent, in a fresh lab)."""
    end = time.monotonic() + timeout
    while len(lab.deliveries()) < count and time.monotonic() < end:
        time.sleep(0.05)


def main() -> int:
    """Measure against a lab in its own process, print the table, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (20 probes, 3 searches)")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    probes, searches = (QUICK_PROBES, QUICK_SEARCHES) if args.quick else (args.probes, args.searches)
    with tempfile.TemporaryDirectory(prefix="bench-ews-internals-") as tmp, \
            lab_process(Path(tmp) / "lab", smart_hosts=2, mailboxes=1) as lab:
        config = load_config(lab.state_dir / "probe.yaml")
        key = load_or_create_key(config.signing_key_file)
        since = time.time() - 5
        ids = send_probes(config, key, probes)
        wait_for_deliveries(lab, probes)
        rows = measure(config, key, ids, searches, since,
                       calibration_target=QUICK_CALIBRATION_TARGET if args.quick else CALIBRATION_TARGET)
    body = table(HEADER, [row.cells() for row in rows])
    print(body)
    if not args.no_report and not args.quick:
        command = shlex.join(["python", "bench/ews_internals.py", *sys.argv[1:]])
        update_report("ews_internals", "What the fenced exchangelib overrides buy", _explain(probes) + body,
                      command=command)
    return 0


def _explain(probes: int) -> str:
    return (
        f"{probes} probes delivered through the lab's smart hosts; one EWS mailbox in this process searches "
        "for all of them (one FindItem, one GetItem), after a clock calibration, in each variant. CPU is the "
        "searching thread's own; the receipt uncertainty is each sighting's half-width (whole-second stamps "
        "leave a second's doubt, which the first sighting cannot narrow when the search comes later).\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
