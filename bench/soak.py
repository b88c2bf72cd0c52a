"""Soak: the daemon with many pairs for minutes under random lab faults; threads, fds, RSS, and resolution.

    python bench/soak.py --minutes 10 --pairs 500

Starts ``mailflow-probe lab`` and ``mailflow-probe run`` as their own processes on loopback, sets and
clears random faults through the lab's admin API, samples the daemon's threads, open fds and RSS every
``--sample-seconds``, and at the end checks from the state file and the daemon's log that every probe
got a verdict (none left open past its deadline plus grace) and none was counted twice. Prints tables;
exits 1 when a limit is broken (threads or fds grew, RSS grew more than 10 %, a probe unresolved).

``--quick`` is the smoke run (tests/test_bench_scripts.py): 8 pairs for 4 s, faults changed every 2 s. Its
sampling starts once the daemon is ready, and its settle ends as soon as every probe sent before the faults
were cleared has its verdict; the end checks are the same as the full soak's, and so are their results (a
verdict is final: what is decided early is still decided when the full settle would end).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from common import stop_process

from probe.daemon import SEND_WORKERS

SMARTHOST_FAULTS: Final[list[dict[str, Any]]] = [
    {"kind": "refuse_connections"}, {"kind": "no_starttls"}, {"kind": "untrusted_cert"},
    {"kind": "expired_cert"}, {"kind": "auth_reject"}, {"kind": "tempfail", "stage": "rcpt", "code": 451},
    {"kind": "reject", "stage": "data", "code": 554}, {"kind": "slow", "stage": "data", "seconds": 3},
    {"kind": "delay_delivery", "seconds": 5}, {"kind": "drop"}, {"kind": "duplicate"}, {"kind": "to_junk"},
]
EWS_FAULTS: Final[list[dict[str, Any]]] = [
    {"kind": "unauthorized"}, {"kind": "server_error"}, {"kind": "server_busy", "back_off_ms": 500},
    {"kind": "slow", "seconds": 2}, {"kind": "unreachable"}, {"kind": "clock_offset", "seconds": 30},
]
# A verdict may be followed by one more only where the ledger allows it: found after lost or unknown.
ALLOWED_SEQUENCES: Final = (["lost", "late"], ["unknown", "delivered"], ["unknown", "late"])
# The daemon's threads are bounded: the send pool (grown on demand, never shrunk), the housekeeping pool,
# per mailbox a watcher and a stream, plus main, scheduler and web. More than that would be a leak.
THREAD_CEILING: Final = SEND_WORKERS + 2 + 2 * 2 + 8
LOGFMT_FIELD: Final = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
# The smoke run: a few pairs, every phase (samples, fault changes, the settle, the checks) in seconds.
QUICK: Final[dict[str, float]] = {"minutes": 0.07, "pairs": 8, "interval": 2.0, "timeout": 3.0,
                                  "sample_seconds": 1.0, "fault_seconds": 2.0}
SETTLE_GRACE: Final = 15.0  # beyond a timeout: the expire tick, and scheduling and state-file waits under load


@dataclass(frozen=True)
class Sample:
    """One reading of the daemon process."""

    at: float
    threads: int
    fds: int
    rss_kib: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=500, help="(route, smart host) pairs; two routes share them")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between probes of one pair")
    parser.add_argument("--timeout", type=float, default=30.0, help="delivery timeout, seconds")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--fault-seconds", type=float, default=20.0, help="how often faults change")
    parser.add_argument("--state-dir", default=None, help="where lab and daemon keep files (default: a temp dir)")
    parser.add_argument("--report", default=None, help="also write the report (markdown) here")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (8 pairs, 4 s, faults every 2 s; settles as soon as every verdict is in)")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: object | None = None) -> Any:
    """Call the lab's admin API (loopback) and return its JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback admin API
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback admin API
        return json.loads(resp.read())


def start_lab(state: Path, hosts_per_forest: int, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the lab process and return it with its lab.json."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "probe", "lab", "--state-dir", str(state / "lab"),
                                 "--smart-hosts", str(hosts_per_forest)], stdout=out, stderr=subprocess.STDOUT)
    lab_json = state / "lab" / "lab.json"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"soak: the lab exited with {proc.returncode}; see {log}")
        if lab_json.exists() and (state / "lab" / "probe.yaml").exists():
            try:
                described: dict[str, Any] = json.loads(lab_json.read_text())
                http("GET", described["admin_url"] + "/faults")
            except (ValueError, OSError):
                time.sleep(0.1)
                continue
            return proc, described
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("soak: the lab did not start within 300 s")


def write_config(state: Path, args: argparse.Namespace) -> Path:
    """Turn the lab's probe.yaml into the soak's: its interval, timeout and jitter, polling every 5 s."""
    data = yaml.safe_load((state / "lab" / "probe.yaml").read_text())
    data["defaults"] = {"interval": f"{args.interval}s", "timeout": f"{args.timeout}s",
                        "jitter": f"{min(args.interval / 4, 10)}s"}
    data["state_file"] = str(state / "state.db")
    path = state / "soak.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sample(pid: int) -> Sample:
    """Read threads, fds and RSS of a process from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields[key] = rest.strip()
    return Sample(at=time.time(), threads=int(fields["Threads"]), fds=len(list(Path(f"/proc/{pid}/fd").iterdir())),
                  rss_kib=int(fields["VmRSS"].split()[0]))


def change_faults(admin: str, described: dict[str, Any], rng: random.Random, applied: Counter[str]) -> None:
    """Clear every fault, then set a few random ones on smart hosts and, sometimes, one on a mailbox."""
    http("DELETE", admin + "/faults")
    hosts = [h["name"] for f in described["forests"].values() for h in f["smart_hosts"]]
    for name in rng.sample(hosts, k=min(len(hosts), rng.randint(3, 12))):
        fault = rng.choice(SMARTHOST_FAULTS)
        http("POST", admin + "/faults", {"target": f"smarthost/{name}", **fault})
        applied[f"smarthost {fault['kind']}"] += 1
    if rng.random() < 0.4:
        fault = rng.choice(EWS_FAULTS)
        forest = rng.choice(list(described["forests"]))
        http("POST", admin + "/faults", {"target": f"ews/{forest}", **fault})
        applied[f"ews {fault['kind']}"] += 1


def open_past_deadline(state_file: Path, grace: float) -> list[tuple[str, str, float]]:
    """Return (probe_id, state, seconds past deadline) of probes still open past deadline + grace."""
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT probe_id, state, deadline FROM probes WHERE state IN ('submitting', 'in_flight')"
                          " AND deadline + ? < ?", (grace, time.time())).fetchall()
    finally:
        db.close()
    return [(r[0], r[1], time.time() - r[2]) for r in rows]


def state_counts(state_file: Path) -> dict[str, int]:
    """Return the number of probes in each state."""
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM probes GROUP BY state").fetchall())
    finally:
        db.close()


def verdict_counts(log: Path) -> tuple[Counter[str], list[str]]:
    """Return the verdict lines per verdict, and the probe ids with more verdict lines than the ledger allows."""
    per_probe: dict[str, list[str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        fields = {k: v.strip('"') for k, v in LOGFMT_FIELD.findall(line)}
        if "verdict" in fields and "probe_id" in fields:
            per_probe.setdefault(fields["probe_id"], []).append(fields["verdict"])
    totals: Counter[str] = Counter(v for vs in per_probe.values() for v in vs)
    twice = [pid for pid, vs in per_probe.items() if len(vs) > 1 and vs not in ALLOWED_SEQUENCES]
    return totals, twice


def growth(samples: list[Sample]) -> dict[str, tuple[float, float, float]]:
    """Return (baseline, final, max) of threads, fds and RSS, the baseline taken after the first fifth."""
    base = samples[max(1, len(samples) // 5)] if len(samples) > 2 else samples[0]
    tail = samples[-3:]
    return {
        "threads": (base.threads, max(s.threads for s in tail), max(s.threads for s in samples)),
        "fds": (base.fds, max(s.fds for s in tail), max(s.fds for s in samples)),
        "rss_mib": (base.rss_kib / 1024, max(s.rss_kib for s in tail) / 1024,
                    max(s.rss_kib for s in samples) / 1024),
    }


def limits_broken(samples: list[Sample], unresolved: list[Any], twice: list[str]) -> list[str]:
    """Return what broke: threads above the pools' bound, fds above the first half's peak, RSS +10 %,
    unresolved probes or double counts."""
    half = samples[: max(1, len(samples) // 2)]
    tail = samples[-3:]
    broken = []
    if max(s.threads for s in samples) > THREAD_CEILING:
        broken.append(f"threads above the daemon's bounded pools ({THREAD_CEILING})")
    if max(s.fds for s in tail) > max(s.fds for s in half) + 5:
        broken.append("file descriptors grew past the first half's peak (+5)")
    base, final, _ = growth(samples)["rss_mib"]
    if final > base * 1.10:
        broken.append(f"RSS grew {100 * (final / base - 1):.1f} % (> 10 %)")
    if unresolved:
        broken.append(f"{len(unresolved)} probes still open past deadline + grace")
    if twice:
        broken.append(f"{len(twice)} probes counted twice")
    return broken


def report(args: argparse.Namespace, *, samples: list[Sample], counts: dict[str, int], verdicts: Counter[str],
           applied: Counter[str], unresolved: list[Any], twice: list[str], broken: list[str]) -> str:
    """Return the soak's report as markdown tables."""
    g = growth(samples)
    lines = [f"## Soak: {args.pairs} pairs, {args.minutes:g} min, interval {args.interval:g}s, "
             f"timeout {args.timeout:g}s, {len(samples)} samples every {args.sample_seconds:g}s", "",
             "| measure | after warm-up | end | peak | growth |", "|---|---|---|---|---|"]
    for name, (base, final, peak) in g.items():
        lines.append(f"| {name} | {base:.1f} | {final:.1f} | {peak:.1f} | "
                     f"{100 * (final / base - 1) if base else 0:+.1f} % |")
    lines += ["", "| probe state (state file) | count |", "|---|---|"]
    lines += [f"| {state} | {n} |" for state, n in sorted(counts.items())]
    lines += ["", "| verdict lines (daemon log) | count |", "|---|---|"]
    lines += [f"| {v} | {n} |" for v, n in sorted(verdicts.items())]
    lines += ["", "| faults applied | times |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(applied.items())]
    lines += ["", f"- threads ceiling (send pool {SEND_WORKERS} + house 2 + 2 per mailbox + 8): {THREAD_CEILING}",
              f"- open past deadline + grace at the end: {len(unresolved)}",
              f"- probes with more verdict lines than allowed (lost->late, unknown->delivered/late): {len(twice)}",
              f"- result: {'FAIL: ' + '; '.join(broken) if broken else 'PASS'}"]
    return "\n".join(lines)


def wait_ready(daemon: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait until the daemon answers /-/ready (the quick run samples a started daemon, not its imports)."""
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise SystemExit(f"soak: the daemon exited with {daemon.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=30):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("soak: the daemon was not ready within 300 s")


def open_sent_before(state_file: Path, deadline_before: float) -> int:
    """Return how many probes with a deadline before ``deadline_before`` are still open."""
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT COUNT(*) FROM probes WHERE state IN ('submitting', 'in_flight') AND deadline < ?",
                         (deadline_before,)).fetchone()
    finally:
        db.close()
    return int(row[0])


def settle(state_file: Path, args: argparse.Namespace, grace: float) -> None:
    """Let the probes sent under faults reach their verdicts: wait one timeout plus ``grace`` after the faults
    were cleared (the last of them is past its deadline + grace then); with --quick, only until every one of
    them (a deadline before now + timeout) has its verdict, which is final, so the checks come out the same."""
    cleared = time.time()
    if not args.quick:
        time.sleep(args.timeout + grace)
        return
    end = time.monotonic() + args.timeout + grace
    while time.monotonic() < end and open_sent_before(state_file, cleared + args.timeout):
        time.sleep(0.2)


def run_faults(args: argparse.Namespace, daemon: subprocess.Popen[bytes], admin: str, described: dict[str, Any],
               samples: list[Sample]) -> Counter[str]:
    """Sample the daemon and change the lab's faults for ``--minutes``; return the faults applied."""
    rng = random.Random(args.seed)
    applied: Counter[str] = Counter()
    end = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + args.fault_seconds
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise SystemExit(f"soak: the daemon exited with {daemon.returncode}")
        samples.append(sample(daemon.pid))
        s = samples[-1]
        print(f"t={s.at - samples[0].at:6.0f}s threads={s.threads} fds={s.fds} rss={s.rss_kib / 1024:.1f}MiB",
              flush=True)
        if time.monotonic() >= next_fault:
            change_faults(admin, described, rng, applied)
            next_fault = time.monotonic() + args.fault_seconds
        time.sleep(args.sample_seconds)
    return applied


def soak(args: argparse.Namespace, state: Path) -> int:
    """Run the soak in ``state`` and print its report; return the exit code."""
    lab_log, daemon_log = state / "lab.log", state / "daemon.log"
    lab, described = start_lab(state, max(1, args.pairs // 2), lab_log)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        config = write_config(state, args)
        port = free_port()
        with daemon_log.open("ab") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(config),
                                       "--web.listen-address", f"127.0.0.1:{port}"], stdout=out,
                                      stderr=subprocess.STDOUT)
        if args.quick:
            wait_ready(daemon, port, daemon_log)
        admin = described["admin_url"]
        samples: list[Sample] = []
        try:
            applied = run_faults(args, daemon, admin, described, samples)
        except SystemExit as exc:
            print(f"{exc}; see {daemon_log}", file=sys.stderr)
            return 1
        http("DELETE", admin + "/faults")
        grace = args.timeout + SETTLE_GRACE  # a probe whose mailbox was unobservable waits one timeout more for unknown
        settle(state / "state.db", args, grace)
        samples.append(sample(daemon.pid))
        unresolved = open_past_deadline(state / "state.db", grace)
        counts = state_counts(state / "state.db")
    finally:
        if daemon is not None:
            stop_process(daemon, grace=20, kill_wait=10)
        stop_process(lab, grace=20, kill_wait=10)
    verdicts, twice = verdict_counts(daemon_log)
    broken = limits_broken(samples, unresolved, twice)
    text = report(args, samples=samples, counts=counts, verdicts=verdicts, applied=applied, unresolved=unresolved,
                  twice=twice, broken=broken)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    """Run the soak in a temporary directory (or --state-dir)."""
    args = parse_args(argv)
    if args.state_dir:
        state = Path(args.state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)
        return soak(args, state)
    with tempfile.TemporaryDirectory(prefix="mailflow-soak-") as tmp:
        return soak(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
