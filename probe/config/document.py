"""A config file's text and YAML node tree, read within limits (the merge keys: probe.config.merges)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from probe.config.composer import MAX_NODES, ExactLoader, FastLoader, NestingError, NodeBudgetError
from probe.config.errors import ConfigError
from probe.config.fields import MAX_CONFIG_BYTES
from probe.config.nodes import Context


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


def _compose_with(ctx: Context, loader: type[Any], text: str) -> yaml.Node | None:
    """Compose with ``loader``, turning a document past the node budget into a ConfigError."""
    try:
        node: yaml.Node | None = loader(text).get_single_node()
    except NodeBudgetError as exc:
        raise ConfigError(f"too large: more than {MAX_NODES:,} YAML nodes (keys, values, lists and mappings) by this "
                          "line; one instance takes at most that many (split the routes across instances)",
                          file=ctx.file, line=exc.line) from None
    except NestingError:
        raise ConfigError("nested too deeply", file=ctx.file) from None
    return node


def _compose_exactly(ctx: Context, text: str) -> yaml.Node | None:
    """Compose with the pure-Python parser, whose error messages are the same on every machine."""
    try:
        return _compose_with(ctx, ExactLoader, text)
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


def compose(ctx: Context, text: str) -> yaml.Node:
    """Return the YAML document's node tree, or raise a ConfigError naming the line of the syntax error.

    libyaml parses; on any error the pure-Python parser parses again, for its message.
    """
    node: yaml.Node | None
    if FastLoader is not None:
        try:
            node = _compose_with(ctx, FastLoader, text)
        except yaml.YAMLError:
            node = _compose_exactly(ctx, text)
    else:
        node = _compose_exactly(ctx, text)
    if node is None:
        raise ConfigError("the file is empty; expected a mapping with signing_key_file, state_file, "
                          "mailboxes and routes", file=ctx.file)
    return node
