"""The mailbox backends a config can name, one row each; a mailbox has exactly one backend section.

Each backend's module (probe.config.ews) holds its section: the rows of its keys, its config type and its
cross-field rules. Adding a backend is that module, one row below and its type in ``BackendConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from probe.config import ews
from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section

BackendConfig: TypeAlias = ews.EwsConfig  # one of the backends' config types (a union as more are added)


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One mailbox backend's config section: its YAML key (the backend's name), rows and builder."""

    name: str
    doc: str
    fields: tuple[FieldSpec, ...]
    build: Callable[[Context, Section], BackendConfig]


BACKENDS: Final[tuple[Backend, ...]] = (
    Backend(name=ews.EwsConfig.name, doc=ews.DOC, fields=ews.FIELDS, build=ews.build),
)


def backend_named(name: str) -> Backend:
    """Return the backend whose section key is ``name``."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(f"no mailbox backend named {name!r}")
