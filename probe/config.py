"""The probe's configuration: typed, immutable, loaded strictly from YAML (DESIGN.md, "Config").

The dataclasses below are the contract every other module reads. The loader (``load_config``)
turns a YAML file into them and reports every mistake with the file, line and field.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import yaml

from probe.duration import DURATION_EXAMPLES, DURATION_PATTERN, DurationError, format_duration, parse_duration
from probe.secret import REDACTED, Secret

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


# ---------------------------------------------------------------------------------------------------------
# The field table: one description of the YAML format that the loader enforces and the JSON Schema shows.
# ---------------------------------------------------------------------------------------------------------

Kind = Literal[
    "string", "name", "host", "address", "url", "version", "port", "boolean", "duration", "path",
    "choice", "choice_list", "secret", "section", "section_map", "section_list",
]
SECTION_KINDS: Final = frozenset({"section", "section_map", "section_list"})

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_PATTERN: Final = rf"^{_LABEL}(?:\.{_LABEL})*\.?$"
ADDRESS_PATTERN: Final = rf"^[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]{{1,64}}@{_LABEL}(?:\.{_LABEL})*$"
URL_PATTERN: Final = r"^https?://[^\s/?#]+(?:[/?#]\S*)?$"
VERSION_PATTERN: Final = r"^\d+\.\d+(?:\.\d+){0,2}$"
ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
HOST_PATTERN: Final = r"^[A-Za-z0-9_.:-]+$"  # the schema's approximation of "host name or IP address"
MAX_DURATION: Final = 7 * 86400.0
MAX_CONFIG_BYTES: Final = 16 << 20
# libyaml composes large configs six times faster, but recurses in C: past ~50000 levels it crashes the
# process, so it is used only below this bound of the nesting depth (the Python parser handles the rest).
_FAST_LOADER: Final[type[Any] | None] = getattr(yaml, "CSafeLoader", None)
_FAST_LOADER_MAX_DEPTH: Final = 10000


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One key of one section of the YAML format."""

    key: str
    kind: Kind
    doc: str
    required: bool = False
    choices: tuple[str, ...] = ()
    section: str | None = None  # the section a nested kind holds
    positive: bool = False  # durations: greater than 0 (otherwise 0 is allowed)
    must_exist: bool = False  # paths: the file must exist and be readable
    noun: str = ""  # what a nested list or map holds, for "at least one route"
    pairs_with: str | None = None  # secrets: the key that must be given with it (and it with that key)
    inherited: bool = False  # the default comes from ``defaults``, not from the dataclass

    def yaml_keys(self) -> tuple[str, ...]:
        """Return the YAML keys this field accepts (a secret has three ways to be given)."""
        if self.kind == "secret":
            return (f"{self.key}_env", f"{self.key}_file", self.key)
        return (self.key,)


_F = FieldSpec
_TIMING = "interval, timeout and jitter"

SECTION_DOCS: Final[dict[str, str]] = {
    "config": "The configuration of one mailflow-probe instance.",
    "defaults": f"Schedule defaults ({_TIMING}) that each route may override.",
    "mailbox": "A probe mailbox that receives the probes of one or more routes.",
    "ews": "How to reach the mailbox over Exchange Web Services.",
    "route": "A direction of mail flow: a sender, a target mailbox, and the smart hosts to probe it through.",
    "smart_host": "One smart host of a route: the server the probe submits to directly.",
}

SECTIONS: Final[dict[str, tuple[FieldSpec, ...]]] = {
    "config": (
        _F(key="signing_key_file", kind="path", required=True,
           doc="The key that signs every probe's tag; created (mode 0600) if missing."),
        _F(key="state_file", kind="path", required=True, doc="The SQLite file of probes in flight and results."),
        _F(key="defaults", kind="section", section="defaults", doc=SECTION_DOCS["defaults"]),
        _F(key="mailboxes", kind="section_map", section="mailbox", required=True, noun="mailbox",
           doc="The probe mailboxes, by name."),
        _F(key="routes", kind="section_list", section="route", required=True, noun="route",
           doc="The directions of mail flow to probe."),
    ),
    "defaults": (
        _F(key="interval", kind="duration", positive=True, doc="How often each smart host is probed."),
        _F(key="timeout", kind="duration", positive=True,
           doc="How long a probe may take to arrive before it is declared lost."),
        _F(key="jitter", kind="duration", doc="A random delay of up to this much, less than the interval."),
    ),
    "mailbox": (
        _F(key="address", kind="address", required=True, doc="The mailbox's email address."),
        _F(key="ews", kind="section", section="ews", required=True, doc=SECTION_DOCS["ews"]),
        _F(key="folders", kind="choice_list", choices=("inbox", "junkemail"),
           doc="The folders searched for probes."),
        _F(key="cleanup", kind="choice", choices=("move_to_deleted_items", "soft_delete", "hard_delete", "keep"),
           doc="What is done with a probe once found (only probes whose tag verifies are ever touched)."),
        _F(key="watch", kind="choice", choices=("streaming", "polling"),
           doc="Streaming notifications, or polling only."),
        _F(key="poll_interval", kind="duration", positive=True, doc="How often the mailbox is searched."),
    ),
    "ews": (
        _F(key="url", kind="url", required=True, doc="The EWS endpoint, e.g. https://mail.example.com/EWS/Exchange.asmx."),
        _F(key="username", kind="string", required=True, doc="The account, e.g. DOMAIN\\svc-mailflow."),
        _F(key="password", kind="secret", required=True,
           doc="The account's password: password_env (an environment variable), password_file, or password."),
        _F(key="auth", kind="choice", choices=("ntlm", "basic"), doc="The HTTP authentication scheme."),
        _F(key="ca_file", kind="path", must_exist=True,
           doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
        _F(key="verify", kind="boolean", doc="Verify the server's certificate."),
        _F(key="version", kind="version", doc='The server build, e.g. "15.2.1544.4"; given, the guess is skipped.'),
        _F(key="timeout", kind="duration", positive=True, doc="The timeout of each EWS request."),
    ),
    "route": (
        _F(key="name", kind="name", required=True, doc="The route's name (a metric label)."),
        _F(key="sender", kind="address", required=True, doc="The envelope and header sender of the probes."),
        _F(key="mailbox", kind="name", required=True, doc="The name of the mailbox (under mailboxes) probes go to."),
        _F(key="recipient", kind="address", doc="The recipient address; default: the mailbox's address."),
        _F(key="smart_hosts", kind="section_list", section="smart_host", required=True, noun="smart host",
           doc="The smart hosts to probe the route through, each on its own."),
        _F(key="interval", kind="duration", positive=True, inherited=True,
           doc="How often each smart host is probed; default: defaults.interval."),
        _F(key="timeout", kind="duration", positive=True, inherited=True,
           doc="How long a probe may take to arrive; default: defaults.timeout."),
        _F(key="jitter", kind="duration", inherited=True,
           doc="A random delay of up to this much; default: defaults.jitter."),
    ),
    "smart_host": (
        _F(key="name", kind="name", required=True, doc="The smart host's name (a metric label)."),
        _F(key="host", kind="host", required=True, doc="The host name or IP address to connect to."),
        _F(key="port", kind="port", doc="The TCP port; default 25, or 465 with tls: implicit."),
        _F(key="tls", kind="choice", choices=("starttls", "implicit", "none"),
           doc="starttls (required, the default), implicit (TLS from connect), or none (needs allow_insecure)."),
        _F(key="username", kind="string", doc="The SMTP AUTH user; needs a password."),
        _F(key="password", kind="secret", pairs_with="username",
           doc="The SMTP AUTH password: password_env, password_file, or password; needs a username."),
        _F(key="ca_file", kind="path", must_exist=True,
           doc="PEM file of CA certificates to trust (relative paths are relative to this file)."),
        _F(key="server_name", kind="host", doc="The name to verify the certificate against; default: host."),
        _F(key="verify", kind="boolean", doc="Verify the server's certificate."),
        _F(key="allow_insecure", kind="boolean", doc="Allow tls: none (mail and credentials in the clear)."),
        _F(key="timeout", kind="duration", positive=True, doc="The timeout of each network operation."),
        _F(key="helo", kind="host", doc="The name to send in EHLO; default: this machine's name."),
    ),
}

_SECTION_TYPES: Final[dict[str, type[Any]]] = {
    "config": Config, "defaults": Defaults, "mailbox": MailboxConfig, "ews": EwsConfig,
    "route": RouteConfig, "smart_host": SmartHostConfig,
}


# ---------------------------------------------------------------------------------------------------------
# Reading: YAML nodes (which keep their line numbers) checked against the field table.
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedConfig:
    """A configuration and the warnings its loading raised (each ``FILE:LINE: FIELD: message``)."""

    config: Config
    warnings: tuple[str, ...]


@dataclass
class _Item:
    value: Any
    node: yaml.Node  # the value's node
    key_node: yaml.Node
    key: str  # the YAML key as written (``password_env`` for a secret given that way)


@dataclass
class _Section:
    name: str  # the section's name in SECTIONS
    path: str
    node: yaml.MappingNode
    items: dict[str, _Item] = field(default_factory=dict)

    def at(self, key: str) -> str:
        """Return the field path of ``key`` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def node_of(self, key: str) -> yaml.Node:
        """Return the node of ``key``'s value, or the section's own node when it is absent."""
        item = self.items.get(key)
        return item.node if item is not None else self.node

    def scalars(self) -> dict[str, Any]:
        """Return the present non-section values, ready as dataclass keyword arguments."""
        specs = {spec.key: spec for spec in SECTIONS[self.name]}
        return {key: item.value for key, item in self.items.items() if specs[key].kind not in SECTION_KINDS}


@dataclass
class _Context:
    file: Path
    environ: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)
    constructor: yaml.constructor.SafeConstructor = field(default_factory=yaml.constructor.SafeConstructor)

    @property
    def base(self) -> Path:
        return self.file.parent

    def error(self, node: yaml.Node | None, path: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, field_path=path or None)

    def warn(self, node: yaml.Node, path: str, message: str) -> None:
        self.warnings.append(self.error(node, path, message).describe())


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    """Return how an offending value is quoted in an error."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value)[:60], ensure_ascii=False)


def _got(ctx: _Context, node: yaml.Node) -> str:
    """Return ``node`` as quoted in an error: its value, or what kind of thing it is."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _show(_scalar(ctx, node, ""))


def _kind_of(node: yaml.Node, value: object) -> str:
    """Return what kind of thing a node is, without its value (for secrets)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(type(value), "a value of another type")


def _scalar(ctx: _Context, node: yaml.Node, path: str) -> object:
    """Return the Python value of a scalar node (``str``, ``int``, ``float``, ``bool``, ``None``, ...)."""
    try:
        return ctx.constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        problem = getattr(exc, "problem", None) or "not a valid value"
        raise ctx.error(node, path, f"invalid YAML value: {problem}") from None


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


def _text(ctx: _Context, node: yaml.Node, path: str, expected: str) -> str:
    """Return a non-empty string value, or raise naming what was ``expected``."""
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or not isinstance(value, str):
        raise ctx.error(node, path, f"expected {expected}, got {_got(ctx, node)}")
    if not value.strip():
        raise ctx.error(node, path, f"expected {expected}, got an empty string")
    return value


def _matching(pattern: str, expected: str) -> Callable[[_Context, FieldSpec, yaml.Node, str], str]:
    compiled = re.compile(pattern)

    def convert(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
        value = _text(ctx, node, path, expected)
        if not compiled.fullmatch(value):
            raise ctx.error(node, path, f"expected {expected}, got {_show(value)}")
        return value

    return convert


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return re.fullmatch(HOSTNAME_PATTERN, value) is not None and len(value) <= 253
    return True


def _convert_host(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    expected = "a host name or IP address"
    value = _text(ctx, node, path, expected)
    if not _is_host(value):
        raise ctx.error(node, path, f"expected {expected}, got {_show(value)}")
    return value


def _convert_url(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    expected = "an http:// or https:// URL"
    value = _text(ctx, node, path, expected)
    if not re.fullmatch(URL_PATTERN, value) or not _is_host(urlsplit(value).hostname or ""):
        raise ctx.error(node, path, f"expected {expected}, got {_show(value)}")
    return value


def _convert_port(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> int:
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ctx.error(node, path, f"expected an integer 1-65535, got {_got(ctx, node)}")
    return value


def _convert_boolean(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> bool:
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        raise ctx.error(node, path, f"expected true or false, got {_got(ctx, node)}")
    return value


def _convert_duration(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> float:
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    seconds: float | None = None
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except DurationError:
            seconds = None
    elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        seconds = float(value)
    if seconds is None or not math.isfinite(seconds):
        raise ctx.error(node, path, f"expected a duration like {DURATION_EXAMPLES}, got {_got(ctx, node)}")
    if spec.positive and seconds <= 0:
        raise ctx.error(node, path, f"must be greater than 0, got {_got(ctx, node)}")
    if seconds > MAX_DURATION:
        raise ctx.error(node, path, f"must be at most {format_duration(MAX_DURATION)}, got {_got(ctx, node)}")
    return seconds


def _readable_file(ctx: _Context, node: yaml.Node, path: str, shown: Path) -> None:
    """Raise unless ``shown`` is a regular file this process can read."""
    try:
        mode = shown.stat().st_mode
    except FileNotFoundError:
        raise ctx.error(node, path, f"file not found: {shown}") from None
    except OSError as exc:
        raise ctx.error(node, path, f"cannot read {shown}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ctx.error(node, path, f"{shown} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ctx.error(node, path, f"{shown} is not a regular file")
    if not os.access(shown, os.R_OK):
        raise ctx.error(node, path, f"cannot read {shown}: permission denied")


def _convert_path(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> Path:
    value = _text(ctx, node, path, "a file path")
    if "\x00" in value:
        raise ctx.error(node, path, "expected a file path, got a string with a NUL character")
    shown = ctx.base / Path(value).expanduser()
    if spec.must_exist:
        _readable_file(ctx, node, path, shown)
    return shown.absolute()


def _convert_choice(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    options = ", ".join(spec.choices)
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or value not in spec.choices:
        hint = _did_you_mean(value, spec.choices) if isinstance(value, str) else ""
        raise ctx.error(node, path, f"expected one of {options}, got {_got(ctx, node)}{hint}")
    return value


def _convert_choice_list(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> tuple[str, ...]:
    options = ", ".join(spec.choices)
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, path, f"expected a list of {options}, got {_got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must list at least one of {options}")
    chosen: list[str] = []
    for index, item in enumerate(node.value):
        value = _convert_choice(ctx, spec, item, f"{path}[{index}]")
        if value in chosen:
            raise ctx.error(item, f"{path}[{index}]", f"{_show(value)} is listed twice")
        chosen.append(value)
    return tuple(chosen)


_CONVERTERS: Final[dict[str, Callable[[_Context, FieldSpec, yaml.Node, str], Any]]] = {
    "string": lambda ctx, spec, node, path: _text(ctx, node, path, "a string"),
    "name": _matching(NAME_PATTERN, 'a name of letters, digits, ".", "_" and "-" (at most 64)'),
    "address": _matching(ADDRESS_PATTERN, "an email address like name@example.com"),
    "version": _matching(VERSION_PATTERN, 'an Exchange build number in quotes, like "15.2.1544.4"'),
    "host": _convert_host,
    "url": _convert_url,
    "port": _convert_port,
    "boolean": _convert_boolean,
    "duration": _convert_duration,
    "path": _convert_path,
    "choice": _convert_choice,
    "choice_list": _convert_choice_list,
}


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _key(ctx: _Context, key_node: yaml.Node, path: str) -> str:
    value = _scalar(ctx, key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
    if not isinstance(value, str):
        raise ctx.error(key_node, path, f"expected a text key, got {_got(ctx, key_node)}")
    return value


def _unknown_key(key: str, valid: list[str]) -> str:
    return "unknown key" + (_did_you_mean(key, valid) or f"; expected one of: {', '.join(valid)}")


def _secret_options(spec: FieldSpec) -> str:
    first, second, third = spec.yaml_keys()
    return f"{first}, {second} or {third}"


def _read_env_secret(ctx: _Context, node: yaml.Node, path: str) -> Secret:
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not re.fullmatch(ENV_NAME_PATTERN, value):
        raise ctx.error(node, path, "expected the name of an environment variable (letters, digits and _)")
    secret = ctx.environ.get(value)
    if secret is None:
        raise ctx.error(node, path, f"environment variable {value} is not set")
    if not secret:
        raise ctx.error(node, path, f"environment variable {value} is empty")
    return Secret(secret)


def _read_file_secret(ctx: _Context, node: yaml.Node, path: str) -> Secret:
    shown = ctx.base / Path(_text(ctx, node, path, "a file path")).expanduser()
    _readable_file(ctx, node, path, shown)
    try:
        text = shown.read_bytes()[: MAX_CONFIG_BYTES].decode("utf-8")
    except OSError as exc:
        raise ctx.error(node, path, f"cannot read {shown}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ctx.error(node, path, f"{shown} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ctx.error(node, path, f"{shown} is empty")
    if shown.stat().st_mode & stat.S_IROTH:
        ctx.warn(node, path, f"{shown} can be read by every user of this machine; chmod 600 it")
    return Secret(secret)


def _read_inline_secret(ctx: _Context, node: yaml.Node, path: str) -> Secret:
    value = _scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value:
        raise ctx.error(node, path, f"expected a string, got {_kind_of(node, value)}")
    ctx.warn(node, path, "a password written in the config file; prefer password_env or password_file")
    return Secret(value)


def _read_secret(ctx: _Context, section: _Section, spec: FieldSpec, key: str,
                 nodes: tuple[yaml.Node, yaml.Node]) -> None:
    key_node, node = nodes
    path = section.at(key)
    given = section.items.get(spec.key)
    if given is not None:
        raise ctx.error(key_node, path, f"{given.key} and {key} are both given; give only one of "
                        f"{_secret_options(spec)}")
    if key.endswith("_env"):
        secret = _read_env_secret(ctx, node, path)
    elif key.endswith("_file"):
        secret = _read_file_secret(ctx, node, path)
    else:
        secret = _read_inline_secret(ctx, node, path)
    section.items[spec.key] = _Item(secret, node, key_node, key)


def _read_list(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> list[_Section]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, path, f"expected a list of {spec.noun}s, got {_got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must have at least one {spec.noun}")
    assert spec.section is not None
    return [_read_section(ctx, item, spec.section, f"{path}[{index}]") for index, item in enumerate(node.value)]


def _read_map(ctx: _Context, spec: FieldSpec, node: yaml.Node, path: str) -> dict[str, _Section]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, path, f"expected a mapping of {spec.noun} names to {spec.noun}es, "
                        f"got {_got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must have at least one {spec.noun}")
    assert spec.section is not None
    name_of = _CONVERTERS["name"]
    sections: dict[str, _Section] = {}
    for key_node, value_node in node.value:
        name = name_of(ctx, spec, key_node, f"{path}.{_key(ctx, key_node, path)}")
        sections[name] = _read_section(ctx, value_node, spec.section, f"{path}.{name}")
    return sections


def _read_value(ctx: _Context, section: _Section, spec: FieldSpec, key: str,
                nodes: tuple[yaml.Node, yaml.Node]) -> None:
    key_node, node = nodes
    if _is_null(node) and not spec.required:
        return
    if spec.kind == "secret":
        _read_secret(ctx, section, spec, key, nodes)
        return
    path = section.at(key)
    value: Any
    if spec.kind == "section":
        assert spec.section is not None
        value = _read_section(ctx, node, spec.section, path)
    elif spec.kind == "section_list":
        value = _read_list(ctx, spec, node, path)
    elif spec.kind == "section_map":
        value = _read_map(ctx, spec, node, path)
    else:
        value = _CONVERTERS[spec.kind](ctx, spec, node, path)
    section.items[key] = _Item(value, node, key_node, key)


def _check_complete(ctx: _Context, section: _Section) -> None:
    """Raise for a missing required key, or a secret without its partner (or the partner without it)."""
    for spec in SECTIONS[section.name]:
        if spec.required and spec.key not in section.items:
            first, *others = spec.yaml_keys()
            also = " (or " + " or ".join(f'"{other}"' for other in others) + ")" if others else ""
            raise ctx.error(section.node, section.path, f'missing required key "{first}"{also}')
        partner = spec.pairs_with
        if partner is None:
            continue
        secret, other = section.items.get(spec.key), section.items.get(partner)
        if other is not None and secret is None:
            raise ctx.error(other.key_node, section.at(partner),
                            f"a {partner} needs a {spec.key}: give {_secret_options(spec)}")
        if secret is not None and other is None:
            raise ctx.error(secret.key_node, section.at(secret.key), f"a {spec.key} needs a {partner}")


def _read_section(ctx: _Context, node: yaml.Node, name: str, path: str) -> _Section:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, path, f"expected a mapping, got {_got(ctx, node)}")
    by_key = {key: spec for spec in SECTIONS[name] for key in spec.yaml_keys()}
    section = _Section(name, path, node)
    for key_node, value_node in node.value:
        key = _key(ctx, key_node, path)
        spec = by_key.get(key)
        if spec is None:
            raise ctx.error(key_node, _join(path, key), _unknown_key(key, list(by_key)))
        _read_value(ctx, section, spec, key, (key_node, value_node))
    _check_complete(ctx, section)
    return section


def _read_text(file: Path) -> str:
    """Return the config file's text, or raise a ConfigError that says why it cannot be read."""
    try:
        mode = file.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("is a directory, not a config file", file=file)
        if not stat.S_ISREG(mode):
            raise ConfigError("is not a regular file", file=file)
        with file.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except PermissionError:
        raise ConfigError("cannot read: permission denied", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB; is this the config file?", file=file)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text (is this a binary file?)", file=file, line=line) from None


def _nesting_bound(text: str) -> int:
    """Return an upper bound of the document's nesting depth (flow brackets plus block indentation)."""
    brackets = text.count("[") + text.count("{")
    prefix = max((len(line) - len(line.lstrip(" \t-?:")) for line in text.splitlines()), default=0)
    return brackets + prefix


def _compose_exactly(ctx: _Context, text: str) -> yaml.Node | None:
    """Compose with the pure-Python parser, whose error messages are the same on every machine."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"invalid YAML: {what}", file=ctx.file,
                          line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"not a YAML text file: unacceptable character #x{exc.character:04x}",
                          file=ctx.file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=ctx.file) from None
    return node


def _compose(ctx: _Context, text: str) -> yaml.Node:
    """Return the YAML document's node tree, or raise a ConfigError naming the line of the syntax error."""
    node: yaml.Node | None
    if _FAST_LOADER is not None and _nesting_bound(text) < _FAST_LOADER_MAX_DEPTH:
        try:
            node = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            node = _compose_exactly(ctx, text)
    else:
        node = _compose_exactly(ctx, text)
    if node is None:
        raise ConfigError("the file is empty; expected a mapping with signing_key_file, state_file, "
                          "mailboxes and routes", file=ctx.file)
    return node


def _prepare(ctx: _Context, node: yaml.Node, path: str, seen: set[int]) -> None:
    """Reject duplicate keys and apply YAML merge keys (``<<``), once per node."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _prepare(ctx, item, f"{path}[{index}]", seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first_lines: dict[object, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            marker = (key_node.tag, key_node.value)
            if marker in first_lines:
                raise ctx.error(key_node, _join(path, str(key_node.value)),
                                f"duplicate key; the first is at line {first_lines[marker]}")
            first_lines[marker] = key_node.start_mark.line + 1
    try:
        ctx.constructor.flatten_mapping(node)
    except yaml.MarkedYAMLError as exc:
        raise ctx.error(node, path, f"invalid YAML merge: {exc.problem}") from None
    latest: dict[object, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:  # a key given after a merge overrides the merged one
        latest[(key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)] = (
            key_node, value_node)
    node.value = list(latest.values())
    for key_node, value_node in node.value:
        _prepare(ctx, value_node, _join(path, str(key_node.value)), seen)


# ---------------------------------------------------------------------------------------------------------
# Building: the dataclasses, and the rules that span fields.
# ---------------------------------------------------------------------------------------------------------

def _check_jitter(ctx: _Context, section: _Section, interval: float, jitter: float) -> None:
    if jitter < interval:
        return
    key = "jitter" if "jitter" in section.items else "interval"
    raise ctx.error(section.node_of(key), section.at(key),
                    f"jitter ({format_duration(jitter)}) must be less than interval ({format_duration(interval)})")


def _build_defaults(ctx: _Context, section: _Section | None) -> Defaults:
    if section is None:
        return Defaults()
    defaults = Defaults(**section.scalars())
    _check_jitter(ctx, section, defaults.interval, defaults.jitter)
    return defaults


def _warn_unverified(ctx: _Context, section: _Section) -> None:
    item = section.items.get("verify")
    if item is not None and item.value is False:
        ctx.warn(item.node, section.at("verify"), "certificate verification is off")


def _build_ews(ctx: _Context, section: _Section) -> EwsConfig:
    _warn_unverified(ctx, section)
    ews = EwsConfig(**section.scalars())
    if ews.url.lower().startswith("http://"):
        ctx.warn(section.node_of("url"), section.at("url"), "http:// sends the password without TLS")
    return ews


def _build_mailbox(ctx: _Context, name: str, section: _Section) -> MailboxConfig:
    ews = _build_ews(ctx, section.items["ews"].value)
    return MailboxConfig(name=name, ews=ews, **section.scalars())


def _build_smart_host(ctx: _Context, section: _Section) -> SmartHostConfig:
    values = section.scalars()
    if values.get("tls") == "implicit":
        values.setdefault("port", 465)
    if values.get("tls") == "none" and not values.get("allow_insecure", False):
        raise ctx.error(section.node_of("tls"), section.at("tls"),
                        '"none" sends mail and credentials unencrypted; set allow_insecure: true to allow it')
    _warn_unverified(ctx, section)
    return SmartHostConfig(**values)


def _check_unique(ctx: _Context, sections: list[_Section], what: str) -> None:
    first: dict[str, int] = {}
    for section in sections:
        item = section.items["name"]
        if item.value in first:
            raise ctx.error(item.node, section.at("name"),
                            f"duplicate {what} name {_show(item.value)}; the first is at line {first[item.value]}")
        first[item.value] = item.node.start_mark.line + 1


def _check_mailbox_known(ctx: _Context, section: _Section, mailboxes: Mapping[str, MailboxConfig]) -> None:
    name = section.items["mailbox"].value
    if name not in mailboxes:
        hint = _did_you_mean(name, list(mailboxes)) or f"; the mailboxes are: {', '.join(mailboxes)}"
        raise ctx.error(section.node_of("mailbox"), section.at("mailbox"), f"no mailbox named {_show(name)}{hint}")


def _build_route(ctx: _Context, section: _Section, defaults: Defaults,
                 mailboxes: Mapping[str, MailboxConfig]) -> RouteConfig:
    values = section.scalars()
    for key in ("interval", "timeout", "jitter"):
        values.setdefault(key, getattr(defaults, key))
    _check_jitter(ctx, section, values["interval"], values["jitter"])
    _check_mailbox_known(ctx, section, mailboxes)
    host_sections: list[_Section] = section.items["smart_hosts"].value
    _check_unique(ctx, host_sections, "smart host")
    hosts = tuple(_build_smart_host(ctx, host) for host in host_sections)
    return RouteConfig(smart_hosts=hosts, **values)


def _warn_unused(ctx: _Context, top: _Section, routes: tuple[RouteConfig, ...]) -> None:
    used = {route.mailbox for route in routes}
    mailbox_sections: dict[str, _Section] = top.items["mailboxes"].value
    for name, section in mailbox_sections.items():
        if name not in used:
            ctx.warn(section.node, section.path, "no route sends to this mailbox")


def _build_config(ctx: _Context, top: _Section) -> Config:
    defaults_item = top.items.get("defaults")
    defaults = _build_defaults(ctx, defaults_item.value if defaults_item else None)
    mailbox_sections: dict[str, _Section] = top.items["mailboxes"].value
    mailboxes = {name: _build_mailbox(ctx, name, section) for name, section in mailbox_sections.items()}
    route_sections: list[_Section] = top.items["routes"].value
    _check_unique(ctx, route_sections, "route")
    routes = tuple(_build_route(ctx, section, defaults, mailboxes) for section in route_sections)
    _warn_unused(ctx, top, routes)
    return Config(defaults=defaults, mailboxes=mailboxes, routes=routes, source=ctx.file, **top.scalars())


def load_config_with_warnings(path: Path, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and check a config file; return it with its warnings, or raise ConfigError."""
    ctx = _Context(file=Path(path), environ=os.environ if environ is None else environ)
    text = _read_text(ctx.file)
    try:
        root = _compose(ctx, text)
        _prepare(ctx, root, "", set())
        top = _read_section(ctx, root, "config", "")
        config = _build_config(ctx, top)
    except RecursionError:
        raise ConfigError("nested too deeply", file=ctx.file) from None
    return LoadedConfig(config=config, warnings=tuple(ctx.warnings))


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and check a config file, or raise ConfigError naming the file, line and field."""
    return load_config_with_warnings(path, environ=environ).config


# ---------------------------------------------------------------------------------------------------------
# Views: the effective config with secrets hidden, and the JSON Schema of the YAML format.
# ---------------------------------------------------------------------------------------------------------

def redacted_view(value: object) -> Any:
    """Return config values (any part of a Config) as plain data, every ``Secret`` shown as ``<secret>``."""
    if isinstance(value, Secret):
        return REDACTED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: redacted_view(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): redacted_view(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redacted_view(item) for item in value]
    if isinstance(value, Enum | Path):
        return str(value)
    return value


def redacted_config(config: Config) -> dict[str, Any]:
    """Return the effective config as plain data (JSON-ready), every secret shown as ``<secret>``."""
    plain: dict[str, Any] = redacted_view(config)
    return plain


def _schema_default(section: str, spec: FieldSpec) -> Any:
    """Return the default an editor should show for a field (taken from the dataclass), if it has one."""
    if spec.inherited or spec.kind in SECTION_KINDS or spec.kind == "secret":
        return None
    fields = {item.name: item for item in dataclasses.fields(_SECTION_TYPES[section])}
    default = fields[spec.key].default if spec.key in fields else None
    if default is dataclasses.MISSING or default is None:
        return None
    if spec.kind == "duration":
        return format_duration(float(default))
    return list(default) if isinstance(default, tuple) else default


def _duration_schema(positive: bool) -> dict[str, Any]:
    number: dict[str, Any] = {"type": "number", "exclusiveMinimum" if positive else "minimum": 0}
    return {"anyOf": [number, {"type": "string", "pattern": DURATION_PATTERN}]}


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    ref = {"$ref": f"#/$defs/{spec.section}"}
    by_kind: dict[str, dict[str, Any]] = {
        "string": {"type": "string", "minLength": 1},
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "host": {"type": "string", "pattern": HOST_PATTERN},
        "address": {"type": "string", "pattern": ADDRESS_PATTERN},
        "url": {"type": "string", "pattern": URL_PATTERN},
        "version": {"type": "string", "pattern": VERSION_PATTERN},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "boolean": {"type": "boolean"},
        "duration": _duration_schema(spec.positive),
        "path": {"type": "string", "minLength": 1},
        "choice": {"enum": list(spec.choices)},
        "choice_list": {"type": "array", "items": {"enum": list(spec.choices)}, "minItems": 1,
                        "uniqueItems": True},
        "section": ref,
        "section_list": {"type": "array", "items": ref, "minItems": 1},
        "section_map": {"type": "object", "additionalProperties": ref, "minProperties": 1,
                        "propertyNames": {"pattern": NAME_PATTERN}},
    }
    return by_kind[spec.kind]


def _secret_schemas(spec: FieldSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the three properties of a secret and the rules that tie them together."""
    env_key, file_key, inline_key = spec.yaml_keys()
    properties = {
        env_key: {"type": "string", "pattern": ENV_NAME_PATTERN,
                  "description": f"The environment variable that holds the {spec.key}."},
        file_key: {"type": "string", "minLength": 1,
                   "description": f"The file that holds the {spec.key} (relative paths: to this file)."},
        inline_key: {"type": "string", "minLength": 1,
                     "description": f"The {spec.key} itself (warned: prefer {env_key} or {file_key})."},
    }
    keys = spec.yaml_keys()
    rules: list[dict[str, Any]] = [{"not": {"required": [a, b]}} for i, a in enumerate(keys) for b in keys[i + 1:]]
    one_of_them = {"anyOf": [{"required": [key]} for key in keys]}
    if spec.required:
        rules.append(one_of_them)
    if spec.pairs_with:
        rules.append({"if": one_of_them, "then": {"required": [spec.pairs_with]}})
        rules.append({"if": {"required": [spec.pairs_with]}, "then": one_of_them})
    return properties, rules


def _section_schema(section: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    required: list[str] = []
    for spec in SECTIONS[section]:
        if spec.kind == "secret":
            secret_properties, secret_rules = _secret_schemas(spec)
            properties.update(secret_properties)
            rules.extend(secret_rules)
            continue
        schema = {"description": spec.doc, **_field_schema(spec)}
        default = _schema_default(section, spec)
        if default is not None:
            schema["default"] = default
        properties[spec.key] = schema
        if spec.required:
            required.append(spec.key)
    if section == "smart_host":
        rules.append({"if": {"required": ["tls"], "properties": {"tls": {"const": "none"}}},
                      "then": {"required": ["allow_insecure"], "properties": {"allow_insecure": {"const": True}}}})
    result: dict[str, Any] = {"type": "object", "description": SECTION_DOCS[section], "properties": properties,
                              "additionalProperties": False}
    if required:
        result["required"] = required
    if rules:
        result["allOf"] = rules
    return result


def config_json_schema() -> dict[str, Any]:
    """Return a JSON Schema (draft 2020-12) of the YAML config, for editors."""
    root = _section_schema("config")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mailflow-probe configuration",
        **root,
        "$defs": {name: _section_schema(name) for name in SECTIONS if name != "config"},
    }
