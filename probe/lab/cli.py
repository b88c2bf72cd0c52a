"""``mailflow-probe lab``: start the lab, say where everything is, and keep it up until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from probe.lab.topology import Lab, LabError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(args: argparse.Namespace) -> int:
    """Run the lab until SIGINT or SIGTERM; return 0, or 2 for bad arguments, 1 when it cannot start."""
    if args.smart_hosts < 1 or args.mailboxes < 1:
        print("mailflow-probe lab: --smart-hosts and --mailboxes must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    previous = _on_signals(stop)
    try:
        with Lab.start(Path(args.state_dir), smart_hosts_per_forest=args.smart_hosts,
                       mailboxes_per_forest=args.mailboxes, fixed_ports=args.fixed_ports,
                       mailbox_backend=args.mailbox_backend) as lab:
            print(summary(lab), flush=True)
            stop.wait()
            print("mailflow-probe lab: stopping", flush=True)
    except (LabError, OSError) as exc:
        print(f"mailflow-probe lab: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _restore(previous)
    return EXIT_OK


def summary(lab: Lab) -> str:
    """Return what a person needs to use the running lab."""
    lines = [
        f"lab state:    {lab.state_dir}",
        f"lab.json:     {lab.json_path}",
        f"probe config: {lab.config_path}",
        f"CA file:      {lab.ca_file}",
        f"admin API:    {lab.admin_url}  (POST/DELETE/GET /faults, GET /stats, GET /deliveries)",
    ]
    for forest in lab.forests.values():
        lines.append(f"forest {forest.name} ({forest.domain}):")
        lines.append(f"  EWS:        {forest.ews_url}")
        if forest.graph is not None:
            lines.append(f"  Graph:      {forest.graph.url} (tenant {forest.graph.tenant_id})")
        if forest.imap_port:
            lines.append(f"  IMAP:       imaps://127.0.0.1:{forest.imap_port}, STARTTLS on {forest.imap_starttls_port}")
        lines.append(f"  mailboxes:  {', '.join(forest.mailboxes)}")
        hosts = forest.smart_hosts
        shown = ", ".join(f"{h.name} {h.host}:{h.port}" for h in hosts[:4])
        more = f" and {len(hosts) - 4} more" if len(hosts) > 4 else ""
        lines.append(f"  smart hosts: {shown}{more}")
        lines.append(f"  submission: {forest.server_address}:{forest.submission_port} (STARTTLS, then AUTH as a "
                     "mailbox address with the EWS password)")
        others = [f.name for f in lab.forests.values() if f is not forest]
        lines.append(f"  Send connectors: to {', '.join(others) or 'none'} (faults: connector/{forest.name})")
    lines.append("passwords: in lab.json and the files under secrets/. Ctrl-C stops the lab.")
    return "\n".join(lines)


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _on_signals(stop: threading.Event) -> dict[int, _Handler]:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, _Handler] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
    return previous


def _restore(previous: dict[int, _Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
