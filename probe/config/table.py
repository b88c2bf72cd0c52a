"""The field table: every key of the YAML format, its kind, default and rules, and nothing else.

It is the one description that the loader enforces, the JSON Schema shows and the model's dataclasses take
their defaults from (``default``): a default is declared here and only here.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from probe.config import connector
from probe.config.backends import BACKENDS
from probe.config.fields import FieldSpec, default_of
from probe.metric_families import OPTIONAL_PAIR_LABELS
from probe.vocabulary import SEARCHED_FOLDERS

TlsMode = Literal["starttls", "implicit", "none"]
Cleanup = Literal["move_to_deleted_items", "soft_delete", "hard_delete", "keep"]
WatchMode = Literal["streaming", "polling"]

SMTP_PORT: Final = 25
IMPLICIT_TLS_PORT: Final = 465  # a smart host's port when tls: implicit and no port is given

_F = FieldSpec
_TIMING = "interval, timeout and jitter"

SECTION_DOCS: Final[dict[str, str]] = {
    "config": "The configuration of one mailflow-probe instance.",
    "defaults": f"Schedule defaults ({_TIMING}) that each route may override.",
    "metrics": "What /metrics exports beyond the default series (each option costs a Prometheus more series).",
    "mailbox": "A probe mailbox that receives the probes of one or more routes.",
    **{backend.name: backend.doc for backend in BACKENDS},
    "route": "A direction of mail flow: a sender, a target mailbox, and the smart hosts to probe it through.",
    "smart_host": "One smart host of a route: the server the probe submits to directly.",
    "connector": connector.DOC,
}

_CONFIG: Final = (
    _F(key="signing_key_file", kind="path", required=True,
       doc="The key that signs every probe's tag; created (mode 0600) if missing."),
    _F(key="state_file", kind="path", required=True, doc="The SQLite file of probes in flight and results."),
    _F(key="defaults", kind="section", section="defaults", doc=SECTION_DOCS["defaults"]),
    _F(key="metrics", kind="section", section="metrics", doc=SECTION_DOCS["metrics"]),
    _F(key="mailboxes", kind="section_map", section="mailbox", required=True, noun="mailbox",
       doc="The probe mailboxes, by name."),
    _F(key="routes", kind="section_list", section="route", required=True, noun="route",
       doc="The directions of mail flow to probe."),
)

_SCHEDULE: Final = (
    _F(key="interval", kind="duration", positive=True, default=60.0, doc="How often each smart host is probed."),
    _F(key="timeout", kind="duration", positive=True, default=300.0,
       doc="How long a probe may take to arrive before it is declared lost."),
    _F(key="jitter", kind="duration", default=10.0,
       doc="A random delay of up to this much, less than the interval."),
)

_METRICS: Final = (
    _F(key="per_pair", kind="choice_list", choices=OPTIONAL_PAIR_LABELS, default=(),
       doc="Families exported per (route, smart host) pair instead of summed over the pairs: smtp_stage_seconds "
           "adds 104 series per pair (8 stages x 13)."),
)

_MAILBOX: Final = (
    _F(key="address", kind="address", required=True, doc="The mailbox's email address."),
    *(_F(key=backend.name, kind="section", section=backend.name, required=True, one_of="backend",
         doc=backend.doc) for backend in BACKENDS),
    _F(key="folders", kind="folder_list", noun="folder", default=SEARCHED_FOLDERS,
       doc="The folders searched for probes: inbox and junkemail (EWS, Graph), or IMAP mailbox names; "
           "read as the backend's row says (probe.config.backends)."),
    _F(key="cleanup", kind="choice", choices=get_args(Cleanup), default="move_to_deleted_items",
       doc="What is done with a probe once found (only probes whose tag verifies are ever touched); IMAP: "
           "move_to_deleted_items is UID MOVE to \\Trash, hard_delete is \\Deleted + UID EXPUNGE."),
    _F(key="watch", kind="choice", choices=get_args(WatchMode), default="streaming",
       doc="Streaming notifications, or polling only."),
    _F(key="poll_interval", kind="duration", positive=True, default=10.0, doc="How often the mailbox is searched."),
)

_ROUTE: Final = (
    _F(key="name", kind="name", required=True, doc="The route's name (a metric label)."),
    _F(key="sender", kind="address", required=True, doc="The envelope and header sender of the probes."),
    _F(key="mailbox", kind="name", required=True, doc="The name of the mailbox (under mailboxes) probes go to."),
    _F(key="recipient", kind="address", doc="The recipient address; default: the mailbox's address."),
    _F(key="bounces_mailbox", kind="name",
       doc="The name of the mailbox (under mailboxes) the route's non-delivery reports come back to; default: the "
           "mailbox whose address is the sender."),
    _F(key="smart_hosts", kind="section_list", section="smart_host", required=True, noun="smart host",
       doc="The smart hosts to probe the route through, each on its own."),
    _F(key="connector", kind="section", section="connector", doc=SECTION_DOCS["connector"]),
    _F(key="interval", kind="duration", positive=True, inherited=True,
       doc="How often each smart host is probed; default: defaults.interval."),
    _F(key="timeout", kind="duration", positive=True, inherited=True,
       doc="How long a probe may take to arrive; default: defaults.timeout."),
    _F(key="jitter", kind="duration", inherited=True,
       doc="A random delay of up to this much; default: defaults.jitter."),
)

_SMART_HOST: Final = (
    _F(key="name", kind="name", required=True, doc="The smart host's name (a metric label)."),
    _F(key="host", kind="host", required=True, doc="The host name or IP address to connect to."),
    _F(key="port", kind="port", default=SMTP_PORT,
       doc=f"The TCP port; default {SMTP_PORT}, or {IMPLICIT_TLS_PORT} with tls: implicit."),
    _F(key="tls", kind="choice", choices=get_args(TlsMode), default="starttls",
       doc="starttls (required, the default), implicit (TLS from connect), or none (needs allow_insecure)."),
    _F(key="username", kind="string", doc="The SMTP AUTH user; needs a password."),
    _F(key="password", kind="secret", pairs_with="username",
       doc="The SMTP AUTH password: password_env, password_file, or password; needs a username."),
    _F(key="ca_file", kind="path", must_exist=True,
       doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
    _F(key="server_name", kind="host", doc="The name to verify the certificate against; default: host."),
    _F(key="verify", kind="boolean", default=True, doc="Verify the server's certificate."),
    _F(key="allow_insecure", kind="boolean", default=False,
       doc="Allow tls: none (mail and credentials in the clear)."),
    _F(key="timeout", kind="duration", positive=True, default=30.0, doc="The timeout of each network operation."),
    _F(key="helo", kind="host", doc="The name to send in EHLO; default: this machine's name."),
)

SECTIONS: Final[dict[str, tuple[FieldSpec, ...]]] = {
    "config": _CONFIG,
    "defaults": _SCHEDULE,
    "metrics": _METRICS,
    "mailbox": _MAILBOX,
    **{backend.name: backend.fields for backend in BACKENDS},
    "route": _ROUTE,
    "smart_host": _SMART_HOST,
    "connector": connector.FIELDS,
}


def _defaults(section: str) -> dict[str, Any]:
    """Return each key's default; an inherited key's is that of the ``defaults`` section."""
    return {spec.key: default_of(_SCHEDULE, spec.key) if spec.inherited else spec.default
            for spec in SECTIONS[section]}


DEFAULTS: Final[dict[str, dict[str, Any]]] = {name: _defaults(name) for name in SECTIONS}
"""The default of every key, by section and key: what the model's dataclasses declare as their defaults."""
