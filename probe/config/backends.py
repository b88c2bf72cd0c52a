"""The mailbox backends a config can name, one row each; a mailbox has exactly one backend section.

Each backend's module (probe.config.ews, .imap, .graph) holds its section: the rows of its keys, its
config type and its cross-field rules. Adding a backend is that module, one row below and its type in
``BackendConfig``. A row may also say how the mailbox's ``folders`` are read for it (EWS and Graph:
the neutral names; IMAP: mailbox names) and which ``cleanup`` modes it cannot do, and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from probe.config import ews, graph, imap
from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section
from probe.vocabulary import SEARCHED_FOLDERS

BackendConfig: TypeAlias = ews.EwsConfig | imap.ImapConfig | graph.GraphConfig  # one backend's config type

NEUTRAL_FOLDERS: Final = FieldSpec(
    key="folders", kind="choice_list", choices=tuple(SEARCHED_FOLDERS), default=SEARCHED_FOLDERS,
    doc="The folders searched for probes, by their neutral names.")
"""How a mailbox's ``folders`` are read unless its backend says otherwise: the neutral names only."""


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One mailbox backend's config section: its YAML key (the backend's name), rows and builder."""

    name: str
    doc: str
    fields: tuple[FieldSpec, ...]
    build: Callable[[Context, Section], BackendConfig]
    folders: FieldSpec = NEUTRAL_FOLDERS  # how the mailbox's ``folders`` list is read for this backend
    refused_cleanups: Mapping[str, str] = field(default_factory=dict)  # cleanup mode -> why not, what instead


BACKENDS: Final[tuple[Backend, ...]] = (
    Backend(name=ews.EwsConfig.name, doc=ews.DOC, fields=ews.FIELDS, build=ews.build),
    Backend(name=imap.ImapConfig.name, doc=imap.DOC, fields=imap.FIELDS, build=imap.build, folders=imap.FOLDERS,
            refused_cleanups=imap.REFUSED_CLEANUPS),
    Backend(name=graph.GraphConfig.name, doc=graph.DOC, fields=graph.FIELDS, build=graph.build),
)


def backend_named(name: str) -> Backend:
    """Return the backend whose section key is ``name``."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(f"no mailbox backend named {name!r}")
