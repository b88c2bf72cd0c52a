"""The daemon as its own process, on the lab, under a hostile network and a starved host.

Real limits (``resource.setrlimit`` in the daemon's process), real slow and resetting clients over loopback:
a host out of file descriptors never blames a smart host, and a flood of resets never floods the log.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import free_port, scrape, states, value, wait_for, with_open_files_limit

pytestmark = pytest.mark.usefixtures("fresh_exchangelib")


@contextmanager
def daemon_process(config: Path, log: Path, *, open_files: int | None = None,
                   extra: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``python -m probe run`` (JSON logs to ``log``), with soft and hard open-files limits of ``open_files``."""
    port = free_port()
    argv = [sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address", f"127.0.0.1:{port}",
            "--log.format", "json", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(with_open_files_limit(argv, open_files), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port), timeout=30, what="the daemon's /-/healthy")
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def slow_clients(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections that each send the start of a request head and nothing more (yet)."""
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        held.append(sock)
    return held


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Return the daemon's log, every line parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_daemon_out_of_file_descriptors_counts_no_send_failure(lab: Any, tmp_path: Path) -> None:
    """Slow web clients take every descriptor of a daemon limited to 96: its probes meanwhile end unknown
    (reason local), local_errors_total{resource="descriptors"} counts them, the log says what ran out, and no
    pair counts a single send failure while every smart host is healthy."""
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=6, jitter=0.2)
    log = tmp_path / "daemon.log"
    with daemon_process(config, log, open_files=96, extra=("--web.max-connections", "1000")) as (_, port):
        wait_for(lambda: value(scrape(port), "mailflow_probe_delivered_total") >= 2, timeout=30,
                 what="deliveries before the starvation")
        held = slow_clients(port, 200)
        try:  # several send intervals with no descriptor to spare: three probes per pair ended unknown for it
            wait_for(lambda: len(local_unknowns(log)) >= 3 * 4, timeout=60, every=0.5,
                     what="probes ending unknown (reason local) while the descriptors are taken")
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: _answers(port), timeout=15, what="the daemon answering again")
        wait_for(lambda: value(scrape(port), "mailflow_probe_delivered_total") >= 6, timeout=30,
                 what="deliveries again once descriptors are free")
        samples = scrape(port)
    assert len(held) > 60  # the clients really held the descriptors
    assert value(samples, "mailflow_probe_send_failures_total") == 0
    assert value(samples, "mailflow_probe_local_errors_total", resource="descriptors") > 0
    assert value(samples, "mailflow_probe_local_errors_total", resource="disk") == 0
    assert "send_failed" not in states(_state_file(config)).values()
    lines = log_lines(log)
    assert any(line.get("resource") == "descriptors" and "file descriptors" in line["msg"] for line in lines)
    assert not any("Traceback" in line["msg"] for line in lines)


def _state_file(config: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(config.read_text())["state_file"])


def local_unknowns(log: Path) -> list[dict[str, Any]]:
    """Return the verdict lines of the daemon's log that say unknown for a failure of its own host."""
    return [line for line in log_lines(log) if line.get("verdict") == "unknown" and line.get("reason") == "local"]


def test_a_hundred_clients_that_reset_do_not_flood_the_log(lab: Any, tmp_path: Path) -> None:
    """100 clients send GET /metrics and reset at once: the daemon keeps serving, its log gains a handful of
    lines at most, every one of them JSON (no socketserver traceback)."""
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=10, jitter=1)
    log = tmp_path / "daemon.log"
    with daemon_process(config, log) as (_, port):
        time.sleep(1)
        before = len(log_lines(log))
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST, whatever the daemon was writing
        time.sleep(2)
        assert _answers(port)
        after = log_lines(log)
    assert len(after) - before < 10, after[before:]


def test_slow_clients_are_cut_at_the_head_deadline_and_scrapes_go_on(lab: Any, tmp_path: Path) -> None:
    """More slow clients than the cap (--web.max-connections 64): each is cut at the latest at the head
    deadline, the ones waiting longest make room for newcomers, and a scrape is answered all along."""
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=10, jitter=1)
    with daemon_process(config, tmp_path / "daemon.log", extra=("--web.max-connections", "64")) as (_, port):
        held = slow_clients(port, 150)
        answered = 0
        for _ in range(5):
            samples = scrape(port)
            answered += 1
            assert value(samples, "mailflow_probe_local_errors_total") == 0
        for sock in held:  # one more byte each, a few seconds apart: never a whole head
            with suppress(OSError):
                sock.sendall(b"a")
        cut_after = _wait_all_closed(held, timeout=20)
    assert answered == 5
    assert cut_after <= 10 + 5  # the head deadline (10 s) and some slack for a loaded machine


def _wait_all_closed(socks: list[socket.socket], *, timeout: float) -> float:
    """Wait until the server has closed every one of ``socks``; return how long that took."""
    start = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() - start < timeout:
        still = []
        for sock in open_:
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    sock.close()
                    continue
            except TimeoutError:
                still.append(sock)
                continue
            except OSError:
                sock.close()
                continue
            still.append(sock)
        open_ = still
    for sock in open_:
        sock.close()
    assert not open_, f"{len(open_)} slow clients still connected after {timeout} s"
    return time.monotonic() - start


def test_forged_tags_are_exported_and_logged_once_a_minute(lab: Any, tmp_path: Path) -> None:
    """Thirty messages whose probe tag has the wrong HMAC: forged_tags_total{mailbox} counts them, the log has
    one line for them (rate-limited), none is counted as a probe or deleted."""
    from probe.message import build_probe_message

    mailbox_address = "mailflow.probe@fourthcoffee.test"
    forged = [build_probe_message(key=b"k" * 32, route="contoso-to-fourthcoffee", smart_host="fourthcoffee-edge-1",
                                  sender="mailflow.probe@contoso.test", recipient=mailbox_address)
              for _ in range(30)]
    for message in forged:
        lab.store.deliver(mailbox_address, message.raw)
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=6, jitter=0.2)
    log = tmp_path / "daemon.log"
    with daemon_process(config, log) as (_, port):
        wait_for(lambda: value(scrape(port), "mailflow_probe_forged_tags_total") >= 30, timeout=30,
                 what="the forged tags counted")
        wait_for(lambda: value(scrape(port), "mailflow_probe_delivered_total") >= 8, timeout=30,
                 what="several searches (each sees the forged messages again)")
        samples = scrape(port)
    series = {dict(labels)["mailbox"]: v for (name, labels), v in samples.items()
              if name == "mailflow_probe_forged_tags_total"}
    assert len(series) == 2  # one per configured mailbox, from start-up
    assert sorted(series.values())[0] == 0
    assert sorted(series.values())[1] >= 30
    forged_lines = [line for line in log_lines(log) if "forged" in line["msg"]]
    assert len(forged_lines) == 1, forged_lines
    assert forged_lines[0]["forged"] >= 30
    left = {i.message_id for i in lab.store.items(mailbox_address, ["inbox", "junkemail"])}
    assert {m.message_id for m in forged} <= left


def test_run_logs_every_config_warning_at_start(lab: Any, tmp_path: Path) -> None:
    """Warnings validate would print (verification off, a password in the file) are log lines of run too."""
    import yaml

    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=10, jitter=1)
    data = yaml.safe_load(config.read_text())
    data["routes"][0]["smart_hosts"][0]["verify"] = False
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    log = tmp_path / "daemon.log"
    with daemon_process(config, log):
        pass
    warnings = [line for line in log_lines(log) if line["level"] == "warn" and line["msg"].startswith("config: ")]
    assert any("certificate verification is off" in line["msg"] for line in warnings), warnings
    assert any("probe.yaml:" in line["msg"] for line in warnings)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (the suite runs as root) and unmount it afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; return it."""
    filler = directory / "filler"
    # unbuffered, and the suppress outside the file: a buffered file's close flushed the rest onto the full disk,
    # and its ENOSPC came out of the with statement after the suppress had ended (the test, not the daemon, failed)
    with suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
    return filler


def test_a_full_disk_under_the_state_file_counts_no_send_failure(lab: Any, tmp_path: Path) -> None:
    """The state file's filesystem (a real 2 MiB tmpfs) fills up: probes are not sent (none can be recorded),
    local_errors_total{resource="disk"} counts it, the log says the disk is full, no send failure is counted;
    with room again the daemon probes and delivers."""
    import yaml

    with small_disk(tmp_path / "disk", "2m") as disk:
        config = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=6, jitter=0.2)
        data = yaml.safe_load(config.read_text())
        data["state_file"] = str(disk / "state.db")
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        log = tmp_path / "daemon.log"
        with daemon_process(config, log) as (_, port):
            wait_for(lambda: value(scrape(port), "mailflow_probe_delivered_total") >= 2, timeout=30,
                     what="deliveries before the disk fills")
            filler = fill(disk)
            wait_for(lambda: value(scrape(port), "mailflow_probe_local_errors_total", resource="disk") >= 3,
                     timeout=30, what="the full disk counted as a local fault")
            filler.unlink()
            delivered = value(scrape(port), "mailflow_probe_delivered_total")
            wait_for(lambda: value(scrape(port), "mailflow_probe_delivered_total") >= delivered + 2, timeout=30,
                     what="deliveries again with room on the disk")
            samples = scrape(port)
    assert value(samples, "mailflow_probe_send_failures_total") == 0
    assert value(samples, "mailflow_probe_local_errors_total", resource="descriptors") == 0
    lines = log_lines(log)
    assert any(line.get("resource") == "disk" and "disk is full" in line["msg"] for line in lines), lines[-5:]
