"""A config file's text and YAML node tree: read within limits, duplicate keys refused, merge keys applied."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Final

import yaml

from probe.config.errors import ConfigError
from probe.config.fields import MAX_CONFIG_BYTES
from probe.config.nodes import Context, join

# libyaml composes large configs six times faster, but recurses in C: past ~50000 levels it crashes the
# process, so it is used only below this bound of the nesting depth (the Python parser handles the rest).
_FAST_LOADER: Final[type[Any] | None] = getattr(yaml, "CSafeLoader", None)
_FAST_LOADER_MAX_DEPTH: Final = 10000


def read_text(file: Path) -> str:
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


def _compose_exactly(ctx: Context, text: str) -> yaml.Node | None:
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


def compose(ctx: Context, text: str) -> yaml.Node:
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


def prepare(ctx: Context, node: yaml.Node, path: str, seen: set[int]) -> None:
    """Reject duplicate keys and apply YAML merge keys (``<<``), once per node."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            prepare(ctx, item, f"{path}[{index}]", seen)
    if not isinstance(node, yaml.MappingNode):
        return
    _refuse_duplicates(ctx, node, path)
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
        prepare(ctx, value_node, join(path, str(key_node.value)), seen)


def _refuse_duplicates(ctx: Context, node: yaml.MappingNode, path: str) -> None:
    first_lines: dict[object, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            marker = (key_node.tag, key_node.value)
            if marker in first_lines:
                raise ctx.error(key_node, join(path, str(key_node.value)),
                                f"duplicate key; the first is at line {first_lines[marker]}")
            first_lines[marker] = key_node.start_mark.line + 1
