"""Helpers for tests that run the daemon in-process on the lab: start it, scrape /metrics, wait for a condition."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exchangelib.protocol import close_connections
from prometheus_client.parser import text_string_to_metric_families

from probe.daemon import Daemon, start_daemon

HTTP_TIMEOUT = 10.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def running_daemon(config_path: Path) -> Iterator[tuple[Daemon, Any]]:
    """Start the daemon and its web server on an ephemeral loopback port; stop both afterwards."""
    daemon, server = start_daemon(config_path, listen_address="127.0.0.1:0")
    try:
        yield daemon, server
    finally:
        server.close()
        daemon.stop()
        close_connections()


def fetch(url: str) -> str:
    """Return the body of a GET on a loopback URL."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - loopback http only
        return str(resp.read().decode("utf-8"))


def scrape(port: int) -> Samples:
    """Return every sample of the daemon's /metrics by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(fetch(f"http://127.0.0.1:{port}/metrics")):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` when ``timeout`` seconds pass first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m probe run`` as its own process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address",
                                 f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)


def states(state_file: Path) -> dict[str, str]:
    """Return every probe's state in a daemon's state file."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        return dict(db.execute("SELECT probe_id, state FROM probes").fetchall())
    finally:
        db.close()


def with_open_files_limit(argv: list[str], open_files: int | None) -> list[str]:
    """Return ``argv`` run under soft and hard open-files limits of ``open_files`` (set by a small Python
    wrapper that then execs it: no preexec_fn in a test process full of threads)."""
    if open_files is None:
        return argv
    setter = ("import os, resource, sys; "
              f"resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files})); "
              "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", setter, *argv]


def ledger_made(state_file: Path) -> bool:
    """Say whether a starting daemon has made its state file's tables yet (the file appears before them)."""
    if not state_file.exists():
        return False
    db = sqlite3.connect(state_file, timeout=10)
    try:
        made = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()
    return {"probes", "sightings", "observations"} <= made
