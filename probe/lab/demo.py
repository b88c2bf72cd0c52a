"""``mailflow-probe demo``: the lab and the daemon together, on fixed local ports, until Ctrl-C.

The demo's smart hosts take a while to deliver, each its own range (``DEMO_TRANSIT``), so the status page
and the metrics show latencies that differ from pair to pair and from probe to probe, as a real
forest's would.
"""

from __future__ import annotations

import argparse
import errno
import sys
import threading
from pathlib import Path

from probe.config import ConfigError
from probe.duration import parse_duration
from probe.lab.topology import Lab, LabError
from probe.ledger import LedgerError
from probe.logs import configure_logging
from probe.signing import SigningKeyError

DEMO_INTERVAL = 10.0
DEMO_TIMEOUT = 30.0
DEMO_JITTER = 2.0
# Seconds from the smart host's final 250 to the mailbox, drawn per message: each pair differs.
DEMO_TRANSIT: dict[str, tuple[float, float]] = {
    "contoso-edge-1": (0.2, 0.6),
    "contoso-edge-2": (0.8, 1.6),
    "fourthcoffee-edge-1": (0.4, 1.0),
    "fourthcoffee-edge-2": (1.5, 3.0),
}


def _banner(lab_admin: str, listen: str, port: int, config_path: Path, state_dir: Path) -> str:
    host = listen.rpartition(":")[0].strip("[]")
    shown = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # a wildcard is reached on loopback
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    return "\n".join([
        "mailflow-probe demo: a two-forest lab and the probing daemon, all on loopback",
        f"  status page   {base}/",
        f"  metrics       {base}/metrics",
        f"  lab admin     {lab_admin}  (POST /faults to break a smart host, e.g.:",
        f"                curl -XPOST {lab_admin}/faults -d '{{\"target\":\"smarthost/fourthcoffee-edge-1\","
        f"\"kind\":\"no_starttls\"}}')",
        "                or the Send connector's stored password: {\"target\":\"connector/contoso\",",
        "                \"kind\":\"bad_credentials\"} (the @connector rows say which smart host carried each probe)",
        f"  probe config  {config_path}",
        f"  lab details   {state_dir / 'lab.json'}",
        "  one line per verdict follows; Ctrl-C stops everything",
        "",
    ])


def main(args: argparse.Namespace) -> int:
    """Run the demo until interrupted (or for --duration); return 0."""
    from probe.daemon import run_until_signalled, start_daemon

    configure_logging("logfmt", "info", stream=sys.stdout)
    state_dir = Path(args.state_dir).resolve()
    try:
        duration = parse_duration(args.duration) if args.duration else None
    except ValueError as exc:
        print(f"mailflow-probe demo: --duration: {exc}", file=sys.stderr)
        return 2
    try:
        with Lab.start(state_dir, fixed_ports=not args.ephemeral_ports, transit=DEMO_TRANSIT) as lab:
            config_path = lab.write_probe_config(state_dir / "demo.yaml", interval=DEMO_INTERVAL,
                                                 timeout=DEMO_TIMEOUT, jitter=DEMO_JITTER, connector="ews")
            daemon, server = start_daemon(config_path, listen_address=args.listen_address)
            print(_banner(lab.admin_url, args.listen_address, server.port, config_path, state_dir), flush=True)
            stop = threading.Event()
            timer = threading.Timer(duration or 0.0, stop.set)
            timer.daemon = True  # a Ctrl-C before --duration ends must not wait for it
            if duration is not None:
                timer.start()
            return run_until_signalled(daemon, server, stop=stop)
    except (ConfigError, LabError, LedgerError, SigningKeyError, OSError) as exc:
        print(f"mailflow-probe demo: {_describe(exc)}", file=sys.stderr)
        return 1


def _describe(exc: Exception) -> str:
    """Return one line for a demo that cannot start, with what to do when a port is taken."""
    text = exc.describe() if isinstance(exc, ConfigError) else str(exc)
    in_use = (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE) or "in use" in text
    if in_use:
        text += " (another demo or lab may be running: stop it, or pass --ephemeral-ports and --web.listen-address)"
    return text
