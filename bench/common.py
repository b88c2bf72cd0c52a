"""What the benchmarks share: the lab in its own process, probe configs for it, percentiles, the report file.

The lab runs as ``python -m probe lab`` in a child process, so that what a benchmark measures of the probe
is the probe's alone; it is driven over its admin API (faults, ``/stats``, ``/deliveries``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "benchmarks.md"
LAB_START_TIMEOUT = 300.0
LAB_STARTED = b"Ctrl-C stops the lab."  # the last line of the summary ``mailflow-probe lab`` prints once started
HTTP_TIMEOUT = 30.0

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- the lab in its own process ------------------------------------------------------------------------


@dataclass
class LabProcess:
    """A lab started as ``python -m probe lab`` in a child process, and its ``lab.json``."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    info: dict[str, Any]
    backend: str = "ews"  # how its mailboxes are read: ews, imap or graph

    @property
    def admin_url(self) -> str:
        """Return the admin API's base URL."""
        return str(self.info["admin_url"])

    def request(self, method: str, path: str, body: object | None = None) -> Any:
        """Call the admin API and return its decoded JSON reply (None for an empty one)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,  # noqa: S310 - the lab's http URL
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as reply:  # noqa: S310 - the lab's http URL
            raw = reply.read()
        return json.loads(raw) if raw.strip() else None

    def add_fault(self, **fault: Any) -> None:
        """Put a fault in force (``target=``, ``kind=``, ``seconds=``...)."""
        self.request("POST", "/faults", fault)

    def clear_faults(self) -> None:
        """Lift every fault."""
        self.request("DELETE", "/faults")

    def stats(self) -> dict[str, Any]:
        """Return ``GET /stats``."""
        result: dict[str, Any] = self.request("GET", "/stats")
        return result

    def ews_total(self) -> int:
        """Return how many EWS requests the lab has served, of every operation and forest."""
        return sum(int(n) for n in self.stats()["ews_total"].values())

    def mailbox_requests(self) -> int:
        """Return how many requests the lab's mailbox servers of this lab's backend have served.

        EWS: every operation; IMAP: every command (not the connections); Graph: every HTTP request (a $batch
        is one; the calls inside it are counted apart, as ``batched ...``), tokens included.
        """
        stats = self.stats()
        totals: dict[str, int] = stats.get(f"{self.backend}_total", {})
        return sum(int(n) for name, n in totals.items()
                   if name not in ("connections", "login_before_tls") and not name.startswith("batched "))

    def deliveries(self, offset: int = 0) -> list[dict[str, Any]]:
        """Return the lab's delivery records from ``offset`` on."""
        result: list[dict[str, Any]] = self.request("GET", f"/deliveries?offset={offset}")
        return result

    def smart_hosts(self, forest: str) -> list[str]:
        """Return the names of a forest's smart hosts."""
        return [h["name"] for h in self.info["forests"][forest]["smart_hosts"]]

    def stop(self) -> None:
        """Stop the lab process (SIGTERM, then SIGKILL after 20 s)."""
        stop_process(self.process, grace=20)


def stop_process(process: subprocess.Popen[bytes], *, grace: float, kill_wait: float = 5.0) -> None:
    """SIGTERM a child process and wait ``grace`` seconds; SIGKILL it if it is still there."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(kill_wait)


@contextlib.contextmanager
def lab_process(state_dir: Path, *, smart_hosts: int, mailboxes: int, backend: str = "ews") -> Iterator[LabProcess]:
    """Start a lab in a child process, wait for its ``lab.json``, and stop it on exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    json_path = state_dir / "lab.json"
    json_path.unlink(missing_ok=True)
    log = (state_dir / "lab.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "probe", "lab", "--state-dir", str(state_dir), "--smart-hosts", str(smart_hosts),
         "--mailboxes", str(mailboxes), "--mailbox-backend", backend], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    lab = LabProcess(process=process, state_dir=state_dir, info={}, backend=backend)
    try:
        lab.info = _wait_for_lab(process, json_path, state_dir / "probe.yaml")
        yield lab
    finally:
        lab.stop()
        log.close()


def _wait_for_lab(process: subprocess.Popen[bytes], json_path: Path, config_path: Path) -> dict[str, Any]:
    """Wait until the lab has started: it prints its summary (to lab.log) once its files are written whole."""
    log = json_path.parent / "lab.log"
    end = time.monotonic() + LAB_START_TIMEOUT
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the lab exited with {process.returncode}; see {log}")
        if json_path.exists() and config_path.exists() and LAB_STARTED in log.read_bytes():
            info: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
            return info
        time.sleep(0.05)
    raise RuntimeError("the lab did not start in time")


# -- probe configurations ------------------------------------------------------------------------------


def write_config(lab: LabProcess, path: Path, *, interval: float, timeout: float, jitter: float = 0.0,
                 watch: str = "streaming", poll_interval: float = 2.0, routes: Sequence[str] | None = None,
                 state_dir: Path | None = None, connector: bool = False) -> Path:
    """Write a probe config for the lab: its ``probe.yaml`` with these timings, routes and state files (and its
    connector probes only when ``connector``: the benchmarks measure the direct pairs)."""
    config = yaml.safe_load((lab.state_dir / "probe.yaml").read_text(encoding="utf-8"))
    if not connector:
        for route in config["routes"]:
            route.pop("connector", None)
    config["defaults"] = {"interval": _duration(interval), "timeout": _duration(timeout),
                          "jitter": _duration(jitter)}
    if routes is not None:
        config["routes"] = [r for r in config["routes"] if r["name"] in set(routes)]
        used = {r["mailbox"] for r in config["routes"]}
        config["mailboxes"] = {k: v for k, v in config["mailboxes"].items() if k in used}
    for mailbox in config["mailboxes"].values():
        mailbox["watch"], mailbox["poll_interval"] = watch, _duration(poll_interval)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        config["state_file"] = str(state_dir / "state.db")
        config["signing_key_file"] = str(state_dir / "signing.key")
    path.parent.mkdir(parents=True, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(config, Dumper=dumper, sort_keys=False), encoding="utf-8")
    return path


def _duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


# -- statistics ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return a percentile of some values by nearest rank (NaN when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def histogram_quantile(buckets: Sequence[tuple[float, float]], fraction: float) -> float:
    """Return a quantile of a Prometheus histogram given as (upper bound, cumulative count), as Prometheus does."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = fraction * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def scrape_histogram(metrics_text: str, name: str) -> list[tuple[float, float]]:
    """Return the buckets of one unlabelled histogram from a /metrics page, as (upper bound, count)."""
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} ([0-9.eE+-]+)$', re.MULTILINE)
    return sorted((float(le), float(count)) for le, count in pattern.findall(metrics_text))


def scrape_sum(metrics_text: str, name: str) -> float:
    """Return the sum of every sample of a metric family's series named ``name`` on a /metrics page."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(metrics_text))


# -- a process's resources -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU seconds so far (from /proc)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """Return a process's (user, system) CPU seconds so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Return a process's resident set (or ``VmHWM``, its peak) in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- profiles --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def profiling(pid: int, out: Path, *, enabled: bool = True, rate: int = 25) -> Iterator[None]:
    """Sample a process with py-spy while the block runs (collapsed stacks into ``out``).

    Only the thread holding the GIL is sampled (``--gil``): Python's own CPU. Work done with the GIL released
    (OpenSSL's handshake, socket waits) is not in it.
    """
    if not enabled:
        yield
        return
    with out.with_suffix(".log").open("wb") as log:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                "--gil", "--nonblocking", "--output", str(out)], stdout=log, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()


def profile_top(collapsed: Path, count: int = 15) -> list[tuple[str, float, float]]:
    """Return the functions with the most own samples: (function, inclusive %, self %), from py-spy's raw output.

    The percentages are of all samples taken (with ``--gil``: of the time some thread ran Python code).
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # the first frame is the thread
        if not frames or not count_text.isdigit():
            continue
        samples = int(count_text)
        total += samples
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
    ranked = sorted(inclusive, key=lambda n: -own.get(n, 0))[:count]
    return [(n, 100 * inclusive[n] / max(1, total), 100 * own.get(n, 0) / max(1, total)) for n in ranked]


def top_by_inclusive(collapsed: Path, names: Sequence[str]) -> list[tuple[str, float]]:
    """Return the inclusive share of busy samples of functions whose name contains any of ``names``."""
    rows = profile_top(collapsed, count=100000)
    return [(n, inc) for n, inc, _own in rows if any(k in n for k in names)]


def _frame_name(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})"


# -- the report --------------------------------------------------------------------------------------------


def machine() -> str:
    """Return one line about the machine and the versions that matter."""
    import exchangelib

    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
            f"{platform.platform()}, Python {platform.python_version()}, exchangelib {exchangelib.__version__}")


def update_report(name: str, title: str, body: str, *, command: str) -> None:
    """Put (or replace) one benchmark's section in docs/benchmarks.md, with the machine, command and date."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    section = (f"{start}\n## {title}\n\nRun `{command}` on {stamp}.\nMachine: {machine()}; load average "
               f"(1, 5, 15 min) when it finished: {load} (the machine was shared with other jobs).\n\n"
               f"{body.strip()}\n{end}")
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text, encoding="utf-8")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
