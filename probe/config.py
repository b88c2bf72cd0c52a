"""The probe's configuration: typed, immutable, loaded strictly from YAML (DESIGN.md, "Config").

The dataclasses below are the contract every other module reads. The loader (``load_config``)
turns a YAML file into them and reports every mistake with the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from probe.secret import Secret

TlsMode = Literal["starttls", "implicit", "none"]
EwsAuth = Literal["ntlm", "basic"]
Cleanup = Literal["move_to_deleted_items", "soft_delete", "hard_delete", "keep"]
WatchMode = Literal["streaming", "polling"]


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """Schedule defaults, in seconds, that each route may override."""

    interval: float = 60.0
    timeout: float = 300.0
    jitter: float = 10.0


@dataclass(frozen=True, kw_only=True)
class EwsConfig:
    """How to reach one mailbox over Exchange Web Services."""

    url: str
    username: str
    password: Secret
    auth: EwsAuth = "ntlm"
    ca_file: Path | None = None
    verify: bool = True
    version: str | None = None  # e.g. "15.2.1544.4"; given, the version guess is skipped
    timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class MailboxConfig:
    """A probe mailbox that receives the probes of one or more routes."""

    name: str
    address: str
    ews: EwsConfig
    folders: tuple[str, ...] = ("inbox", "junkemail")
    cleanup: Cleanup = "move_to_deleted_items"
    watch: WatchMode = "streaming"
    poll_interval: float = 10.0


@dataclass(frozen=True, kw_only=True)
class SmartHostConfig:
    """One smart host of a route: the server the probe submits to directly."""

    name: str
    host: str
    port: int = 25
    tls: TlsMode = "starttls"
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    server_name: str | None = None  # the name to verify the certificate against; default ``host``
    verify: bool = True
    allow_insecure: bool = False  # required for tls: none
    timeout: float = 30.0
    helo: str | None = None


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """A direction of mail flow: a sender, a target mailbox, and the smart hosts to probe it through."""

    name: str
    sender: str
    mailbox: str
    smart_hosts: tuple[SmartHostConfig, ...]
    recipient: str | None = None  # default: the mailbox's address
    interval: float = 60.0
    timeout: float = 300.0
    jitter: float = 10.0


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration of one probe instance."""

    signing_key_file: Path
    state_file: Path
    defaults: Defaults = field(default_factory=Defaults)
    mailboxes: dict[str, MailboxConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    source: Path | None = None

    def recipient_of(self, route: RouteConfig) -> str:
        """Return the address a route's probes are sent to."""
        return route.recipient or self.mailboxes[route.mailbox].address


class ConfigError(Exception):
    """A configuration mistake, with the file, line and field it is at."""

    def __init__(self, message: str, *, file: Path | None = None, line: int | None = None,
                 field_path: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field_path = field_path
        super().__init__(self.describe())

    def describe(self) -> str:
        """Return ``FILE:LINE: FIELD: message`` with whatever parts are known."""
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        what = f"{self.field_path}: " if self.field_path else ""
        return f"{where}{what}{self.message}"
