"""The effective config as plain data (JSON-ready), every secret shown as ``<secret>``: a view of the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from probe.config.model import Config, MailboxConfig
from probe.secret import REDACTED, Secret


def _fields(value: object) -> dict[str, Any]:
    """Return a dataclass's fields by name; a mailbox's backend under its YAML key (``ews``), as in the file."""
    plain = {item.name: redacted_view(getattr(value, item.name)) for item in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, MailboxConfig):
        plain = {(value.backend.name if key == "backend" else key): item for key, item in plain.items()}
    return plain


def redacted_view(value: object) -> Any:
    """Return config values (any part of a Config) as plain data, every ``Secret`` shown as ``<secret>``."""
    if isinstance(value, Secret):
        return REDACTED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
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
