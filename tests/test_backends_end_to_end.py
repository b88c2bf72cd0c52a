"""Every mailbox backend end to end: ``lab --mailbox-backend B`` then ``check``; the daemon for 3 intervals.

The verdicts, the JSON of ``check`` and the metrics are the same whatever the backend; only ``mailbox_up``'s
``backend`` label says which one read the mailbox.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.daemon import start_daemon
from probe.lab import Lab

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("ews", "imap", "graph")
# the lab's probe.yaml: each route's two smart hosts and its connector probe (submit: ews over EWS, else smtp)
PAIRS = [(route, host) for route, hosts in (("contoso-to-fourthcoffee", ("fourthcoffee-edge-1", "fourthcoffee-edge-2")),
                                            ("fourthcoffee-to-contoso", ("contoso-edge-1", "contoso-edge-2")))
         for host in (*hosts, "@connector")]

pytestmark = [pytest.mark.postfix, pytest.mark.slow]  # the imap lab runs Debian's Dovecot; 10-20 s each


@contextlib.contextmanager
def lab_command(state_dir: Path, backend: str) -> Iterator[dict[str, object]]:
    """Run ``python -m probe lab --mailbox-backend B`` until its lab.json and probe.yaml exist; stop it after."""
    log = (state_dir.parent / f"lab-{backend}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "probe", "lab", "--state-dir", str(state_dir),
                                "--mailbox-backend", backend], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 120
        while not (state_dir / "probe.yaml").exists():
            assert process.poll() is None, (state_dir.parent / f"lab-{backend}.log").read_text()
            assert time.monotonic() < end, "the lab did not start"
            time.sleep(0.2)
        time.sleep(0.3)
        yield json.loads((state_dir / "lab.json").read_text())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_lab_command_then_check_json_delivers_every_pair(tmp_path: Path, backend: str) -> None:
    """The lab started with --mailbox-backend writes a probe.yaml whose mailboxes use that backend; check
    --format json over it says delivered for every (route, smart host) and for each route's connector probe
    (over EWS, or by client submission when the mailboxes are on IMAP or Graph), and exits 0."""
    with lab_command(tmp_path / "lab", backend) as info:
        assert info["mailbox_backend"] == backend
        config = (tmp_path / "lab" / "probe.yaml").read_text()
        assert f"\n    {backend}:\n" in config
        done = subprocess.run([sys.executable, "-m", "probe", "check", "-c", str(tmp_path / "lab" / "probe.yaml"),
                               "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    results = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    connector = "ews" if backend == "ews" else "smtp"
    assert f"submit: {connector}" in config
    assert sorted((r["route"], r["smart_host"]) for r in results) == sorted(PAIRS)
    assert {r["verdict"] for r in results} == {"delivered"}
    assert all(0 <= r["latency_seconds"] < 5 for r in results)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_daemon_delivers_for_three_intervals(tmp_path: Path, backend: str) -> None:
    """The daemon on a lab of each backend: every pair delivered three times (a probe per 1 s interval), none
    lost or unknown, mailbox_up 1 with the backend's label, and the probes cleaned up."""
    with Lab.start(tmp_path / "lab", mailbox_backend=backend) as lab:  # type: ignore[arg-type]
        config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1.0, timeout=20.0, jitter=0.2)
        daemon, server = start_daemon(config, listen_address="127.0.0.1:0")
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                samples = scrape(server.port)
                delivered = [v for (n, _l), v in samples.items() if n == "mailflow_probe_delivered_total"]
                if len(delivered) == 4 and min(delivered) >= 3:
                    break
                time.sleep(0.5)
            samples = scrape(server.port)
        finally:
            server.close()
            daemon.stop()
    per_pair = {dict(labels)["smart_host"]: v for (n, labels), v in samples.items()
                if n == "mailflow_probe_delivered_total"}
    assert len(per_pair) == 4, per_pair
    assert min(per_pair.values()) >= 3, per_pair
    for name in ("lost_total", "unknown_total", "send_failures_total"):
        assert sum(v for (n, _l), v in samples.items() if n == f"mailflow_probe_{name}") == 0, name
    up = {dict(labels)["mailbox"]: (dict(labels)["backend"], v) for (n, labels), v in samples.items()
          if n == "mailflow_probe_mailbox_up"}
    assert up == {"contoso": (backend, 1.0), "fourthcoffee": (backend, 1.0)}
