"""A mailbox's ``ews:`` section: how to reach it over Exchange Web Services (probe.mailbox.ews reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal

from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section, warn_unverified
from probe.secret import Secret

EwsAuth = Literal["ntlm", "basic"]

DOC: Final = "How to reach the mailbox over Exchange Web Services."

FIELDS: Final = (
    FieldSpec(key="url", kind="url", required=True,
              doc="The EWS endpoint, e.g. https://mail.example.com/EWS/Exchange.asmx."),
    FieldSpec(key="username", kind="string", required=True, doc="The account, e.g. DOMAIN\\svc-mailflow."),
    FieldSpec(key="password", kind="secret", required=True,
              doc="The account's password: password_env (an environment variable), password_file, or password."),
    FieldSpec(key="auth", kind="choice", choices=("ntlm", "basic"), default="ntlm",
              doc="The HTTP authentication scheme."),
    FieldSpec(key="ca_file", kind="path", must_exist=True,
              doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
    FieldSpec(key="verify", kind="boolean", default=True, doc="Verify the server's certificate."),
    FieldSpec(key="version", kind="version",
              doc='The server build, e.g. "15.2.1544.4"; given, the guess is skipped.'),
    FieldSpec(key="timeout", kind="duration", positive=True, default=30.0, doc="The timeout of each EWS request."),
)
_DEFAULT: Final = {spec.key: spec.default for spec in FIELDS}


@dataclass(frozen=True, kw_only=True)
class EwsConfig:
    """How to reach one mailbox over Exchange Web Services."""

    name: ClassVar[str] = "ews"  # the backend's name: its section's YAML key, the mailbox_up label

    url: str
    username: str
    password: Secret
    auth: EwsAuth = _DEFAULT["auth"]
    ca_file: Path | None = _DEFAULT["ca_file"]
    verify: bool = _DEFAULT["verify"]
    version: str | None = _DEFAULT["version"]  # e.g. "15.2.1544.4"; given, the version guess is skipped
    timeout: float = _DEFAULT["timeout"]


def build(ctx: Context, section: Section) -> EwsConfig:
    """Make the EwsConfig of a read ``ews:`` section; warn of what sends secrets or trusts too much."""
    warn_unverified(ctx, section)
    ews = EwsConfig(**section.scalars())
    if ews.url.lower().startswith("http://"):
        ctx.warn(section.node_of("url"), section.at("url"), "http:// sends the password without TLS")
    return ews
