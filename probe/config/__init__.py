"""The probe's configuration: typed, immutable, loaded strictly from YAML (DESIGN.md, "Config").

Read ``model`` first: it is the contract every other module reads. ``table`` describes the YAML format
(every key, its kind, default and rules); ``loader`` enforces it; ``schema`` and ``redaction`` are views.
A mailbox backend's section is a module of its own (``ews``, ``imap``, ``graph``), listed in ``backends``.
"""

from __future__ import annotations

from probe.config.backends import BACKENDS, Backend, BackendConfig
from probe.config.connector import ConnectorConfig, SubmitWay
from probe.config.errors import ConfigError
from probe.config.ews import EwsAuth, EwsConfig
from probe.config.fields import (
    ADDRESS_PATTERN,
    ENV_NAME_PATTERN,
    HOST_PATTERN,
    HOSTNAME_PATTERN,
    MAX_CONFIG_BYTES,
    MAX_DURATION,
    NAME_PATTERN,
    SECTION_KINDS,
    URL_PATTERN,
    VERSION_PATTERN,
    FieldSpec,
    Kind,
)
from probe.config.graph import GraphConfig
from probe.config.imap import ImapAuth, ImapConfig, ImapTls
from probe.config.loader import LoadedConfig, load_config, load_config_with_warnings
from probe.config.model import Config, Defaults, MailboxConfig, MetricsConfig, RouteConfig, SmartHostConfig
from probe.config.redaction import redacted_config, redacted_view
from probe.config.schema import config_json_schema
from probe.config.table import SECTION_DOCS, SECTIONS, Cleanup, TlsMode, WatchMode

__all__ = [
    "ADDRESS_PATTERN", "BACKENDS", "ENV_NAME_PATTERN", "HOSTNAME_PATTERN", "HOST_PATTERN", "MAX_CONFIG_BYTES",
    "MAX_DURATION", "NAME_PATTERN", "SECTIONS", "SECTION_DOCS", "SECTION_KINDS", "URL_PATTERN", "VERSION_PATTERN",
    "Backend", "BackendConfig", "Cleanup", "Config", "ConfigError", "ConnectorConfig", "Defaults", "EwsAuth",
    "EwsConfig", "FieldSpec", "GraphConfig", "ImapAuth", "ImapConfig", "ImapTls", "Kind", "LoadedConfig",
    "MailboxConfig", "MetricsConfig", "RouteConfig", "SmartHostConfig", "SubmitWay", "TlsMode", "WatchMode",
    "config_json_schema", "load_config", "load_config_with_warnings", "redacted_config", "redacted_view",
]
