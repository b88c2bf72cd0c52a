"""The ``mailflow-probe`` command line: Prometheus-style flags, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from probe import __version__
from probe.report import FORMATS

if TYPE_CHECKING:
    from probe.shard import Shard

EXIT_USAGE = 2

# subcommand -> "module:function"; each function takes the parsed arguments and returns an exit code.
_COMMANDS: dict[str, str] = {
    "run": "probe.daemon:main",
    "check": "probe.check:main",
    "validate": "probe.config_cli:validate_main",
    "config-schema": "probe.config_cli:schema_main",
    "lab": "probe.lab.cli:main",
    "demo": "probe.lab.demo:main",
}
# What only the lab imports: without these (the ``lab`` extra), ``lab`` and ``demo`` say how to get them.
_LAB_MODULES = frozenset({"probe.lab", "aiosmtpd", "spnego"})
LAB_MISSING = ("the lab is not installed: pip install 'mailflow-probe[lab]' "
               "(in a checkout, ./scripts/demo installs it and starts the demo)")


def _add_config_flag(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("-c", "--config.file", dest="config_file", required=required, metavar="FILE",
                        help="the probe's YAML configuration")


def _shard(text: str) -> Shard:
    from probe.shard import Shard, ShardError

    try:
        return Shard.parse(text)
    except ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mailflow-probe",
        description="Probe cross-forest mail flow through each smart host; confirm arrival over EWS.",
    )
    parser.add_argument("--version", action="version", version=f"mailflow-probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the probing daemon and serve /metrics")
    _add_config_flag(run)
    run.add_argument("--web.listen-address", dest="listen_address", default=":9425", metavar="HOST:PORT")
    run.add_argument("--web.config.file", dest="web_config_file", default=None, metavar="FILE",
                     help="exporter-toolkit web config (TLS, basic auth) for the listener")
    run.add_argument("--web.enable-lifecycle", dest="web_enable_lifecycle", action="store_true",
                     help="allow POST /-/reload (SIGHUP reloads either way)")
    run.add_argument("--web.max-connections", dest="web_max_connections", type=int, default=None, metavar="N",
                     help="clients served at once (default 512, or half the open-files limit when lower)")
    run.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                     help="probe only shard K of N of the (route, smart host) pairs (every pair is in exactly one "
                          "shard; docs/deploy.md)")
    run.add_argument("--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt")
    run.add_argument("--log.level", dest="log_level", choices=("debug", "info", "warn", "error"),
                     default="info")

    check = sub.add_parser("check", help="probe every smart host once, report, and exit")
    _add_config_flag(check)
    check.add_argument("--route", action="append", default=None, metavar="NAME",
                       help="only this route (repeatable)")
    check.add_argument("--timeout", default=None, metavar="DURATION",
                       help="how long to wait for delivery (default: each route's timeout)")
    check.add_argument("--format", choices=tuple(FORMATS), default="text")
    check.add_argument("--debug", action="store_true", help="add the redacted transcript and the hops")

    validate = sub.add_parser("validate", help="check a configuration file and exit")
    _add_config_flag(validate)

    sub.add_parser("config-schema", help="print a JSON Schema of the configuration for editors")

    lab = sub.add_parser("lab", help=_lab_help("run the two-forest lab on loopback until interrupted"))
    lab.add_argument("--state-dir", default="lab-state", metavar="DIR")
    lab.add_argument("--smart-hosts", type=int, default=2, metavar="N", help="smart hosts per forest")
    lab.add_argument("--mailboxes", type=int, default=1, metavar="N", help="probe mailboxes per forest")
    lab.add_argument("--fixed-ports", action="store_true", help="use the demo's fixed ports")
    lab.add_argument("--mailbox-backend", choices=("ews", "imap", "graph"), default="ews",
                     help="how probe.yaml's mailboxes are read, and where the smart hosts deliver (default: ews)")

    demo = sub.add_parser("demo", help=_lab_help("the lab and the daemon together, on fixed local ports"))
    demo.add_argument("--state-dir", default="demo-state", metavar="DIR")
    demo.add_argument("--web.listen-address", dest="listen_address", default="127.0.0.1:9425",
                      metavar="HOST:PORT")
    demo.add_argument("--duration", default=None, metavar="DURATION",
                      help="stop by itself after this long (default: until Ctrl-C)")
    demo.add_argument("--ephemeral-ports", action="store_true",
                      help="put the lab on free ports instead of the fixed ones (a second demo, tests)")
    return parser


def _lab_help(text: str) -> str:
    """Return a lab command's help line, saying so when the lab is not installed (as in the image)."""
    installed = all(importlib.util.find_spec(name) is not None for name in sorted(_LAB_MODULES))
    return text if installed else f"{text} (not installed: needs mailflow-probe[lab])"


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = target.split(":")
    func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), func_name)
    return func


def _lab_missing(exc: ModuleNotFoundError) -> bool:
    """Say whether ``exc`` means the lab or one of its own dependencies is not installed."""
    name = exc.name or ""
    return any(name == m or name.startswith(f"{m}.") for m in _LAB_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    try:
        command = _resolve(_COMMANDS[args.command])
    except ModuleNotFoundError as exc:
        if not _lab_missing(exc):
            raise
        print(f"mailflow-probe {args.command}: {LAB_MISSING}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
