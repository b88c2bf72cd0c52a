"""Read the YAML node tree against the field table: every key known, every value of its kind, secrets resolved."""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from probe.config.composer import MAX_NODES
from probe.config.fields import ENV_NAME_PATTERN, MAX_SECRET_FILE_BYTES, FieldSpec
from probe.config.nodes import Context, Item, Section, byte_size, did_you_mean, got, join, kind_of, scalar
from probe.config.table import SECTIONS
from probe.config.values import CONVERTERS, readable_file, text
from probe.secret import Secret


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _key(ctx: Context, key_node: yaml.Node, path: str) -> str:
    value = scalar(ctx, key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
    if not isinstance(value, str):
        raise ctx.error(key_node, path, f"expected a text key, got {got(ctx, key_node)}")
    return value


def _unknown_key(key: str, valid: list[str]) -> str:
    return "unknown key" + (did_you_mean(key, valid) or f"; expected one of: {', '.join(valid)}")


def _alternatives(keys: tuple[str, ...] | list[str]) -> str:
    """Return ``a, b or c``."""
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def _group_keys(section: Section, group: str) -> list[str]:
    return [spec.key for spec in section.specs if spec.one_of == group]


def _read_env_secret(ctx: Context, node: yaml.Node, path: str) -> Secret:
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not re.fullmatch(ENV_NAME_PATTERN, value):
        raise ctx.error(node, path, "expected the name of an environment variable (letters, digits and _)")
    secret = ctx.environ.get(value)
    if secret is None:
        raise ctx.error(node, path, f"environment variable {value} is not set")
    if not secret:
        raise ctx.error(node, path, f"environment variable {value} is empty")
    return Secret(secret)


def _read_bounded(ctx: Context, node: yaml.Node, path: str, shown: Path) -> bytes:
    """Return a secret file's bytes, refusing one past MAX_SECRET_FILE_BYTES before reading any of it."""
    try:
        with shown.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_SECRET_FILE_BYTES:
                raise ctx.error(node, path, f"{shown} is {byte_size(size)}, more than a password file holds "
                                f"({byte_size(MAX_SECRET_FILE_BYTES)} at most); is this the right file?")
            data = stream.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ctx.error(node, path, f"cannot read {shown}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:  # it grew after the check
        raise ctx.error(node, path, f"{shown} is more than {byte_size(MAX_SECRET_FILE_BYTES)}; is this the right file?")
    return data


def _read_file_secret(ctx: Context, node: yaml.Node, path: str) -> Secret:
    shown = ctx.base / Path(text(ctx, node, path, "a file path")).expanduser()
    readable_file(ctx, node, path, shown)
    try:
        content = _read_bounded(ctx, node, path, shown).decode("utf-8")
    except UnicodeDecodeError:
        raise ctx.error(node, path, f"{shown} is not UTF-8 text") from None
    secret = content.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ctx.error(node, path, f"{shown} is empty")
    if shown.stat().st_mode & stat.S_IROTH:
        ctx.warn(node, path, f"{shown} can be read by every user of this machine; chmod 600 it")
    return Secret(secret)


def _read_inline_secret(ctx: Context, node: yaml.Node, path: str) -> Secret:
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value:
        raise ctx.error(node, path, f"expected a string, got {kind_of(node, value)}")
    ctx.warn(node, path, "a password written in the config file; prefer password_env or password_file")
    return Secret(value)


def _read_secret(ctx: Context, section: Section, spec: FieldSpec, key: str,
                 nodes: tuple[yaml.Node, yaml.Node]) -> None:
    key_node, node = nodes
    path = section.at(key)
    given = section.items.get(spec.key)
    if given is not None:
        raise ctx.error(key_node, path, f"{given.key} and {key} are both given; give only one of "
                        f"{_alternatives(spec.yaml_keys())}")
    if key.endswith("_env"):
        secret = _read_env_secret(ctx, node, path)
    elif key.endswith("_file"):
        secret = _read_file_secret(ctx, node, path)
    else:
        secret = _read_inline_secret(ctx, node, path)
    section.items[spec.key] = Item(secret, node, key_node, key)


def _read_list(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> list[Section]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, path, f"expected a list of {spec.noun}s, got {got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must have at least one {spec.noun}")
    assert spec.section is not None
    return [read_section(ctx, item, spec.section, f"{path}[{index}]") for index, item in enumerate(node.value)]


def _read_map(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> dict[str, Section]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, path, f"expected a mapping of {spec.noun} names to {spec.noun}es, "
                        f"got {got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must have at least one {spec.noun}")
    assert spec.section is not None
    name_of = CONVERTERS["name"]
    sections: dict[str, Section] = {}
    for key_node, value_node in node.value:
        name = name_of(ctx, spec, key_node, f"{path}.{_key(ctx, key_node, path)}")
        sections[name] = read_section(ctx, value_node, spec.section, f"{path}.{name}")
    return sections


def _check_one_of(ctx: Context, section: Section, spec: FieldSpec, key_node: yaml.Node) -> None:
    """Raise when another key of ``spec``'s group (a mailbox's backend) is given already."""
    if spec.one_of is None:
        return
    group = _group_keys(section, spec.one_of)
    given = next((key for key in group if key in section.items), None)
    if given is not None:
        raise ctx.error(key_node, section.at(spec.key), f"{given} and {spec.key} are both given; give only one "
                        f"of {_alternatives(group)}")


def _read_value(ctx: Context, section: Section, spec: FieldSpec, key: str,
                nodes: tuple[yaml.Node, yaml.Node]) -> None:
    key_node, node = nodes
    if _is_null(node) and not spec.required:
        return
    if spec.kind == "secret":
        _read_secret(ctx, section, spec, key, nodes)
        return
    _check_one_of(ctx, section, spec, key_node)
    path = section.at(key)
    value: Any
    if spec.kind == "section":
        assert spec.section is not None
        value = read_section(ctx, node, spec.section, path)
    elif spec.kind == "section_list":
        value = _read_list(ctx, spec, node, path)
    elif spec.kind == "section_map":
        value = _read_map(ctx, spec, node, path)
    else:
        value = CONVERTERS[spec.kind](ctx, spec, node, path)
    section.items[key] = Item(value, node, key_node, key)


@functools.cache
def _specs_by_key(name: str) -> dict[str, FieldSpec]:
    """Return the rows of section ``name`` by every YAML key they accept."""
    return {key: spec for spec in SECTIONS[name] for key in spec.yaml_keys()}


@functools.cache
def _checked_specs(name: str) -> tuple[FieldSpec, ...]:
    """Return the rows of section ``name`` that _check_complete has anything to check of, in table order."""
    return tuple(spec for spec in SECTIONS[name] if spec.required or spec.pairs_with is not None)


def _check_required(ctx: Context, section: Section, spec: FieldSpec) -> None:
    """Raise for a missing required key (or group of keys, one of which is needed; checked at its first)."""
    if not spec.required:
        return
    if spec.one_of is None:
        if spec.key in section.items:
            return
        names = list(spec.yaml_keys())
    else:
        names = _group_keys(section, spec.one_of)
        if names[0] != spec.key or any(key in section.items for key in names):
            return
    first, *others = names
    also = " (or " + " or ".join(f'"{other}"' for other in others) + ")" if others else ""
    raise ctx.error(section.node, section.path, f'missing required key "{first}"{also}')


def _check_complete(ctx: Context, section: Section) -> None:
    """Raise for a missing required key, or a secret without its partner (or the partner without it)."""
    for spec in _checked_specs(section.name):
        _check_required(ctx, section, spec)
        partner = spec.pairs_with
        if partner is None:
            continue
        secret, other = section.items.get(spec.key), section.items.get(partner)
        if other is not None and secret is None:
            raise ctx.error(other.key_node, section.at(partner),
                            f"a {partner} needs a {spec.key}: give {_alternatives(spec.yaml_keys())}")
        if secret is not None and other is None:
            raise ctx.error(secret.key_node, section.at(secret.key), f"a {spec.key} needs a {partner}")


def read_section(ctx: Context, node: yaml.Node, name: str, path: str) -> Section:
    """Read a mapping as the section ``name`` of the field table; raise at the first mistake."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, path, f"expected a mapping, got {got(ctx, node)}")
    ctx.keys_read += len(node.value)
    if ctx.keys_read > MAX_NODES:
        raise ctx.error(node, path, f"too large: YAML aliases (*) repeat mappings to more than {MAX_NODES:,} keys "
                        "by this line; one instance takes at most that many")
    by_key = _specs_by_key(name)
    section = Section(name, SECTIONS[name], path, node)
    for key_node, value_node in node.value:
        key = _key(ctx, key_node, path)
        spec = by_key.get(key)
        if spec is None:
            raise ctx.error(key_node, join(path, key), _unknown_key(key, list(by_key)))
        _read_value(ctx, section, spec, key, (key_node, value_node))
    _check_complete(ctx, section)
    return section
