"""The lab as a whole: its files, its admin API, its faults API and the ``mailflow-probe lab`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import probe
from probe.config import EwsConfig
from probe.lab import Lab, LabError
from probe.lab.faults import FaultError, SmartHostFault
from tests.lab.test_smarthost import RECIPIENT, message, secure_session


def admin(lab: Lab, method: str, path: str, body: object | bytes | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the lab's loopback admin URL
        lab.admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback admin URL
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- files


def test_lab_json_says_where_everything_is(lab: Lab) -> None:
    """lab.json names the CA file, admin URL, and each forest's smart hosts, mailboxes and accounts."""
    data = json.loads(lab.json_path.read_text())
    assert Path(data["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert data["admin_url"] == lab.admin_url
    assert set(data["forests"]) == {"contoso", "fourthcoffee"}
    forest = data["forests"]["fourthcoffee"]
    assert forest["domain"] == "fourthcoffee.test"
    assert forest["mailboxes"] == {"fourthcoffee": "mailflow.probe@fourthcoffee.test"}
    assert forest["ews"]["username"] == "FOURTHCOFFEE\\svc-mailflow"
    assert forest["ews"]["password"] == lab.forests["fourthcoffee"].ews_password.reveal()
    assert forest["ews"]["auth"] == "ntlm"
    hosts = forest["smart_hosts"]
    assert [h["name"] for h in hosts] == ["fourthcoffee-edge-1", "fourthcoffee-edge-2"]
    first = lab.smart_host("fourthcoffee-edge-1")
    assert (hosts[0]["host"], hosts[0]["port"], hosts[0]["username"], hosts[0]["password"]) == (
        first.host, first.port, first.username, first.password.reveal())
    assert stat.S_IMODE(lab.json_path.stat().st_mode) == 0o600


def test_lab_json_gives_the_ews_urls_when_the_endpoint_runs(lab: Lab) -> None:
    """With the EWS endpoint built in, each forest has an https and an http EWS URL."""
    assert lab.has_ews
    for forest in lab.forests.values():
        assert forest.ews_url.startswith("https://127.0.0.1:")
        assert forest.ews_url.endswith("/EWS/Exchange.asmx")
        assert forest.ews_http_url.startswith("http://127.0.0.1:")


def test_probe_yaml_is_a_ready_config_for_the_lab(lab: Lab) -> None:
    """probe.yaml has a route each way, to the target forest's smart hosts, with password files."""
    config = yaml.safe_load(lab.config_path.read_text())
    assert set(config) == {"signing_key_file", "state_file", "defaults", "mailboxes", "routes"}
    assert set(config["defaults"]) == {"interval", "timeout", "jitter"}
    box = config["mailboxes"]["fourthcoffee"]
    assert box["address"] == "mailflow.probe@fourthcoffee.test"
    assert set(box["ews"]) == {"url", "username", "password_file", "auth", "ca_file"}
    assert Path(box["ews"]["password_file"]).read_text() == lab.forests["fourthcoffee"].ews_password.reveal()
    assert box["folders"] == ["inbox", "junkemail"]
    routes = {r["name"]: r for r in config["routes"]}
    assert set(routes) == {"contoso-to-fourthcoffee", "fourthcoffee-to-contoso"}
    route = routes["contoso-to-fourthcoffee"]
    assert (route["sender"], route["mailbox"]) == ("mailflow.probe@contoso.test", "fourthcoffee")
    host = route["smart_hosts"][0]
    assert set(host) == {"name", "host", "port", "tls", "username", "password_file", "ca_file"}
    assert [h["name"] for h in route["smart_hosts"]] == ["fourthcoffee-edge-1", "fourthcoffee-edge-2"]
    secret = Path(host["password_file"])
    assert secret.read_text() == lab.smart_host("fourthcoffee-edge-1").password.reveal()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert lab.smart_host("fourthcoffee-edge-1").password.reveal() not in lab.config_path.read_text()


def test_probe_yaml_loads_with_the_probes_own_loader(lab: Lab) -> None:
    """The probe's strict loader accepts probe.yaml and reads the lab's passwords from their files."""
    from probe.config import load_config

    config = load_config(lab.config_path)
    assert [r.name for r in config.routes] == ["contoso-to-fourthcoffee", "fourthcoffee-to-contoso"]
    first = config.routes[0].smart_hosts[0]
    lab_host = lab.smart_host("fourthcoffee-edge-1")
    assert (first.host, first.port, first.username) == (lab_host.host, lab_host.port, lab_host.username)
    assert first.password == lab_host.password
    backend = config.mailboxes["fourthcoffee"].backend
    assert isinstance(backend, EwsConfig)
    assert backend.password == lab.forests["fourthcoffee"].ews_password


def test_more_mailboxes_give_more_routes(tmp_path: Path) -> None:
    """With two mailboxes per forest, each direction has a route per target mailbox, suffixed -2."""
    with Lab.start(tmp_path, mailboxes_per_forest=2, smart_hosts_per_forest=1, ews_auth="basic") as lab:
        config = yaml.safe_load(lab.config_path.read_text())
    assert [r["name"] for r in config["routes"]] == [
        "contoso-to-fourthcoffee", "contoso-to-fourthcoffee-2",
        "fourthcoffee-to-contoso", "fourthcoffee-to-contoso-2"]
    assert config["mailboxes"]["fourthcoffee-2"]["address"] == "mailflow.probe2@fourthcoffee.test"
    assert config["routes"][1]["mailbox"] == "fourthcoffee-2"
    assert config["mailboxes"]["contoso"]["ews"]["auth"] == "basic"


def test_write_probe_config_with_other_values(lab: Lab, tmp_path: Path) -> None:
    """write_probe_config writes the given durations, watch mode and only the chosen routes (with their targets'
    and senders' mailboxes: the sender's receives the route's NDRs)."""
    path = lab.write_probe_config(tmp_path / "fast.yaml", interval=2, timeout=0.5, jitter=0,
                                  watch="polling", poll_interval=0.25, routes=["contoso-to-fourthcoffee"])
    config = yaml.safe_load(path.read_text())
    assert config["defaults"] == {"interval": "2s", "timeout": "500ms", "jitter": "0s"}
    assert [r["name"] for r in config["routes"]] == ["contoso-to-fourthcoffee"]
    assert list(config["mailboxes"]) == ["contoso", "fourthcoffee"]
    assert config["mailboxes"]["fourthcoffee"]["watch"] == "polling"
    assert config["mailboxes"]["fourthcoffee"]["poll_interval"] == "250ms"
    with pytest.raises(LabError, match="no route named nowhere"):
        lab.write_probe_config(tmp_path / "x.yaml", interval=1, timeout=1, jitter=0, routes=["nowhere"])


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"smart_hosts_per_forest": 0}, "at least one smart host"),
    ({"forests": ("Contoso!",)}, "forest name"),
    ({"forests": ("contoso", "contoso")}, "distinct"),
    ({"ews_auth": "kerberos"}, "ntlm or basic"),
])
def test_impossible_labs_are_refused_clearly(tmp_path: Path, kwargs: dict[str, Any], error: str) -> None:
    """A lab that cannot be built is refused with a LabError that says why."""
    with pytest.raises(LabError, match=error):
        Lab.start(tmp_path, **kwargs)


# -- faults and the clock


def test_add_fault_validates_kind_and_target(lab: Lab) -> None:
    """add_fault refuses unknown kinds and targets the lab does not have."""
    with pytest.raises(FaultError, match="unknown smarthost fault kind"):
        lab.add_fault(target="smarthost/contoso-edge-1", kind="explode")
    with pytest.raises(FaultError, match="no smart host named 'contoso-edge-9'"):
        lab.add_fault(target="smarthost/contoso-edge-9", kind="drop")
    with pytest.raises(FaultError, match="no forest named 'northwind'"):
        lab.add_fault(target="ews/northwind", kind="server_error")
    assert lab.faults.active() == []


def test_clock_offset_moves_the_mailbox_stamp(lab: Lab) -> None:
    """An ews clock_offset fault moves the store's DateTimeReceived by that many seconds."""
    lab.add_fault(target="ews/fourthcoffee", kind="clock_offset", seconds=3600)
    with secure_session(lab, lab.smart_host("fourthcoffee-edge-1")) as smtp:
        smtp.send_message(message())
    item = lab.store.items(RECIPIENT, ["inbox"])[0]
    assert 3599 < item.received.timestamp() - item.delivered_at < 3601


# -- admin API


def test_admin_api_adds_lists_and_clears_faults(lab: Lab) -> None:
    """POST /faults puts a fault in force, GET lists it, DELETE with and without target lifts faults."""
    status, body = admin(lab, "POST", "/faults", {"target": "smarthost/contoso-edge-1", "kind": "tempfail",
                                                  "stage": "rcpt"})
    assert status == 201
    assert body == {"target": "smarthost/contoso-edge-1", "kind": "tempfail", "stage": "rcpt", "code": 451}
    admin(lab, "POST", "/faults", {"target": "ews/contoso", "kind": "server_busy"})
    admin(lab, "POST", "/faults", {"target": "smarthost/contoso-edge-2", "kind": "drop"})
    assert lab.faults.find("smarthost/contoso-edge-1", SmartHostFault.TEMPFAIL, stage="rcpt") is not None
    status, listed = admin(lab, "GET", "/faults")
    assert status == 200
    assert len(listed) == 3
    assert admin(lab, "DELETE", "/faults?target=ews/contoso") == (200, {"cleared": 1})
    assert {f.target for f in lab.faults.active()} == {"smarthost/contoso-edge-1", "smarthost/contoso-edge-2"}
    assert admin(lab, "DELETE", "/faults") == (200, {"cleared": 2})
    assert lab.faults.active() == []


@pytest.mark.parametrize(("body", "error"), [
    ({"target": "smarthost/contoso-edge-1", "kind": "meltdown"}, "unknown smarthost fault kind"),
    ({"target": "smarthost/nowhere", "kind": "drop"}, "no smart host named"),
    ({"target": "smarthost/contoso-edge-1", "kind": "slow"}, "needs seconds"),
    ({"target": "smarthost/contoso-edge-1", "kind": "drop", "seconds": 3},
     "unknown parameters for drop: seconds; its parameters: none"),
    ({"target": "smarthost/contoso-edge-1", "kind": "tempfail", "stage": "rcpt", "cod": 451},
     "unknown parameters for tempfail: cod; its parameters: stage (required), code (default 451)"),
    ({"target": "ews/contoso", "kind": "server_busy", "back_off_ms": "soon"},
     "server_busy: back_off_ms must be a whole number of milliseconds"),
    ({"target": "ews/contoso", "kind": "clock_ofset", "seconds": 30},
     "unknown ews fault kind 'clock_ofset'; known: clock_offset, server_busy, server_error, slow, unauthorized,"
     " unreachable"),
    ([1, 2], "a fault is a JSON object"),
    (b"{not json", "not JSON"),
])
def test_admin_api_refuses_bad_faults_with_400(lab: Lab, body: object, error: str) -> None:
    """A bad POST /faults gets 400 and a JSON error saying why; nothing is put in force."""
    status, reply = admin(lab, "POST", "/faults", body)
    assert status == 400
    assert error in reply["error"]
    assert lab.faults.active() == []


def test_admin_api_reports_stats_and_deliveries(lab: Lab) -> None:
    """GET /stats counts per smart host (zeros included); GET /deliveries lists what the store took."""
    host = lab.smart_host("fourthcoffee-edge-2")
    msg = message()
    with secure_session(lab, host) as smtp:
        smtp.send_message(msg)
    status, stats = admin(lab, "GET", "/stats")
    assert status == 200
    assert stats["smarthosts"][host.name]["accepted"] == 1
    assert stats["accepted_per_smart_host"] == {
        "contoso-edge-1": 0, "contoso-edge-2": 0, "fourthcoffee-edge-1": 0, "fourthcoffee-edge-2": 1}
    status, deliveries = admin(lab, "GET", "/deliveries")
    assert status == 200
    assert len(deliveries) == 1
    record = deliveries[0]
    assert (record["mailbox"], record["message_id"], record["folder"]) == (RECIPIENT, msg["Message-ID"], "inbox")
    assert record["accepted_at"] <= record["delivered_at"]
    assert admin(lab, "GET", "/deliveries?offset=1") == (200, [])


def test_admin_api_unknown_path_is_404(lab: Lab) -> None:
    """An unknown admin path gets 404 with a JSON error."""
    status, body = admin(lab, "GET", "/nothing")
    assert status == 404
    assert "error" in body


# -- the command


def test_lab_command_writes_lab_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``mailflow-probe lab`` writes lab.json, serves, and exits 0 on SIGTERM."""
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(probe.__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "probe", "lab", "--state-dir", str(state),
                             "--smart-hosts", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (state / "lab.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        data = json.loads((state / "lab.json").read_text())
        assert len(data["forests"]["contoso"]["smart_hosts"]) == 3
        with urllib.request.urlopen(data["admin_url"] + "/stats", timeout=5) as response:  # noqa: S310
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"lab.json" in out


def test_lab_command_refuses_zero_smart_hosts(tmp_path: Path) -> None:
    """``mailflow-probe lab --smart-hosts 0`` exits 2 with a clear message."""
    env = {**os.environ, "PYTHONPATH": str(Path(probe.__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "probe", "lab", "--state-dir", str(tmp_path),
                           "--smart-hosts", "0"], env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"--smart-hosts and --mailboxes must be at least 1" in done.stderr


def raw_admin(lab: Lab, request: bytes) -> bytes:
    """Send raw HTTP to the admin API and return its whole answer."""
    host, port = lab.admin_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


FAULT = b'{"target": "smarthost/fourthcoffee-edge-1", "kind": "drop"}'


@pytest.mark.parametrize("request_head", [
    b"POST /faults HTTP/1.1\r\nHost: rebound.attacker.example\r\n",  # DNS rebinding: the name now points here
    b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://attacker.example\r\nContent-Type: text/plain\r\n",
    b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\n",
])
def test_admin_api_refuses_rebound_hosts_and_cross_origin_posts(lab: Lab, request_head: bytes) -> None:
    """A request for another Host (DNS rebinding) or a browser's cross-origin simple POST gets 403 and adds
    no fault; a GET under a foreign Host is refused as well."""
    answer = raw_admin(lab, request_head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(FAULT) + FAULT)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert lab.faults.active() == []
    stats = raw_admin(lab, b"GET /stats HTTP/1.1\r\nHost: rebound.attacker.example\r\nConnection: close\r\n\r\n")
    assert stats.startswith(b"HTTP/1.1 403 ")


def test_admin_api_takes_loopback_hosts_and_plain_clients(lab: Lab) -> None:
    """curl-style requests to 127.0.0.1 or localhost (no Origin) still add faults."""
    for host in (b"127.0.0.1", b"localhost"):
        answer = raw_admin(lab, b"POST /faults HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(FAULT) + FAULT)
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
        assert len(lab.faults.active()) == 1
        lab.faults.clear(None)
