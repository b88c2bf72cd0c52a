"""``mailflow-probe demo`` and the lab as a wing: real latencies, and one clear line for what is missing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import probe
from probe.lab import Lab, LabError
from probe.lab.demo import DEMO_TRANSIT
from probe.lab.smarthost import LabSmartHost, SmartHostFleet
from probe.secret import Secret
from tests.daemon_harness import EVENT_WAIT, wait_for

ROOT = Path(probe.__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STATUS_URL = re.compile(rb"status page\s+(http://127\.0\.0\.1:\d+)/")


def mailflow(*args: str, prelude: str = "") -> list[str]:
    """Return the command line that runs ``mailflow-probe ARGS`` in a fresh interpreter after ``prelude``."""
    code = f"{prelude}import sys; from probe.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run the demo on free ports; yield it and its status page's base URL; stop it with SIGINT."""
    output = tmp_path / "demo.out"
    with output.open("wb") as out:  # a file, not a pipe: a full pipe would block the demo's logging
        proc = subprocess.Popen(
            mailflow("demo", "--ephemeral-ports", "--web.listen-address", "127.0.0.1:0",
                     "--state-dir", str(tmp_path / "demo"), "--duration", "5m"),
            env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: STATUS_URL.search(output.read_bytes()) is not None or proc.poll() is not None,
                 timeout=EVENT_WAIT, what="the demo's banner")
        found = STATUS_URL.search(output.read_bytes())
        assert found, f"the demo ended before its banner: {output.read_text(errors='replace')}"
        yield proc, found.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fetch(url: str) -> str:
    """Return the body at a loopback URL."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the demo's loopback URL
        return str(response.read().decode())


def mean_latencies(metrics: str) -> dict[str, float]:
    """Return each smart host's mean delivery latency so far, for those that delivered at least once (the
    connector probes, "@connector", are the routes' and are left out)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "mailflow_probe_delivery_seconds":
            continue
        for sample in family.samples:
            host = sample.labels.get("smart_host", "")
            if sample.name.endswith("_sum"):
                sums[host] = sample.value
            elif sample.name.endswith("_count"):
                counts[host] = sample.value
    return {host: sums[host] / count for host, count in counts.items() if count and host != "@connector"}


@pytest.mark.slow
def test_the_demo_shows_a_different_nonzero_latency_for_each_smart_host(
        demo: tuple[subprocess.Popen[bytes], str]) -> None:
    """Each demo smart host delivers within its own transit range (latencies non-zero, differing); Ctrl-C ends it."""
    proc, base = demo
    wait_for(lambda: set(mean_latencies(fetch(f"{base}/metrics"))) == set(DEMO_TRANSIT), timeout=EVENT_WAIT,
             what="a delivery through each demo smart host", every=0.5)
    latencies = mean_latencies(fetch(f"{base}/metrics"))
    for host, (low, high) in DEMO_TRANSIT.items():
        assert low - 0.05 <= latencies[host] <= high + 0.5, (host, latencies[host])
    assert len({round(v, 3) for v in latencies.values()}) == len(latencies)
    page = fetch(f"{base}/")
    assert page.count("delivered") >= len(DEMO_TRANSIT)
    assert re.search(r"[1-9]\.\d{3} s|0\.[1-9]\d{2} s", page), "no non-zero latency on the status page"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


def test_demo_and_lab_without_the_lab_extra_say_how_to_install_it() -> None:
    """Without the lab's dependencies, ``demo`` and ``lab`` print one line naming the extra, no traceback, and
    ``--help`` lists them as not installed."""
    for command in ("demo", "lab"):
        done = subprocess.run(mailflow(command, prelude="import sys; sys.modules['aiosmtpd'] = None; "),
                              env=ENV, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"mailflow-probe {command}: the lab is not installed: pip install 'mailflow-probe[lab]' "
            "(in a checkout, ./scripts/demo installs it and starts the demo)"]
    helped = subprocess.run(mailflow("--help", prelude="import sys; sys.modules['aiosmtpd'] = None; "),
                            env=ENV, capture_output=True, text=True, timeout=60, check=False)
    words = " ".join(helped.stdout.split())  # argparse wraps the help lines
    for command, summary in (("lab", "run the two-forest lab on loopback until interrupted"),
                             ("demo", "the lab and the daemon together, on fixed local ports")):
        assert f"{command} {summary} (not installed: needs mailflow-probe[lab])" in words, helped.stdout


def test_a_demo_whose_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    """A status page port already in use ends the demo with exit 1 and one line naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            mailflow("demo", "--ephemeral-ports", "--web.listen-address", f"127.0.0.1:{port}",
                     "--state-dir", str(tmp_path / "demo"), "--duration", "5s"),
            env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "in use" in lines[0]


def spec(host: str, port: int) -> LabSmartHost:
    """Return a smart host to bind at ``host:port``."""
    return LabSmartHost(name="edge", forest="f", domain="f.test", host=host, port=port, username="u",
                        password=Secret("p"))


@pytest.mark.parametrize(("host", "words"), [
    ("127.0.0.1", "is in use on 127.0.0.1"),
    # a bind only: nothing is sent to this documentation address (TEST-NET-1), it is just not local
    ("192.0.2.1", "is not a local address; the lab needs all of 127.0.0.0/8 on the loopback interface"),
])
def test_a_smart_host_that_cannot_listen_says_why_in_one_line(tmp_path: Path, lab: Lab, host: str,
                                                              words: str) -> None:
    """A taken port or an address not on loopback is named in one line, not a bare errno."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fleet = SmartHostFleet(ca=lab.ca, store=lab.store, faults=lab.faults, stats=lab.stats,
                               untrusted_dir=tmp_path / "untrusted")
        fleet.start()
        try:
            with pytest.raises(OSError, match=re.escape(words)) as caught:
                fleet.add([spec(host, port)])
        finally:
            fleet.stop()
    assert "\n" not in str(caught.value)
    assert f"{host}:{port}" in str(caught.value)


def test_the_lab_refuses_a_transit_for_an_unknown_smart_host_or_a_reversed_range(tmp_path: Path) -> None:
    """Transit delays name existing smart hosts and run from low to high; anything else is a LabError."""
    with pytest.raises(LabError, match="no smart host named nowhere-1"):
        Lab.start(tmp_path / "a", transit={"nowhere-1": (0.1, 0.2)})
    with pytest.raises(LabError, match=r"want 0 <= low <= high seconds, got 2\.0\.\.1\.0"):
        Lab.start(tmp_path / "b", transit={"contoso-edge-1": (2.0, 1.0)})

