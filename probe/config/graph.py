"""A mailbox's ``graph:`` section: how to reach it over Microsoft Graph, app-only (probe.mailbox.graph reads it).

The app authenticates with a client secret or a certificate (exactly one) against ``authority``/``tenant_id``
with MSAL and reads the mailbox with the Mail.ReadWrite application permission. National clouds have their
own ``authority`` and ``endpoint``. Folders are the neutral names (Graph's well-known folder names);
cleanup: ``move_to_deleted_items`` is a move to deleteditems, ``soft_delete`` is DELETE, ``hard_delete``
is permanentDelete (global service only).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final
from urllib.parse import urlsplit

from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section, warn_unverified
from probe.secret import Secret

DOC: Final = "How to reach the mailbox over Microsoft Graph with an app registration (client credentials)."

FIELDS: Final = (
    FieldSpec(key="tenant_id", kind="string", required=True,
              doc="The directory (tenant) id, or a verified domain of the tenant."),
    FieldSpec(key="client_id", kind="string", required=True, doc="The app registration's application (client) id."),
    FieldSpec(key="client_secret", kind="secret",
              doc="The app's client secret: client_secret_env, client_secret_file, or client_secret; "
                  "or give certificate_file instead."),
    FieldSpec(key="certificate_file", kind="path", must_exist=True,
              doc="A PEM file with the app's certificate and its private key, instead of a client secret."),
    FieldSpec(key="authority", kind="url", default="https://login.microsoftonline.com",
              doc="The Microsoft Entra authority host (national clouds: their own, e.g. "
                  "https://login.microsoftonline.us)."),
    FieldSpec(key="endpoint", kind="url", default="https://graph.microsoft.com",
              doc="The Microsoft Graph endpoint (national clouds: their own, e.g. https://graph.microsoft.us)."),
    FieldSpec(key="instance_discovery", kind="boolean", default=True,
              doc="Let MSAL check the authority with Microsoft; false only for a loopback authority (the lab)."),
    FieldSpec(key="ca_file", kind="path", must_exist=True,
              doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
    FieldSpec(key="verify", kind="boolean", default=True, doc="Verify the servers' certificates."),
    FieldSpec(key="timeout", kind="duration", positive=True, default=30.0, doc="The timeout of each request."),
)
_DEFAULT: Final = {spec.key: spec.default for spec in FIELDS}


@dataclass(frozen=True, kw_only=True)
class GraphConfig:
    """How to reach one mailbox over Microsoft Graph."""

    name: ClassVar[str] = "graph"  # the backend's name: its section's YAML key, the mailbox_up label

    tenant_id: str
    client_id: str
    client_secret: Secret | None = None
    certificate_file: Path | None = None
    authority: str = _DEFAULT["authority"]
    endpoint: str = _DEFAULT["endpoint"]
    instance_discovery: bool = _DEFAULT["instance_discovery"]
    ca_file: Path | None = _DEFAULT["ca_file"]
    verify: bool = _DEFAULT["verify"]
    timeout: float = _DEFAULT["timeout"]


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(ctx: Context, section: Section) -> GraphConfig:
    """Make the GraphConfig of a read ``graph:`` section: one credential, https, discovery off only on loopback."""
    warn_unverified(ctx, section)
    graph = GraphConfig(**section.scalars())
    if (graph.client_secret is None) == (graph.certificate_file is None):
        node, path = ((section.node_of("certificate_file"), section.at("certificate_file"))
                      if graph.certificate_file is not None else (section.node, section.path))
        raise ctx.error(node, path, "give exactly one credential: client_secret_env, client_secret_file or "
                        "client_secret, or certificate_file")
    for key in ("authority", "endpoint"):
        if not getattr(graph, key).lower().startswith("https://"):
            raise ctx.error(section.node_of(key), section.at(key), "must be https:// (tokens and mail go over it)")
    if not graph.instance_discovery and not _is_loopback(graph.authority):
        raise ctx.error(section.node_of("instance_discovery"), section.at("instance_discovery"),
                        "false is only for a loopback authority (the lab); a real Microsoft authority never "
                        "needs it")
    return graph
