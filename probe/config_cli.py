"""The ``validate`` and ``config-schema`` subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from probe.config import Config, ConfigError, config_json_schema, load_config_with_warnings
from probe.secret import redact

EXIT_OK = 0
EXIT_CONFIG = 2


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("x") else "s")
    return f"{number} {noun if number == 1 else plural}"


def summary(config: Config) -> str:
    """Return the one line ``validate`` prints for a good config."""
    hosts = sum(len(route.smart_hosts) for route in config.routes)
    connectors = sum(1 for route in config.routes if route.connector is not None)
    through = f"{_count(connectors, 'connector probe')}, " if connectors else ""
    return (f"config OK: {_count(len(config.routes), 'route')}, {_count(hosts, 'smart host')}, {through}"
            f"{_count(len(config.mailboxes), 'mailbox')}")


def validate_main(args: argparse.Namespace) -> int:
    """Check ``args.config_file``: print a summary and exit 0, or print the error and exit 2."""
    path = Path(args.config_file)
    try:
        loaded = load_config_with_warnings(path)
    except ConfigError as exc:
        print(redact(exc.describe()), file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # a loader bug must still end in a clear line, not a traceback
        print(f"{path}: cannot load the config: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in loaded.warnings:
        print(f"warning: {redact(warning)}", file=sys.stderr)
    print(summary(loaded.config))
    return EXIT_OK


def schema_main(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the config file format."""
    try:
        print(json.dumps(config_json_schema(), indent=2), flush=True)
    except BrokenPipeError:  # e.g. piped into head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
    return EXIT_OK
