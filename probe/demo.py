"""``mailflow-probe demo``: the lab and the daemon together, on fixed local ports, until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import sys
import threading
from pathlib import Path

from probe.config import ConfigError
from probe.duration import parse_duration
from probe.ledger import LedgerError
from probe.logs import configure_logging
from probe.signing import SigningKeyError

DEMO_INTERVAL = 10.0
DEMO_TIMEOUT = 30.0
DEMO_JITTER = 2.0


def _banner(lab_admin: str, listen: str, config_path: Path, state_dir: Path) -> str:
    host, _, port = listen.rpartition(":")
    base = f"http://{host or '127.0.0.1'}:{port}"
    return "\n".join([
        "mailflow-probe demo: a two-forest lab and the probing daemon, all on loopback",
        f"  status page   {base}/",
        f"  metrics       {base}/metrics",
        f"  lab admin     {lab_admin}  (POST /faults to break a smart host, e.g.:",
        f"                curl -XPOST {lab_admin}/faults -d '{{\"target\":\"smarthost/fourthcoffee-edge-1\","
        f"\"kind\":\"no_starttls\"}}')",
        f"  probe config  {config_path}",
        f"  lab details   {state_dir / 'lab.json'}",
        "  one line per verdict follows; Ctrl-C stops everything",
        "",
    ])


def main(args: argparse.Namespace) -> int:
    """Run the demo until interrupted (or for --duration); return 0."""
    from probe.daemon import run_until_signalled, start_daemon
    from probe.lab import Lab

    configure_logging("logfmt", "info", stream=sys.stdout)
    state_dir = Path(args.state_dir).resolve()
    try:
        duration = parse_duration(args.duration) if args.duration else None
    except ValueError as exc:
        print(f"mailflow-probe demo: --duration: {exc}", file=sys.stderr)
        return 2
    try:
        with Lab.start(state_dir, fixed_ports=True) as lab:
            config_path = lab.write_probe_config(state_dir / "demo.yaml", interval=DEMO_INTERVAL,
                                                 timeout=DEMO_TIMEOUT, jitter=DEMO_JITTER)
            daemon, server = start_daemon(config_path, listen_address=args.listen_address)
            print(_banner(lab.admin_url, args.listen_address, config_path, state_dir), flush=True)
            stop = threading.Event()
            if duration is not None:
                threading.Timer(duration, stop.set).start()
            return run_until_signalled(daemon, server, stop=stop)
    except (ConfigError, LedgerError, SigningKeyError, OSError) as exc:
        text = exc.describe() if isinstance(exc, ConfigError) else str(exc)
        print(f"mailflow-probe demo: {text}", file=sys.stderr)
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            print("  another demo or lab may be running: stop it, or pass --web.listen-address", file=sys.stderr)
        return 1
