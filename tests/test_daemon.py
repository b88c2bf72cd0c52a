"""``mailflow-probe run`` against the lab: scheduled probes, metrics, faults, reload, restarts, shutdown."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.daemon import Daemon, WebOptions, start_daemon
from tests.daemon_harness import (
    fetch,
    free_port,
    ledger_made,
    running_daemon,
    scrape,
    start_process,
    states,
    value,
    wait_for,
)

PAIRS = {("contoso-to-fourthcoffee", "fourthcoffee-edge-1"), ("contoso-to-fourthcoffee", "fourthcoffee-edge-2"),
         ("fourthcoffee-to-contoso", "contoso-edge-1"), ("fourthcoffee-to-contoso", "contoso-edge-2")}


pytestmark = pytest.mark.usefixtures("fresh_exchangelib")  # a new connection pool per test


@pytest.fixture
def running(lab: Any, tmp_path: Path) -> Iterator[tuple[Daemon, Any]]:
    """A daemon probing the lab every second, on an ephemeral port."""
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2)
    with running_daemon(path) as started:
        yield started


def test_three_cycles_fill_every_pairs_counters_and_the_output_passes_promtool(running: tuple[Daemon, Any]) -> None:
    """At a 1 s interval: delivered_total reaches 3 for every pair, success is 1, the histogram is filled."""
    _, server = running
    wait_for(lambda: all(value(scrape(server.port), "mailflow_probe_delivered_total", route=r, smart_host=h) >= 3
                         for r, h in PAIRS), timeout=40, what="3 deliveries per pair")
    samples = scrape(server.port)
    for route, host in PAIRS:
        assert value(samples, "mailflow_probe_success", route=route, smart_host=host) == 1
        assert value(samples, "mailflow_probe_delivery_seconds_count", route=route, smart_host=host) >= 3
        assert value(samples, "mailflow_probe_sent_total", route=route, smart_host=host) >= 3
        assert value(samples, "mailflow_probe_tls_cert_expiry_timestamp_seconds", route=route,
                     smart_host=host) > time.time()
    assert value(samples, "mailflow_probe_mailbox_up", mailbox="fourthcoffee", backend="ews") == 1
    text = fetch(f"http://127.0.0.1:{server.port}/metrics").encode()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def delivered_in_ledger(state_file: Path, route: str, smart_host: str) -> int:
    """Return how many probes of one pair the state file holds as delivered."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        row = db.execute("SELECT COUNT(*) FROM probes WHERE route = ? AND smart_host = ? AND state = 'delivered'",
                         (route, smart_host)).fetchone()
    finally:
        db.close()
    return int(row[0])


def test_a_fault_on_one_smart_host_flips_only_that_pairs_success(lab: Any, tmp_path: Path) -> None:
    """no_starttls on one host: once its probes sent before the fault are done, its success is 0 with the reason
    counted, while every other pair delivers again with no failure and stays 1; clearing the fault heals it.

    Each step waits for events (verdicts in the ledger and on /metrics), never for a time: the timeout is long
    enough that a loaded machine cannot turn a delivery into lost or late.
    """
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=60, jitter=0.2)
    state_file = Path(yaml.safe_load(path.read_text())["state_file"])
    bad = ("contoso-to-fourthcoffee", "fourthcoffee-edge-1")
    route, host = bad
    with running_daemon(path) as (daemon, server):
        wait_for(lambda: all(value(scrape(server.port), "mailflow_probe_success", route=r, smart_host=h) == 1
                             for r, h in PAIRS), timeout=60, what="all pairs green first")
        before = scrape(server.port)
        faulted_at = time.time()
        lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="no_starttls")

        def bad_pair_settled() -> bool:
            """Every probe of the bad pair made before the fault is decided and counted, and success reads 0."""
            if any(p.route == route and p.smart_host == host and p.created_at <= faulted_at
                   for p in daemon.ledger.open_probes()):
                return False
            samples = scrape(server.port)
            counted = value(samples, "mailflow_probe_delivered_total", route=route, smart_host=host)
            return (counted == delivered_in_ledger(state_file, route, host)
                    and value(samples, "mailflow_probe_success", route=route, smart_host=host) == 0)

        wait_for(bad_pair_settled, timeout=60, what="the faulty pair's success 0 after its earlier probes are done")
        assert value(scrape(server.port), "mailflow_probe_send_failures_total", route=route, smart_host=host,
                     stage="starttls", reason="tls_unavailable") >= 1
        midway = scrape(server.port)
        others = PAIRS - {bad}
        wait_for(lambda: all(value(scrape(server.port), "mailflow_probe_delivered_total", route=r, smart_host=h)
                             > value(midway, "mailflow_probe_delivered_total", route=r, smart_host=h)
                             for r, h in others), timeout=60, what="every other pair delivering after the fault")
        samples = scrape(server.port)
        for r, h in others:
            assert value(samples, "mailflow_probe_success", route=r, smart_host=h) == 1
            for name in ("mailflow_probe_send_failures_total", "mailflow_probe_lost_total"):
                assert value(samples, name, route=r, smart_host=h) == value(before, name, route=r, smart_host=h)
        healed_from = value(scrape(server.port), "mailflow_probe_delivered_total", route=route, smart_host=host)
        lab.clear_faults()

        def healed() -> bool:
            samples = scrape(server.port)
            return (value(samples, "mailflow_probe_delivered_total", route=route, smart_host=host) > healed_from
                    and value(samples, "mailflow_probe_success", route=route, smart_host=host) == 1)

        wait_for(healed, timeout=60, what="a delivery and success back to 1 after clearing the fault")


@pytest.mark.slow
def test_reload_adds_and_removes_routes_and_keeps_in_flight_probes(tmp_path: Path) -> None:
    """Reload: a new route is probed, a removed one's series vanish, a kept route's probes in flight survive;
    a broken config is refused and reported while the old one keeps running."""
    from probe.lab import Lab

    with Lab.start(tmp_path / "lab", mailboxes_per_forest=2) as lab:
        kept, removed, added = "contoso-to-fourthcoffee", "contoso-to-fourthcoffee-2", "fourthcoffee-to-contoso"
        path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=8, jitter=0.2,
                                      routes=[kept, removed])
        lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="delay_delivery", seconds=3)
        daemon, server = start_daemon(path, listen_address="127.0.0.1:0", web=WebOptions(lifecycle=True))
        try:
            wait_for(lambda: any(p.route == kept and p.accepted_at for p in daemon.ledger.open_probes()),
                     timeout=20, what="a probe of the kept route in flight")
            in_flight = {p.probe_id for p in daemon.ledger.open_probes() if p.route == kept and p.accepted_at}
            lab.write_probe_config(path, interval=1, timeout=8, jitter=0.2, routes=[kept, added])
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/-/reload", method="POST")
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
                assert resp.status == 200
            wait_for(lambda: value(scrape(server.port), "mailflow_probe_delivered_total", route=added) >= 2,
                     timeout=30, what="the added route delivering")
            samples = scrape(server.port)
            assert value(samples, "mailflow_probe_sent_total", route=removed) == 0
            assert not any(dict(labels).get("route") == removed for _, labels in samples)
            wait_for(lambda: all((daemon.ledger.probe(pid) or {}).get("state") == "delivered" for pid in in_flight),
                     timeout=20, what="the kept route's in-flight probes delivered after the reload")

            path.write_text("routes: [this is: not, valid\n")
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/-/reload", method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)  # noqa: S310 - loopback
            assert refused.value.code == 500
            assert str(path) not in refused.value.read().decode()  # the details are in the log, not the answer
            assert value(scrape(server.port), "mailflow_probe_config_last_reload_successful") == 0
            before = value(scrape(server.port), "mailflow_probe_sent_total", route=added)
            wait_for(lambda: value(scrape(server.port), "mailflow_probe_sent_total", route=added) > before,
                     timeout=10, what="the old config still probing after a refused reload")
        finally:
            server.close()
            daemon.stop()


# -- the daemon as its own process: kill -9, SIGTERM, restarts -----------------------------------------------


VERDICT = re.compile(r"verdict=(\w+)")


def verdict_lines(log: Path, probe_id: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"probe_id={probe_id}" in line and "verdict=" in line]


def crash_scenario(lab: Any, tmp_path: Path, stop: Callable[[subprocess.Popen[bytes]], None]) -> None:
    """Probes in flight when the daemon stops; after a restart on the same state file each is resolved once."""
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=6, jitter=0.2)
    state_file = Path(yaml.safe_load(config.read_text())["state_file"])
    for host in lab.smart_hosts:
        lab.add_fault(target=host.target, kind="delay_delivery", seconds=2.5)
    log = tmp_path / "daemon.log"
    first = start_process(config, free_port(), log)
    try:
        wait_for(lambda: ledger_made(state_file) and list(states(state_file).values()).count("in_flight") >= 3,
                 timeout=30, what="three probes in flight")
        stop(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    before = {pid for pid, state in states(state_file).items() if state in ("in_flight", "submitting")}
    assert before
    second = start_process(config, free_port(), log)
    try:
        wait_for(lambda: all(states(state_file)[pid] not in ("in_flight", "submitting") for pid in before),
                 timeout=40, what="every probe in flight before the stop resolved after the restart")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    final = states(state_file)
    for pid in before:
        assert final[pid] in ("delivered", "lost", "late", "unknown"), (pid, final[pid])
        said = [VERDICT.search(line).group(1) for line in verdict_lines(log, pid)]  # type: ignore[union-attr]
        # One verdict line, or two where the ledger allows a second: late after lost, and delivered or late
        # after unknown (a restart slowed by a loaded machine can leave the mailbox unobserved past the
        # deadline); the last line is the state file's verdict.
        assert len(said) == 1 or said in (["lost", "late"], ["unknown", "delivered"], ["unknown", "late"]), (pid, said)
        assert said[-1] == final[pid], (pid, said, final[pid])


@pytest.mark.slow
def test_kill_9_with_probes_in_flight_then_restart_resolves_each_exactly_once(lab: Any, tmp_path: Path) -> None:
    """kill -9 mid-flight: nothing counted twice, nothing dropped; all verdicts come from the restarted daemon."""
    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    crash_scenario(lab, tmp_path, kill)


@pytest.mark.slow
def test_sigterm_exits_0_within_10_s_and_in_flight_probes_are_resolved_after_the_next_start(lab: Any,
                                                                                             tmp_path: Path) -> None:
    """SIGTERM with probes in flight: exit code 0 within 10 s; the restarted daemon resolves them."""
    codes: list[int] = []

    def terminate(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        codes.append(proc.wait(timeout=10))

    crash_scenario(lab, tmp_path, terminate)
    assert codes == [0]


def test_a_bad_config_or_unusable_state_file_stops_start_up_with_a_clear_error(lab: Any, tmp_path: Path) -> None:
    """run with a broken config exits 2, with a corrupt state file exits 1 leaving it untouched; no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: 3\n")
    proc = subprocess.run([sys.executable, "-m", "probe", "run", "-c", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr

    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2)
    state_file = Path(yaml.safe_load(config.read_text())["state_file"])
    junk = b"SQLite format 3\x00" + os.urandom(4000)
    state_file.write_bytes(junk)
    proc = subprocess.run([sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert str(state_file) in proc.stderr
    assert state_file.read_bytes() == junk


@pytest.mark.slow
def test_with_streaming_the_latency_under_a_one_second_delay_is_within_a_quarter_second(lab: Any,
                                                                                       tmp_path: Path) -> None:
    """Streaming notifications and millisecond stamps: a 1 s delay is reported within 0.25 s of the lab's record."""
    lab.add_fault(target="smarthost/fourthcoffee-edge-1", kind="delay_delivery", seconds=1)
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2, watch="streaming",
                                  routes=["contoso-to-fourthcoffee"])
    daemon, server = start_daemon(path, listen_address="127.0.0.1:0")
    try:
        wait_for(lambda: len(daemon.ledger.history("contoso-to-fourthcoffee", "fourthcoffee-edge-1")) >= 3,
                 timeout=30, what="three verdicts through the delayed smart host")
        history = daemon.ledger.history("contoso-to-fourthcoffee", "fourthcoffee-edge-1")
    finally:
        server.close()
        daemon.stop()
    assert {row["state"] for row in history} == {"delivered"}
    records = {r.message_id: r for r in lab.store.records()}
    for row in history:
        record = records[row["message_id"]]
        assert record.accepted_at is not None
        true_latency = record.delivered_at - record.accepted_at  # the lab's own clock: 1 s plus any load delay
        assert true_latency == pytest.approx(1.0, abs=0.5), record
        assert row["latency"] == pytest.approx(true_latency, abs=0.25), (row, record)
