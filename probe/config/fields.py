"""The words the field table is written in: what one YAML key is (its kind, default and rules).

A kind names how a value is read and checked (probe.config.values) and how the JSON Schema shows it
(probe.config.schema); the patterns below are shared by both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

Kind = Literal[
    "string", "name", "host", "address", "url", "version", "port", "boolean", "duration", "path",
    "choice", "choice_list", "text_list", "folder_list", "secret", "section", "section_map", "section_list",
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
MAX_SECRET_FILE_BYTES: Final = 64 << 10  # a password (or token) file; a larger one is not what was meant


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One key of one section of the YAML format."""

    key: str
    kind: Kind
    doc: str
    required: bool = False
    default: Any = None  # the value when the key is absent (never for required keys, sections and secrets)
    choices: tuple[str, ...] = ()
    section: str | None = None  # the section a nested kind holds
    positive: bool = False  # durations: greater than 0 (otherwise 0 is allowed)
    must_exist: bool = False  # paths: the file must exist and be readable
    noun: str = ""  # what a nested list or map holds, for "at least one route"
    pairs_with: str | None = None  # secrets: the key that must be given with it (and it with that key)
    inherited: bool = False  # the default comes from the ``defaults`` section, not from this row
    one_of: str | None = None  # a group of keys of which exactly one is given (a mailbox's backend)

    def yaml_keys(self) -> tuple[str, ...]:
        """Return the YAML keys this field accepts (a secret has three ways to be given)."""
        if self.kind == "secret":
            return (f"{self.key}_env", f"{self.key}_file", self.key)
        return (self.key,)


def default_of(specs: Sequence[FieldSpec], key: str) -> Any:
    """Return the default of ``key`` among ``specs`` (what a dataclass field declares as its default)."""
    for spec in specs:
        if spec.key == key:
            return spec.default
    raise KeyError(f"no field {key!r} in this section")
