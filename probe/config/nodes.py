"""YAML nodes as the loader reads them: sections of values that keep their lines, and how errors quote them."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from probe.config.errors import ConfigError
from probe.config.fields import SECTION_KINDS, FieldSpec

STR_TAG: Final = "tag:yaml.org,2002:str"


@dataclass
class Item:
    """One value read from a section, with the nodes it came from."""

    value: Any
    node: yaml.Node  # the value's node
    key_node: yaml.Node
    key: str  # the YAML key as written (``password_env`` for a secret given that way)


@dataclass
class Section:
    """A mapping of the config read against its rows of the field table."""

    name: str  # the section's name in the field table
    specs: tuple[FieldSpec, ...]
    path: str
    node: yaml.MappingNode
    items: dict[str, Item] = field(default_factory=dict)

    def at(self, key: str) -> str:
        """Return the field path of ``key`` in this section."""
        return join(self.path, key)

    def node_of(self, key: str) -> yaml.Node:
        """Return the node of ``key``'s value, or the section's own node when it is absent."""
        item = self.items.get(key)
        return item.node if item is not None else self.node

    def scalars(self) -> dict[str, Any]:
        """Return the present non-section values, ready as dataclass keyword arguments."""
        specs = {spec.key: spec for spec in self.specs}
        return {key: item.value for key, item in self.items.items() if specs[key].kind not in SECTION_KINDS}


@dataclass
class Context:
    """One loading: the file, the environment secrets are read from, and the warnings so far."""

    file: Path
    environ: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)
    keys_read: int = 0  # by read_section, aliases repeating a mapping counted each time
    constructor: yaml.constructor.SafeConstructor = field(default_factory=yaml.constructor.SafeConstructor)

    @property
    def base(self) -> Path:
        """Return the directory relative paths are taken from (the config file's)."""
        return self.file.parent

    def error(self, node: yaml.Node | None, path: str, message: str) -> ConfigError:
        """Return a ConfigError at ``node``'s line and the field ``path``."""
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, field_path=path or None)

    def warn(self, node: yaml.Node, path: str, message: str) -> None:
        """Note a warning at ``node``'s line and the field ``path``."""
        self.warnings.append(self.error(node, path, message).describe())


def join(path: str, key: str) -> str:
    """Return the field path of ``key`` under ``path``."""
    return f"{path}.{key}" if path else key


def show(value: object) -> str:
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


def byte_size(size: int) -> str:
    """Return a byte count as people read it: ``6 GiB``, ``64 KiB``, ``12 bytes``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.3g} {unit}"
    return f"{size} bytes"


def scalar(ctx: Context, node: yaml.Node, path: str) -> object:
    """Return the Python value of a scalar node (``str``, ``int``, ``float``, ``bool``, ``None``, ...)."""
    if node.tag == STR_TAG and isinstance(node, yaml.ScalarNode):
        return node.value  # what SafeConstructor's construct_yaml_str returns, without its per-node cache
    try:
        return ctx.constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        problem = getattr(exc, "problem", None) or "not a valid value"
        raise ctx.error(node, path, f"invalid YAML value: {problem}") from None


def got(ctx: Context, node: yaml.Node) -> str:
    """Return ``node`` as quoted in an error: its value, or what kind of thing it is."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return show(scalar(ctx, node, ""))


def kind_of(node: yaml.Node, value: object) -> str:
    """Return what kind of thing a node is, without its value (for secrets)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(type(value), "a value of another type")


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """Return ``; did you mean "X"?`` for the option closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


def warn_unverified(ctx: Context, section: Section) -> None:
    """Warn when a section turns certificate verification off."""
    item = section.items.get("verify")
    if item is not None and item.value is False:
        ctx.warn(item.node, section.at("verify"), "certificate verification is off")
