"""The probe's configuration as every other module reads it: typed and immutable (DESIGN.md, "Config").

This is the contract. ``load_config`` (probe.config.loader) makes it from a YAML file and reports every
mistake with the file, line and field. Each default below is read from the field table
(probe.config.table), the one place defaults are declared; the YAML keys are the field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from probe.config.backends import BackendConfig
from probe.config.connector import ConnectorConfig
from probe.config.table import DEFAULTS, Cleanup, TlsMode, WatchMode
from probe.secret import Secret
from probe.vocabulary import MailboxFolder


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """Schedule defaults, in seconds, that each route may override."""

    interval: float = DEFAULTS["defaults"]["interval"]
    timeout: float = DEFAULTS["defaults"]["timeout"]
    jitter: float = DEFAULTS["defaults"]["jitter"]


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """What /metrics exports beyond the default series."""

    per_pair: tuple[str, ...] = DEFAULTS["metrics"]["per_pair"]  # families with optional pair labels, per pair


@dataclass(frozen=True, kw_only=True)
class MailboxConfig:
    """A probe mailbox that receives the probes of one or more routes."""

    name: str  # its key under ``mailboxes``
    address: str
    backend: BackendConfig  # exactly one backend section: ``ews:``, ``imap:`` or ``graph:``
    # neutral names (EWS, Graph); IMAP: mailbox names, with inbox and junkemail as neutral names
    folders: tuple[MailboxFolder | str, ...] = DEFAULTS["mailbox"]["folders"]
    cleanup: Cleanup = DEFAULTS["mailbox"]["cleanup"]
    watch: WatchMode = DEFAULTS["mailbox"]["watch"]
    poll_interval: float = DEFAULTS["mailbox"]["poll_interval"]


@dataclass(frozen=True, kw_only=True)
class SmartHostConfig:
    """One smart host of a route: the server the probe submits to directly."""

    name: str
    host: str
    port: int = DEFAULTS["smart_host"]["port"]  # with tls: implicit, the loader's default is 465
    tls: TlsMode = DEFAULTS["smart_host"]["tls"]
    username: str | None = DEFAULTS["smart_host"]["username"]
    password: Secret | None = DEFAULTS["smart_host"]["password"]
    ca_file: Path | None = DEFAULTS["smart_host"]["ca_file"]
    server_name: str | None = DEFAULTS["smart_host"]["server_name"]  # to verify the certificate against; or host
    verify: bool = DEFAULTS["smart_host"]["verify"]
    allow_insecure: bool = DEFAULTS["smart_host"]["allow_insecure"]  # required for tls: none
    timeout: float = DEFAULTS["smart_host"]["timeout"]
    helo: str | None = DEFAULTS["smart_host"]["helo"]


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """A direction of mail flow: a sender, a target mailbox, and the smart hosts to probe it through."""

    name: str
    sender: str
    mailbox: str
    smart_hosts: tuple[SmartHostConfig, ...]
    recipient: str | None = DEFAULTS["route"]["recipient"]  # None: the mailbox's address
    connector: ConnectorConfig | None = DEFAULTS["route"]["connector"]  # None: no connector probe
    bounces_mailbox: str | None = DEFAULTS["route"]["bounces_mailbox"]  # None: the mailbox of the sender's address
    interval: float = DEFAULTS["route"]["interval"]  # the loader fills these three from ``defaults``
    timeout: float = DEFAULTS["route"]["timeout"]
    jitter: float = DEFAULTS["route"]["jitter"]


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration of one probe instance."""

    signing_key_file: Path
    state_file: Path
    defaults: Defaults = field(default_factory=Defaults)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mailboxes: dict[str, MailboxConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    source: Path | None = None  # the file it was loaded from

    def recipient_of(self, route: RouteConfig) -> str:
        """Return the address a route's probes are sent to."""
        return route.recipient or self.mailboxes[route.mailbox].address

    def sender_mailbox(self, route: RouteConfig) -> MailboxConfig | None:
        """Return the configured mailbox whose address is the route's sender (a connector's ``submit: ews``)."""
        return next((m for m in self.mailboxes.values() if m.address.lower() == route.sender.lower()), None)

    def bounces_mailbox_of(self, route: RouteConfig) -> str | None:
        """Return the name of the mailbox a route's NDRs come back to: its ``bounces_mailbox``, else the mailbox
        whose address is the route's sender; None when there is none (its NDRs are not read)."""
        if route.bounces_mailbox is not None:
            return route.bounces_mailbox
        sender = route.sender.casefold()
        return next((name for name, box in self.mailboxes.items() if box.address.casefold() == sender), None)
