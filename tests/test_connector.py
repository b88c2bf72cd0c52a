"""The connector probe end to end on the lab: submitted into the source forest as a user sends it, so that the
forest's transport picks the Send connector and the connector picks a smart host; the check's connector row
says which one carried it, and the diagnosis reads both kinds of probe together."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from probe.check import CheckOptions, run_check
from probe.cli import main as cli_main
from probe.config import load_config
from probe.daemon import Daemon
from probe.lab import Lab
from probe.ledger import Decision
from probe.vocabulary import CONNECTOR_PAIR, Verdict
from tests.daemon_harness import fetch, running_daemon, scrape, value, wait_for

ROUTE = "contoso-to-fourthcoffee"
SENDER = "mailflow.probe@contoso.test"
EDGE_1, EDGE_2 = "fourthcoffee-edge-1", "fourthcoffee-edge-2"

pytestmark = pytest.mark.usefixtures("fresh_exchangelib")


def check_json(lab: Lab, tmp_path: Path, *, connector: str = "ews", timeout: str = "8s") -> dict[str, Any]:
    """Run ``check --format json`` on the route; return its rows by smart host, and the exit code under "exit"."""
    path = lab.write_probe_config(tmp_path / f"{connector}.yaml", interval=60, timeout=8, jitter=1,
                                  routes=[ROUTE], connector=connector)  # type: ignore[arg-type]
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["check", "-c", str(path), "--format", "json", "--timeout", timeout])
    rows: dict[str, Any] = {row["smart_host"]: row for row in json.loads(out.getvalue())}
    rows["exit"] = code
    return rows


@pytest.mark.slow
def test_bad_stored_credentials_fail_the_connector_row_only_and_the_diagnosis_names_the_source_side(
        lab: Lab, tmp_path: Path) -> None:
    """connector/contoso bad_credentials: the connector row is not delivered (lost: the queue keeps retrying),
    both direct rows are delivered, and the diagnosis is the source side."""
    lab.add_fault(target="connector/contoso", kind="bad_credentials")
    rows = check_json(lab, tmp_path)
    assert rows["exit"] == 1
    assert (rows[EDGE_1]["verdict"], rows[EDGE_2]["verdict"]) == ("delivered", "delivered")
    connector = rows[CONNECTOR_PAIR]
    assert connector["verdict"] == "lost"
    assert connector["carried_by"] is None
    assert connector["diagnosis"] == "source_side"
    assert connector["diagnosis_text"].startswith("the source side: the Send connector (enabled, address space, "
                                                  "stored credentials, TLS setting)")
    assert "diagnosis" not in rows[EDGE_1]


def test_a_refusing_first_smart_host_is_failed_over_and_the_diagnosis_says_so(lab: Lab, tmp_path: Path) -> None:
    """refuse_connections on the first smart host: its direct row fails at connect; the connector row is delivered,
    carried by the second smart host; the diagnosis is "failing over", redundancy lost at the first."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="refuse_connections")
    rows = check_json(lab, tmp_path)
    assert (rows[EDGE_1]["verdict"], rows[EDGE_1]["stage"], rows[EDGE_1]["reason"]) == ("send_failed", "connect",
                                                                                       "refused")
    connector = rows[CONNECTOR_PAIR]
    assert (connector["verdict"], connector["carried_by"]) == ("delivered", EDGE_2)
    assert connector["diagnosis"] == "failing_over"
    assert connector["diagnosis_text"] == (f"the connector is failing over: redundancy lost at {EDGE_1} "
                                           f"(carried by {EDGE_2})")


@pytest.mark.slow
def test_an_address_space_removed_is_bounced_5_4_4_with_the_source_side_named(lab: Lab, tmp_path: Path) -> None:
    """address_space_removed: the source forest's transport has no route and sends the sender an NDR 5.4.4 at
    once; the connector row is bounced (routing) with that status and the source transport as reporting MTA,
    the direct rows are delivered, and the diagnosis names the source side."""
    lab.add_fault(target="connector/contoso", kind="address_space_removed")
    rows = check_json(lab, tmp_path)
    connector = rows[CONNECTOR_PAIR]
    assert (connector["verdict"], connector["reason"], connector["status_code"]) == ("bounced", "routing", "5.4.4")
    assert connector["reporting_mta"] == "mail.contoso.test"
    assert "ROUTING.NoNextHop" in connector["diagnostic"]
    assert (rows[EDGE_1]["verdict"], rows[EDGE_2]["verdict"]) == ("delivered", "delivered")
    assert connector["diagnosis"] == "source_side"


@pytest.mark.slow
def test_every_smart_host_down_is_the_target_side(lab: Lab, tmp_path: Path) -> None:
    """Both smart hosts refusing: both direct rows and the connector row fail; the diagnosis is the target side."""
    for host in (EDGE_1, EDGE_2):
        lab.add_fault(target=f"smarthost/{host}", kind="refuse_connections")
    rows = check_json(lab, tmp_path)
    assert rows[CONNECTOR_PAIR]["verdict"] == "lost"
    assert rows[CONNECTOR_PAIR]["diagnosis"] == "target_side"


def test_the_connector_probe_by_client_submission_is_carried_and_timed_from_its_250(lab: Lab,
                                                                                   tmp_path: Path) -> None:
    """submit: smtp: AUTH as the sender on the forest's submission port after STARTTLS; delivered through the
    first smart host, its latency from the submission's 250, its reply the source server's."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="delay_delivery", seconds=1.5)
    rows = check_json(lab, tmp_path, connector="smtp")
    connector = rows[CONNECTOR_PAIR]
    assert (connector["verdict"], connector["carried_by"], connector["smtp_code"]) == ("delivered", EDGE_1, 250)
    assert 1.4 <= connector["latency_seconds"] <= 2.5
    assert connector["diagnosis"] is None


def test_the_connector_probe_over_ews_is_timed_from_the_createitem_answer(lab: Lab, tmp_path: Path) -> None:
    """submit: ews: latency runs from the CreateItem NoError to the target's receipt: a 1.5 s delivery delay at the
    smart host shows as about 1.5 s."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="delay_delivery", seconds=1.5)
    rows = check_json(lab, tmp_path)
    connector = rows[CONNECTOR_PAIR]
    assert (connector["verdict"], connector["carried_by"]) == ("delivered", EDGE_1)
    assert 1.4 <= connector["latency_seconds"] <= 2.5


def test_an_ews_submission_refused_by_the_source_server_is_a_send_failure_at_auth(lab: Lab, tmp_path: Path) -> None:
    """The source forest's EWS endpoint refusing the sender's credentials: the connector probe is send_failed
    at auth (auth_failed), never blamed on a smart host; the direct rows deliver."""
    lab.add_fault(target="ews/contoso", kind="unauthorized")
    rows = check_json(lab, tmp_path)
    connector = rows[CONNECTOR_PAIR]
    assert (connector["verdict"], connector["stage"], connector["reason"]) == ("send_failed", "auth", "auth_failed")
    assert rows[EDGE_1]["verdict"] == "delivered"
    assert connector["diagnosis"] == "source_side"


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[tuple[Daemon, Any]]:
    """A daemon probing the lab's route every second, connector probes sent over EWS."""
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2, routes=[ROUTE],
                                  connector="ews")
    with running_daemon(path) as started:
        yield started


@pytest.mark.slow
def test_the_daemon_exports_the_connector_pair_and_which_smart_host_carried_it(
        lab: Lab, daemon: tuple[Daemon, Any], caplog: pytest.LogCaptureFixture) -> None:
    """The connector pair's series and connector_carried_total for each smart host exist from start-up at 0;
    deliveries count under the first smart host, and under the second once the first refuses, with the
    diagnosis logged and shown on the status page."""
    _, server = daemon
    first = scrape(server.port)
    for host in (EDGE_1, EDGE_2):
        assert ("mailflow_probe_connector_carried_total", frozenset({("route", ROUTE), ("smart_host", host)})) in first
    assert ("mailflow_probe_sent_total", frozenset({("route", ROUTE), ("smart_host", CONNECTOR_PAIR)})) in first
    carried = "mailflow_probe_connector_carried_total"
    wait_for(lambda: value(scrape(server.port), carried, route=ROUTE, smart_host=EDGE_1) >= 2, timeout=30,
             what="two connector probes carried by the first smart host")
    samples = scrape(server.port)
    assert value(samples, "mailflow_probe_delivered_total", route=ROUTE, smart_host=CONNECTOR_PAIR) >= 2
    assert value(samples, "mailflow_probe_success", route=ROUTE, smart_host=CONNECTOR_PAIR) == 1
    before = value(samples, carried, route=ROUTE, smart_host=EDGE_2)
    with caplog.at_level(logging.WARNING, logger="probe.daemon"):
        lab.add_fault(target=f"smarthost/{EDGE_1}", kind="refuse_connections")
        wait_for(lambda: value(scrape(server.port), carried, route=ROUTE, smart_host=EDGE_2) >= before + 2,
                 timeout=30, what="connector probes carried by the second smart host")
        wait_for(lambda: any("failing over" in r.getMessage() for r in caplog.records), timeout=15,
                 what="the diagnosis in the log")
    wait_for(lambda: 'data-diagnosis="failing_over"' in fetch(f"http://127.0.0.1:{server.port}/"), timeout=15,
             what="the diagnosis on the status page")  # from each pair's last verdict, which moves every second
    assert f"redundancy lost at {EDGE_1}" in fetch(f"http://127.0.0.1:{server.port}/")


def test_a_route_without_a_connector_has_no_connector_row(lab: Lab, tmp_path: Path) -> None:
    """Without a connector: section a route has only its direct probes, and no diagnosis."""
    path = lab.write_probe_config(tmp_path / "plain.yaml", interval=60, timeout=8, jitter=1, routes=[ROUTE])
    outcome = run_check(load_config(path), CheckOptions(poll_seconds=0.25))
    decisions: list[Decision] = outcome.decisions
    assert {d.smart_host for d in decisions} == {EDGE_1, EDGE_2}
    assert all(d.verdict is Verdict.DELIVERED for d in decisions)


def _forms(user: str, password: str) -> set[str]:
    return {password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"\0{user}\0{password}".encode()).decode()}


def test_no_password_of_the_connector_path_shows_in_logs_outputs_or_the_ledger(
        lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Connector probes by submission (right and wrong password) and over EWS, every logger at DEBUG, --debug JSON:
    neither the sender's password nor a wrong one, raw or as AUTH carries it, is in the log, the output or the
    ledger's details; the submission's AUTH line shows <secret>."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-submission-password-1c2d"
    smtp = lab.write_probe_config(tmp_path / "smtp.yaml", interval=60, timeout=6, jitter=1, routes=[ROUTE],
                                  connector="smtp")
    wrong_file = tmp_path / "wrong-password"
    wrong_file.write_text(wrong)
    wrong_file.chmod(0o600)
    refused = tmp_path / "refused.yaml"
    refused.write_text(smtp.read_text().replace(str(lab.secret_file("contoso-ews")), str(wrong_file)))
    ews = lab.write_probe_config(tmp_path / "ews.yaml", interval=60, timeout=6, jitter=1, routes=[ROUTE],
                                 connector="ews")
    outputs = []
    for path in (smtp, refused, ews):
        out = io.StringIO()
        with redirect_stdout(out):
            cli_main(["check", "-c", str(path), "--format", "json", "--debug"])
        outputs.append(out.getvalue())
    rows = {row["smart_host"]: row for row in json.loads(outputs[1])}
    assert (rows[CONNECTOR_PAIR]["stage"], rows[CONNECTOR_PAIR]["reason"]) == ("auth", "auth_failed")
    assert "C: AUTH PLAIN <secret>" in rows[CONNECTOR_PAIR]["debug"]["transcript"]
    forest = lab.forests["contoso"]
    forms = _forms(SENDER, forest.ews_password.reveal()) | _forms(SENDER, wrong)
    everything = "\n".join([caplog.text, *outputs])
    assert sorted(f"{form[:3]}..." for form in forms if form in everything) == []
