"""A route's connector: section: read, defaulted and checked like the rest of the config."""

from __future__ import annotations

from pathlib import Path

from probe.config import ConnectorConfig, load_config, load_config_with_warnings, redacted_config
from probe.secret import Secret

REPO = Path(__file__).resolve().parent.parent
MINIMAL = REPO / "tests" / "config" / "valid" / "minimal.yaml"
ENV = {"CONTOSO_SMTP_PASSWORD": "smtp-secret-7c1e", "FC_EWS_PASSWORD": "ews-secret-42ab",
       "CONTOSO_EWS_PASSWORD": "ews-secret-contoso", "SUBMIT_PASSWORD": "submit-secret-93d1"}
CONTOSO_MAILBOX = """  contoso:
    address: probe@contoso.com
    ews:
      url: https://mail.contoso.com/EWS/Exchange.asmx
      username: CONTOSO\\svc-mailflow
      password_env: CONTOSO_EWS_PASSWORD
"""


def _config(tmp_path: Path, connector: str, *, sender_mailbox: bool = False) -> Path:
    text = MINIMAL.read_text()
    if sender_mailbox:
        text = text.replace("routes:\n", CONTOSO_MAILBOX + "routes:\n", 1)
    path = tmp_path / "probe.yaml"
    path.write_text(text + connector)
    return path


def test_a_route_without_a_connector_section_has_no_connector_probe() -> None:
    """The connector probe is optional: absent, the route's connector is None."""
    assert load_config(MINIMAL, environ=ENV).routes[0].connector is None


def test_submit_ews_finds_the_senders_own_mailbox_and_it_is_not_warned_unused(tmp_path: Path) -> None:
    """submit: ews (the default) sends from the mailbox whose address is the sender; that mailbox counts as used."""
    path = _config(tmp_path, "    connector: {}\n", sender_mailbox=True)
    loaded = load_config_with_warnings(path, environ=ENV)
    route = loaded.config.routes[0]
    assert route.connector == ConnectorConfig(submit="ews")
    sender_mailbox = loaded.config.sender_mailbox(route)
    assert sender_mailbox is not None
    assert sender_mailbox.name == "contoso"
    assert loaded.warnings == ()


def test_submit_smtp_reads_the_submission_server_with_port_587_by_default(tmp_path: Path) -> None:
    """submit: smtp takes a smart host's keys; the port defaults to 587, or 465 with tls: implicit."""
    base = ("    connector:\n      submit: smtp\n      host: mail.contoso.com\n      username: probe@contoso.com\n"
            "      password_env: SUBMIT_PASSWORD\n")
    connector = load_config(_config(tmp_path, base), environ=ENV).routes[0].connector
    assert connector is not None
    assert (connector.submit, connector.host, connector.port, connector.tls) == ("smtp", "mail.contoso.com", 587,
                                                                                  "starttls")
    assert connector.password == Secret("submit-secret-93d1")
    implicit = load_config(_config(tmp_path, base + "      tls: implicit\n"), environ=ENV).routes[0].connector
    assert implicit is not None
    assert implicit.port == 465


def test_the_connectors_password_is_redacted(tmp_path: Path) -> None:
    """The effective config shows the submission password as <secret>."""
    text = ("    connector:\n      submit: smtp\n      host: mail.contoso.com\n      username: probe@contoso.com\n"
            "      password_env: SUBMIT_PASSWORD\n")
    shown = redacted_config(load_config(_config(tmp_path, text), environ=ENV))
    assert shown["routes"][0]["connector"]["password"] == "<secret>"
    assert "submit-secret-93d1" not in repr(shown)
