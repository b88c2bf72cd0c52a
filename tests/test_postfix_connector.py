"""A real MTA on the connector path: Debian's Postfix plays the source forest's transport as a Send connector does.

Postfix takes the connector probe by authenticated client submission (STARTTLS, then AUTH as the sender, checked
by Dovecot) and relays it as a Send connector with two smart hosts: ``relayhost`` the lab's first smart host,
``smtp_fallback_relay`` its second, ``smtp_tls_security_level = encrypt`` and ``smtp_sasl_auth_enable`` with the
stored credentials. The probe's check reads the connector row beside the direct rows: which smart host Postfix
chose, and what the diagnosis says when Postfix's stored password is wrong.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from exchangelib.protocol import close_connections

from probe.check import CheckOptions, run_check
from probe.config import load_config
from probe.lab import Lab
from probe.ledger import Decision
from probe.report import Report
from probe.secret import Secret
from probe.vocabulary import CONNECTOR_PAIR, Diagnosis, Verdict
from tests.postfix import DovecotAuth, PostfixSendConnector, Relay, missing_parts, reachable_directory

pytestmark = pytest.mark.postfix

ROUTE = "contoso-to-fourthcoffee"
SENDER = "mailflow.probe@contoso.test"
EDGE_1, EDGE_2 = "fourthcoffee-edge-1", "fourthcoffee-edge-2"
ADDRESS = "127.0.0.57"  # the source forest's server (.55 and .56 are test_postfix's)


@dataclass(frozen=True, kw_only=True)
class Rig:
    """The lab, Postfix in the source forest's place, Dovecot for its submission accounts, the probe's config."""

    lab: Lab
    postfix: PostfixSendConnector
    stored: Secret  # the connector's stored password: the target forest's smart host account's
    config_path: Path


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """Start the lab, Dovecot and Postfix as contoso's transport; write a config whose connector submits to it."""
    missing = missing_parts()
    if missing:
        pytest.fail("the Postfix connector tests need " + "; ".join(missing) + ": run scripts/setup (as root)",
                    pytrace=False)
    directory = reachable_directory("mailflow-postfix-connector-")
    submission = Secret(secrets.token_urlsafe(18))
    try:
        with ExitStack() as stack:
            lab = stack.enter_context(Lab.start(directory / "lab", tarpit_seconds=0.5))
            relays = tuple(Relay(domain=h.domain, host=h.host, port=h.port, username=h.username, password=h.password,
                                 ca_file=lab.ca_file) for h in (lab.smart_host(EDGE_1), lab.smart_host(EDGE_2)))
            postfix = PostfixSendConnector.configure_connector(
                directory / "postfix", address=ADDRESS, relays=relays,
                cert=lab.ca.issue("postfix-contoso", [ADDRESS, "postfix.contoso.test"]))
            stack.enter_context(DovecotAuth.start(directory / "dovecot", users={SENDER: submission},
                                                  sockets=[postfix.auth_socket]))
            stack.enter_context(postfix.start())
            config_path = _config(lab, postfix, submission, directory)
            yield Rig(lab=lab, postfix=postfix, stored=relays[0].password, config_path=config_path)
    finally:
        close_connections()
        shutil.rmtree(directory, ignore_errors=True)


def _config(lab: Lab, postfix: PostfixSendConnector, submission: Secret, directory: Path) -> Path:
    """Write the lab's config for the route, its connector probe submitted to Postfix as the sender."""
    password_file = directory / "submission-password"
    password_file.write_text(submission.reveal() + "\n")
    password_file.chmod(0o600)
    path = lab.write_probe_config(directory / "probe.yaml", interval=60, timeout=15, jitter=1, routes=[ROUTE])
    data = yaml.safe_load(path.read_text())
    data["routes"][0]["connector"] = {
        "submit": "smtp", "host": postfix.address, "port": postfix.port, "tls": "starttls", "username": SENDER,
        "password_file": str(password_file), "ca_file": str(lab.ca_file)}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def healthy(rig: Rig) -> Iterator[None]:
    """Each test starts and ends with no lab fault and the right stored password."""
    rig.lab.clear_faults()
    yield
    rig.lab.clear_faults()
    rig.postfix.store_password(rig.stored)


def check(rig: Rig, *, timeout: float | None = None) -> tuple[dict[str, Decision], Report]:
    """Run one check of the route; ``timeout`` (seconds) stands for the config's 15 s."""
    outcome = run_check(load_config(rig.config_path), CheckOptions(poll_seconds=0.25, timeout=timeout))
    return {d.smart_host: d for d in outcome.decisions}, Report(decisions=outcome.decisions)


def relayed_to(rig: Rig, name: str, log: str) -> bool:
    """Say whether Postfix's log shows a message sent on to the lab's smart host ``name``."""
    host = rig.lab.smart_host(name)
    where = re.escape(f"{host.host}[{host.host}]:{host.port}")
    return re.search(rf"to=<mailflow\.probe@fourthcoffee\.test>, relay={where},.* status=sent", log) is not None


def test_the_connector_probe_through_postfix_is_attributed_to_the_relayhost(rig: Rig) -> None:
    """Submitted to Postfix (STARTTLS, AUTH as the sender), relayed to its relayhost with SASL after TLS: the
    connector row is delivered, carried by the first smart host; no diagnosis."""
    since = len(rig.postfix.maillog())
    rows, report = check(rig)
    connector = rows[CONNECTOR_PAIR]
    assert (connector.verdict, connector.carried_by, connector.smtp_code) == (Verdict.DELIVERED, EDGE_1, 250)
    assert rows[EDGE_1].verdict is Verdict.DELIVERED
    assert report.diagnoses()[ROUTE].diagnosis is None
    assert relayed_to(rig, EDGE_1, rig.postfix.maillog()[since:])


def test_with_the_relayhost_refusing_postfix_falls_back_and_the_probe_says_which(rig: Rig) -> None:
    """The first smart host refusing connections: Postfix's smtp_fallback_relay carries it, the connector row says
    the second smart host, and the diagnosis is failing over (redundancy lost at the first)."""
    rig.lab.add_fault(target=f"smarthost/{EDGE_1}", kind="refuse_connections")
    since = len(rig.postfix.maillog())
    rows, report = check(rig)
    assert rows[EDGE_1].verdict is Verdict.SEND_FAILED
    connector = rows[CONNECTOR_PAIR]
    assert (connector.verdict, connector.carried_by) == (Verdict.DELIVERED, EDGE_2)
    log = rig.postfix.maillog()[since:]
    assert relayed_to(rig, EDGE_2, log)
    assert not relayed_to(rig, EDGE_1, log)
    found = report.diagnoses()[ROUTE]
    assert (found.diagnosis, found.failing) == (Diagnosis.FAILING_OVER, (EDGE_1,))


@pytest.mark.slow
def test_a_wrong_stored_password_at_postfix_fails_only_the_connector_row_and_names_the_source_side(rig: Rig) -> None:
    """Postfix's stored password wrong: the smart hosts answer 535 and Postfix keeps the probe queued; the
    connector row is not delivered while both direct rows are, and the diagnosis names the source side.

    The connector probe can only end lost, at its timeout: 6 s here, time enough for the direct rows' deliveries
    and for Postfix's attempts at both smart hosts (each refused after the lab's half-second AUTH tarpit)."""
    rig.postfix.store_password(Secret("not-the-stored-password"))
    since = len(rig.postfix.maillog())
    rows, report = check(rig, timeout=6)
    assert (rows[EDGE_1].verdict, rows[EDGE_2].verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert rows[CONNECTOR_PAIR].verdict is Verdict.LOST
    assert report.diagnoses()[ROUTE].diagnosis is Diagnosis.SOURCE_SIDE
    log = rig.postfix.maillog()[since:]
    assert "SASL authentication failed; server " in log
    assert re.search(r"said: 535 5\.7\.\d", log)
    assert "not-the-stored-password" not in log
