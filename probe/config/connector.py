"""A route's ``connector:`` section: the end-to-end probe submitted into the source forest (DESIGN.md, "Config").

``submit: ews`` sends the probe from the sender's own mailbox (the mailbox under ``mailboxes`` whose address is
the route's sender; it must have an ``ews:`` section): CreateItem with SendOnly, with that mailbox's EWS
credentials. ``submit: smtp`` is authenticated client submission to the source forest (port 587, STARTTLS,
AUTH as the sender), with the keys of a smart host entry. Either way the source forest's transport picks the
Send connector by address space and the connector picks a smart host: the probe only sees which one carried it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, get_args

from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section, show, warn_unverified
from probe.secret import Secret

if TYPE_CHECKING:
    from probe.config.model import MailboxConfig

SubmitWay = Literal["ews", "smtp"]
ConnectorTls = Literal["starttls", "implicit", "none"]

SUBMISSION_PORT: Final = 587
IMPLICIT_SUBMISSION_PORT: Final = 465
DOC: Final = ("The end-to-end probe through the source forest's Send connector: submitted as the sender would "
              "send it, so the connector chooses the smart host.")
_SMTP_ONLY: Final = "submit: smtp"

FIELDS: Final = (
    FieldSpec(key="submit", kind="choice", choices=get_args(SubmitWay), default="ews",
              doc="ews: sent from the sender's own mailbox (under mailboxes, with an ews: section), CreateItem "
                  "SendOnly; smtp: authenticated client submission to the source forest."),
    FieldSpec(key="host", kind="host", doc=f"{_SMTP_ONLY}: the source forest's client submission server."),
    FieldSpec(key="port", kind="port", default=SUBMISSION_PORT,
              doc=f"{_SMTP_ONLY}: the TCP port; default {SUBMISSION_PORT}, or {IMPLICIT_SUBMISSION_PORT} with "
                  "tls: implicit."),
    FieldSpec(key="tls", kind="choice", choices=get_args(ConnectorTls), default="starttls",
              doc=f"{_SMTP_ONLY}: starttls (required, the default), implicit, or none (needs allow_insecure)."),
    FieldSpec(key="username", kind="string", doc=f"{_SMTP_ONLY}: the sender's account, for SMTP AUTH."),
    FieldSpec(key="password", kind="secret", pairs_with="username",
              doc=f"{_SMTP_ONLY}: the sender's password: password_env, password_file, or password."),
    FieldSpec(key="ca_file", kind="path", must_exist=True,
              doc=f"{_SMTP_ONLY}: PEM file of CA certificates to trust (relative to this file)."),
    FieldSpec(key="server_name", kind="host", doc=f"{_SMTP_ONLY}: the name to verify the certificate against."),
    FieldSpec(key="verify", kind="boolean", default=True, doc=f"{_SMTP_ONLY}: verify the server's certificate."),
    FieldSpec(key="allow_insecure", kind="boolean", default=False, doc=f"{_SMTP_ONLY}: allow tls: none."),
    FieldSpec(key="timeout", kind="duration", positive=True, default=30.0,
              doc=f"{_SMTP_ONLY}: the timeout of each network operation."),
    FieldSpec(key="helo", kind="host", doc=f"{_SMTP_ONLY}: the name to send in EHLO."),
)
_DEFAULT: Final = {spec.key: spec.default for spec in FIELDS}


@dataclass(frozen=True, kw_only=True)
class ConnectorConfig:
    """How a route's connector probe is submitted into the source forest; the keys of its YAML section."""

    submit: SubmitWay = _DEFAULT["submit"]
    host: str | None = _DEFAULT["host"]
    port: int = _DEFAULT["port"]  # with tls: implicit, the loader's default is 465
    tls: ConnectorTls = _DEFAULT["tls"]
    username: str | None = _DEFAULT["username"]
    password: Secret | None = _DEFAULT["password"]
    ca_file: Path | None = _DEFAULT["ca_file"]
    server_name: str | None = _DEFAULT["server_name"]
    verify: bool = _DEFAULT["verify"]
    allow_insecure: bool = _DEFAULT["allow_insecure"]
    timeout: float = _DEFAULT["timeout"]
    helo: str | None = _DEFAULT["helo"]


def _check_ews(ctx: Context, section: Section, sender: str, mailboxes: Mapping[str, MailboxConfig]) -> None:
    """Refuse SMTP keys with submit: ews, and a sender without an EWS mailbox of its own."""
    extra = [key for key in section.items if key != "submit"]
    if extra:
        item = section.items[extra[0]]
        raise ctx.error(item.key_node, section.at(item.key), f"{item.key} applies to submit: smtp only; "
                        "submit: ews sends from the sender's own mailbox")
    node, path = section.node_of("submit"), section.at("submit")
    own = [m for m in mailboxes.values() if m.address.lower() == sender.lower()]
    if not own:
        raise ctx.error(node, path, f"submit: ews sends from the sender's own mailbox, but no mailbox has the "
                        f"address {show(sender)}; add it under mailboxes, or use submit: smtp")
    if own[0].backend.name != "ews":
        raise ctx.error(node, path, f"submit: ews needs the sender's mailbox {show(own[0].name)} to have an ews: "
                        "section")


def _check_smtp(ctx: Context, section: Section) -> None:
    """Require a host and the sender's credentials with submit: smtp; refuse tls: none without allow_insecure."""
    for key in ("host", "username"):
        if key not in section.items:
            raise ctx.error(section.node, section.path, f'submit: smtp needs "{key}": authenticated client '
                            "submission to the source forest, as the sender")
    values = section.scalars()
    if values.get("tls") == "none" and not values.get("allow_insecure", False):
        raise ctx.error(section.node_of("tls"), section.at("tls"),
                        '"none" sends mail and credentials unencrypted; set allow_insecure: true to allow it')
    warn_unverified(ctx, section)


def build(ctx: Context, section: Section, *, sender: str, mailboxes: Mapping[str, MailboxConfig]) -> ConnectorConfig:
    """Make the ConnectorConfig of a route's read ``connector:`` section, or raise naming what is wrong."""
    values = section.scalars()
    if values.get("submit", _DEFAULT["submit"]) == "ews":
        _check_ews(ctx, section, sender, mailboxes)
        return ConnectorConfig(**values)
    _check_smtp(ctx, section)
    if values.get("tls") == "implicit":
        values.setdefault("port", IMPLICIT_SUBMISSION_PORT)
    return ConnectorConfig(**values)
