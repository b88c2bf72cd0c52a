"""Downgrade and secrets: no credentials without STARTTLS, no password anywhere, basic auth on /metrics."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from probe.check import CheckOptions, run_check
from probe.config import load_config
from probe.daemon import start_daemon
from probe.lab import Lab
from tests.daemon_harness import free_port, wait_for
from tests.test_fault_matrix import faulty_lab_at, matrix_config

EDGE_1 = "fourthcoffee-edge-1"
ROUTE = "contoso-to-fourthcoffee"


pytestmark = pytest.mark.usefixtures("fresh_exchangelib")  # a new connection pool per test


# -- what counts as a password on the page ------------------------------------------------------------------


def lab_credentials(lab: Lab) -> list[tuple[str, str]]:
    """Return (username, password) of every account in lab.json."""
    described = json.loads(lab.json_path.read_text())
    found: list[tuple[str, str]] = []
    for forest in described["forests"].values():
        found.append((forest["smtp"]["username"], forest["smtp"]["password"]))
        found += [(user, forest["ews"]["password"]) for user in forest["ews"]["users"]]
        found += [(h["username"], h["password"]) for h in forest["smart_hosts"]]
    assert found
    return found


def secret_forms(lab: Lab) -> set[str]:
    """Return every password of the lab, raw and as SMTP AUTH PLAIN / LOGIN or HTTP Basic would carry it."""
    forms: set[str] = set()
    for user, password in lab_credentials(lab):
        forms.add(password)
        forms.add(base64.b64encode(password.encode()).decode())  # AUTH LOGIN's password line
        forms.add(base64.b64encode(f"\0{user}\0{password}".encode()).decode())  # AUTH PLAIN
        forms.add(base64.b64encode(f"{user}:{password}".encode()).decode())  # HTTP Basic
    return forms


def leaks(text: str, forms: set[str]) -> list[str]:
    """Return the secret forms found in ``text`` (shortened, so the failure does not print them)."""
    return sorted(f"{form[:3]}... ({len(form)} chars)" for form in forms if form in text)


# -- on the wire ----------------------------------------------------------------------------------------------


class Tap:
    """A TCP relay on loopback that records every byte the client sends to the server."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.upstream, timeout=10)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        source.settimeout(30)
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting."""
        self._stop.set()
        self._thread.join(2)
        self._listener.close()


def tapped_check(lab: Lab, tmp_path: Path) -> tuple[dict[str, Any], bytes]:
    """Run a check of one route with its first smart host reached through a Tap; return verdicts and bytes."""
    path = lab.write_probe_config(tmp_path / "tapped.yaml", interval=60, timeout=6, jitter=1, routes=[ROUTE])
    data = yaml.safe_load(path.read_text())
    host = data["routes"][0]["smart_hosts"][0]
    tap = Tap((host["host"], int(host["port"])))
    host.update({"host": "127.0.0.1", "port": tap.port, "server_name": host["host"]})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        outcome = run_check(load_config(path), CheckOptions(poll_seconds=0.25))
    finally:
        tap.close()
    return {d.smart_host: d for d in outcome.decisions}, bytes(tap.sent)


def test_a_smart_host_without_starttls_never_receives_credentials_on_the_wire(lab: Lab, tmp_path: Path) -> None:
    """no_starttls: the lab counts no AUTH, and the bytes the probe sent hold no AUTH and no password form."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="no_starttls")
    verdicts, sent = tapped_check(lab, tmp_path)
    assert (verdicts[EDGE_1].stage, verdicts[EDGE_1].reason) == ("starttls", "tls_unavailable")
    assert lab.stats.smarthost(EDGE_1, "auth_attempts") == 0
    assert sent.upper().startswith(b"EHLO ")
    assert b"AUTH" not in sent.upper()
    assert b"MAIL FROM" not in sent.upper()
    assert not leaks(sent.decode("latin-1"), secret_forms(lab))


def test_with_starttls_the_credentials_travel_only_inside_tls(lab: Lab, tmp_path: Path) -> None:
    """A healthy smart host: the cleartext part of the session is EHLO and STARTTLS; AUTH happens, but
    nothing of any password is visible on the wire."""
    verdicts, sent = tapped_check(lab, tmp_path)
    assert str(verdicts[EDGE_1].verdict) == "delivered"
    assert lab.stats.smarthost(EDGE_1, "auth_attempts") >= 1
    cleartext = sent[: sent.upper().index(b"STARTTLS\r\n") + len(b"STARTTLS\r\n")]
    assert cleartext.upper().startswith(b"EHLO ")
    assert b"AUTH" not in cleartext.upper()
    assert b"AUTH" not in sent.upper()  # the rest is TLS records
    assert not leaks(sent.decode("latin-1"), secret_forms(lab))


# -- nowhere in what the program shows ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UnderEveryFault:
    """What a check and a daemon showed, run side by side with every fault in force, and the lab's secrets."""

    forms: set[str]  # every password of the lab, in every form it travels in
    check_log: str  # every log record of this process (the check, the lab) at DEBUG
    check_decisions: list[dict[str, Any]]  # the check's JSON verdicts
    check_details: list[dict[str, Any]]  # the check's ledger rows: SMTP transcripts, errors, hops
    daemon_log: str  # the daemon process's output at --log.level debug
    daemon_pages: list[str]  # its /metrics, /, and /debug of every pair
    daemon_state: str  # every row of its state file


@pytest.fixture(scope="module")
def under_every_fault(tmp_path_factory: pytest.TempPathFactory) -> UnderEveryFault:
    """Start the fault matrix's lab (every fault kind in force) and a daemon process on it at --log.level debug;
    run one check in this process while the daemon probes, with every logger at DEBUG; wait for the daemon's
    send_failed, lost, unknown and delivered verdicts; keep what each showed; stop both.

    One run for the module's two tests below (the slow mailbox and the timeouts are waited out once), and its
    lab stopped before they start: a lab kept for the module would still run while this module's other tests
    start theirs on the same worker, and two labs of a process that share forest names do not share NTLM
    passwords (probe.lab.ews.auth keeps the first), so the second lab's mailboxes would refuse the probe.
    """
    folder = tmp_path_factory.mktemp("under-every-fault")
    with faulty_lab_at(folder / "lab") as lab:
        config = matrix_config(lab, folder / "daemon.yaml", interval=2)
        port = free_port()
        log_file = folder / "daemon.log"
        with log_file.open("wb") as out:  # a file, not a pipe: a full pipe would block the daemon's logging
            proc = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address",
                                     f"127.0.0.1:{port}", "--log.level", "debug"], stdout=out,
                                    stderr=subprocess.STDOUT)
        verdicts = ("send_failed", "lost", "unknown", "delivered")
        try:
            check_config = load_config(matrix_config(lab, folder / "check.yaml", interval=60))
            with debug_log() as records:
                outcome = run_check(check_config, CheckOptions(poll_seconds=0.5))
            wait_for(lambda: all(f"verdict={v}" in log_file.read_text(errors="replace") for v in verdicts),
                     timeout=120, what="the daemon's send_failed, lost, unknown and delivered verdicts", every=0.5)
            bodies = pages(port, config)
        finally:
            lab.clear_faults("ews/slowews")  # a search it holds at 2 s a request would hold the stop up to 5 s
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        forms = secret_forms(lab)
    return UnderEveryFault(
        forms=forms, check_log="\n".join(records),
        check_decisions=[d.to_json() for d in outcome.decisions],
        check_details=[h for r in check_config.routes for s in r.smart_hosts
                       for h in outcome.ledger.history(r.name, s.name)],
        daemon_log=log_file.read_text(errors="replace"), daemon_pages=bodies,
        daemon_state=ledger_text(Path(yaml.safe_load(config.read_text())["state_file"])))


@contextlib.contextmanager
def debug_log() -> Iterator[list[str]]:
    """Keep every log record of this process, formatted (with any traceback), with the root logger at DEBUG
    while the block runs (as pytest's caplog.set_level(logging.DEBUG) would, for a module-scoped run)."""
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield kept
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.slow
def test_a_check_under_every_fault_shows_no_password_in_logs_verdicts_or_transcripts(
        under_every_fault: UnderEveryFault) -> None:
    """check with every fault in force, every logger at DEBUG: no password form in the log records,
    the JSON verdicts, or the ledger's detail (SMTP transcripts, errors, hops)."""
    seen = under_every_fault
    assert any("C: AUTH" in json.dumps(d["detail"]) for d in seen.check_details)  # the transcripts are there...
    assert seen.check_log  # ...and the log records...
    everything = "\n".join([seen.check_log, json.dumps(seen.check_decisions),
                            json.dumps(seen.check_details, default=str)])
    assert not leaks(everything, seen.forms)  # ...without a password


def fetch(url: str) -> str:
    """GET a page of the daemon (any status) and return its body."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback
            return str(resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode(errors="replace"))


def pages(port: int, config_path: Path) -> list[str]:
    """Return /metrics, / and /debug of every pair (and of each pair's latest probe)."""
    base = f"http://127.0.0.1:{port}"
    bodies = [fetch(base + "/metrics"), fetch(base + "/")]
    for route in yaml.safe_load(config_path.read_text())["routes"]:
        for host in route["smart_hosts"]:
            query = urllib.parse.urlencode({"route": route["name"], "smart_host": host["name"]})
            bodies.append(fetch(f"{base}/debug?{query}"))
    return bodies


def ledger_text(state_file: Path) -> str:
    """Return every row of the state file as text."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        return "\n".join(repr(row) for table in ("probes", "sightings", "observations")
                         for row in db.execute(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
    finally:
        db.close()


@pytest.mark.slow
def test_a_daemon_under_every_fault_shows_no_password_in_logs_metrics_pages_or_state(
        under_every_fault: UnderEveryFault) -> None:
    """The daemon as a process at --log.level debug with every fault in force until it has given send_failed,
    lost, unknown and delivered verdicts: no password form in its stderr, /metrics, the status page, the debug
    view of every pair, or the state file."""
    seen = under_every_fault
    assert "C: AUTH" in "".join(seen.daemon_pages) + seen.daemon_state  # transcripts are shown...
    assert not leaks(seen.daemon_log, seen.forms)  # ...and no password, anywhere
    assert not leaks("\n".join(seen.daemon_pages), seen.forms)
    assert not leaks(seen.daemon_state, seen.forms)


# -- basic auth on the metrics endpoint -----------------------------------------------------------------------


def get_status(url: str, auth: tuple[str, str] | None) -> int:
    """GET ``url`` with basic auth (or none) and return the HTTP status."""
    request = urllib.request.Request(url)  # noqa: S310 - loopback
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_metrics_with_basic_auth_reject_a_wrong_password_and_accept_the_right_one(lab: Lab, tmp_path: Path) -> None:
    """--web.config.file with a bcrypt user: no or wrong credentials get 401, the right ones 200."""
    hashed = bcrypt.hashpw(b"Correct-Horse-9", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web.yaml"
    web_config.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    config = lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=5, jitter=1, routes=[ROUTE])
    daemon, server = start_daemon(config, listen_address="127.0.0.1:0", web_config_file=str(web_config))
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert get_status(url, None) == 401
        assert get_status(url, ("prometheus", "Correct-Horse-8")) == 401
        assert get_status(url, ("someone", "Correct-Horse-9")) == 401
        assert get_status(url, ("prometheus", "Correct-Horse-9")) == 200
    finally:
        server.close()
        daemon.stop()
