"""Read one scalar or list value of a kind in the field table, or raise naming what was expected."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from probe.config.fields import (
    ADDRESS_PATTERN,
    HOSTNAME_PATTERN,
    MAX_DURATION,
    NAME_PATTERN,
    URL_PATTERN,
    VERSION_PATTERN,
    FieldSpec,
)
from probe.config.nodes import Context, did_you_mean, got, scalar, show
from probe.duration import DURATION_EXAMPLES, DurationError, format_duration, parse_duration

Converter = Callable[[Context, FieldSpec, yaml.Node, str], Any]


def text(ctx: Context, node: yaml.Node, path: str, expected: str) -> str:
    """Return a non-empty string value, or raise naming what was ``expected``."""
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or not isinstance(value, str):
        raise ctx.error(node, path, f"expected {expected}, got {got(ctx, node)}")
    if not value.strip():
        raise ctx.error(node, path, f"expected {expected}, got an empty string")
    return value


def _matching(pattern: str, expected: str) -> Converter:
    compiled = re.compile(pattern)

    def convert(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
        value = text(ctx, node, path, expected)
        if not compiled.fullmatch(value):
            raise ctx.error(node, path, f"expected {expected}, got {show(value)}")
        return value

    return convert


@functools.lru_cache(maxsize=4096)  # the same few smart hosts recur in many routes
def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return re.fullmatch(HOSTNAME_PATTERN, value) is not None and len(value) <= 253
    return True


def _convert_host(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    expected = "a host name or IP address"
    value = text(ctx, node, path, expected)
    if not _is_host(value):
        raise ctx.error(node, path, f"expected {expected}, got {show(value)}")
    return value


def _convert_url(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    expected = "an http:// or https:// URL"
    value = text(ctx, node, path, expected)
    if not re.fullmatch(URL_PATTERN, value) or not _is_host(urlsplit(value).hostname or ""):
        raise ctx.error(node, path, f"expected {expected}, got {show(value)}")
    return value


def _convert_port(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> int:
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ctx.error(node, path, f"expected an integer 1-65535, got {got(ctx, node)}")
    return value


def _convert_boolean(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> bool:
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        raise ctx.error(node, path, f"expected true or false, got {got(ctx, node)}")
    return value


def _convert_duration(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> float:
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    seconds: float | None = None
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except DurationError:
            seconds = None
    elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        seconds = float(value)
    if seconds is None or not math.isfinite(seconds):
        raise ctx.error(node, path, f"expected a duration like {DURATION_EXAMPLES}, got {got(ctx, node)}")
    if spec.positive and seconds <= 0:
        raise ctx.error(node, path, f"must be greater than 0, got {got(ctx, node)}")
    if seconds > MAX_DURATION:
        raise ctx.error(node, path, f"must be at most {format_duration(MAX_DURATION)}, got {got(ctx, node)}")
    return seconds


def readable_file(ctx: Context, node: yaml.Node, path: str, shown: Path) -> None:
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


def _convert_path(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> Path:
    value = text(ctx, node, path, "a file path")
    if "\x00" in value:
        raise ctx.error(node, path, "expected a file path, got a string with a NUL character")
    shown = ctx.base / Path(value).expanduser()
    if spec.must_exist:
        readable_file(ctx, node, path, shown)
    return shown.absolute()


def _convert_choice(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> str:
    options = ", ".join(spec.choices)
    value = scalar(ctx, node, path) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or value not in spec.choices:
        hint = did_you_mean(value, spec.choices) if isinstance(value, str) else ""
        raise ctx.error(node, path, f"expected one of {options}, got {got(ctx, node)}{hint}")
    return value


def _convert_choice_list(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> tuple[str, ...]:
    options = ", ".join(spec.choices)
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, path, f"expected a list of {options}, got {got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must list at least one of {options}")
    chosen: list[str] = []
    for index, item in enumerate(node.value):
        value = _convert_choice(ctx, spec, item, f"{path}[{index}]")
        if value in chosen:
            raise ctx.error(item, f"{path}[{index}]", f"{show(value)} is listed twice")
        chosen.append(value)
    return tuple(chosen)


def _convert_text_list(ctx: Context, spec: FieldSpec, node: yaml.Node, path: str) -> tuple[str, ...]:
    """Read a list of distinct non-empty strings (``spec.noun`` says what they are)."""
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, path, f"expected a list of {spec.noun}s, got {got(ctx, node)}")
    if not node.value:
        raise ctx.error(node, path, f"must list at least one {spec.noun}")
    chosen: list[str] = []
    for index, item in enumerate(node.value):
        value = text(ctx, item, f"{path}[{index}]", f"a {spec.noun}")
        if any(ch in value for ch in "\x00\r\n"):
            raise ctx.error(item, f"{path}[{index}]", f"a {spec.noun} has no NUL or line break, got {show(value)}")
        if value in chosen:
            raise ctx.error(item, f"{path}[{index}]", f"{show(value)} is listed twice")
        chosen.append(value)
    return tuple(chosen)


CONVERTERS: Final[dict[str, Converter]] = {
    "string": lambda ctx, spec, node, path: text(ctx, node, path, "a string"),
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
    "text_list": _convert_text_list,
    "folder_list": lambda ctx, spec, node, path: node,  # read by the loader with the backend's own rule
}
