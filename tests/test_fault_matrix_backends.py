"""The fault matrix's mailbox rows for every other backend: the same verdicts as over EWS (unknown, never lost).

Each mailbox row of tests/test_fault_matrix.py is run again with its fault on the backend's own lab part
(``imap/FOREST``: the IMAP front before Dovecot; ``graph/FOREST``: the lab's Graph endpoint), plus the clock
offset both ways (+-30 s). One ``check`` and one daemon run, side by side, cover them all; each row must show
what it shows over EWS. The table is written to ``artifacts/fault-matrix-BACKEND.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from probe.check import CheckOptions, run_check
from probe.config import load_config
from probe.lab import Lab
from tests.test_fault_matrix import (
    MAILBOX_FORESTS,
    MAILBOX_ROWS,
    TIMEOUT,
    Scenario,
    check_problems,
    daemon_run,
    describe,
)

BACKENDS: Final = ("imap", "graph")
CLOCK_ROWS: Final = (
    Scenario(name="clock_offset +30 s", route="contoso-to-clock", smart_host="clock-edge-1",
             faults=(("ews/clock", {"kind": "clock_offset", "seconds": 30}),), verdict="delivered", latency_below=5.0),
    Scenario(name="clock_offset -30 s", route="contoso-to-clockback", smart_host="clockback-edge-1",
             faults=(("ews/clockback", {"kind": "clock_offset", "seconds": -30}),), verdict="delivered",
             latency_below=5.0),
)
FORESTS: Final = (*MAILBOX_FORESTS, "clockback")
# The lab's ``slow`` holds each EWS or Graph request, but each IMAP command: an IMAP search is about 10
# commands where EWS's and Graph's are 3 requests, so IMAP's slow mailbox is held 0.6 s a command for the
# same 6 s search. (2 s a command made a 20 s search, which a daemon with a 6 s timeout rightly cannot
# observe in time: its probes turn unknown, 2 x the timeout after they were sent.)
SLOW_SECONDS: Final = {"imap": 0.6}

pytestmark = [pytest.mark.postfix, pytest.mark.slow]  # the imap lab runs Debian's Dovecot


def rows_for(backend: str) -> tuple[Scenario, ...]:
    """Return the mailbox rows with each ``ews/FOREST`` fault aimed at the backend's ``BACKEND/FOREST`` instead."""
    rows = [r for r in MAILBOX_ROWS if "clock_offset" not in r.name] + list(CLOCK_ROWS)
    moved = []
    for row in rows:
        faults = tuple((f"{backend}/{t.split('/', 1)[1]}" if t.startswith("ews/") else t, slowed(backend, p))
                       for t, p in row.faults)
        name = row.name.replace("EWS", backend.upper())
        if backend in SLOW_SECONDS:
            name = name.replace("slow 2 s", f"slow {SLOW_SECONDS[backend]:g} s a command")
        moved.append(dataclasses.replace(row, name=name, faults=faults))
    return tuple(moved)


def slowed(backend: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return a fault's parameters, a ``slow`` one's held per command as SLOW_SECONDS says for the backend."""
    if params.get("kind") != "slow" or backend not in SLOW_SECONDS:
        return params
    return {**params, "seconds": SLOW_SECONDS[backend]}


@contextlib.contextmanager
def matrix_lab(directory: Path, backend: str) -> Iterator[Lab]:
    with Lab.start(directory, forests=("contoso", *FORESTS), smart_hosts_per_forest=2,
                   mailbox_backend=backend) as lab:  # type: ignore[arg-type]
        for row in rows_for(backend):
            for target, params in row.faults:
                lab.add_fault(target=target, **params)
        yield lab


def matrix_config(lab: Lab, path: Path, *, interval: float) -> Path:
    lab.write_probe_config(path, interval=interval, timeout=TIMEOUT, jitter=0.2,
                           routes=[f"contoso-to-{forest}" for forest in FORESTS])
    data = yaml.safe_load(path.read_text())
    data["state_file"] = str(path.with_suffix(".db"))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_table(backend: str, observed: dict[tuple[str, str], dict[str, str]]) -> None:
    lines = ["| scenario | pair | expected | observed (check) | observed (daemon) |", "|---|---|---|---|---|"]
    for row in rows_for(backend):
        seen = observed.get((row.route, row.smart_host), {})
        lines.append(f"| {row.name} | {row.route} / {row.smart_host} | {row.expected} | {seen.get('check', '-')} |"
                     f" {seen.get('daemon', '-')} |")
    artifact = Path(__file__).resolve().parent.parent / "artifacts" / f"fault-matrix-{backend}.md"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(f"# Fault matrix: mailbox rows over {backend}\n\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mailbox_rows_give_the_ews_verdicts_on_every_backend(tmp_path: Path, backend: str) -> None:
    """check and the daemon with every mailbox fault in force on the backend: each pair's verdict and metric
    movement as over EWS (unknown with the mailbox's reason, never lost; slow and clock offsets delivered).

    The check and the daemon run side by side on the one lab (each counts only its own probes, as two
    instances on the same mailboxes do): each waits out the slow mailbox's calibration and searches, and the
    unknown rows' timeouts, once instead of twice."""
    rows = rows_for(backend)
    observed: dict[tuple[str, str], dict[str, str]] = {}
    # (A thread of its own name: Daemon.stop waits for any ThreadPoolExecutor-* thread of the process.)
    with matrix_lab(tmp_path / "lab", backend) as lab, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="matrix-check") as pool:
        config = load_config(matrix_config(lab, tmp_path / "check.yaml", interval=60))
        checked = pool.submit(run_check, config, CheckOptions(poll_seconds=0.5))
        problems = daemon_run(matrix_config(lab, tmp_path / "daemon.yaml", interval=3), rows, observed)
        outcome = checked.result()
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for d in outcome.decisions:
        by_pair.setdefault((d.route, d.smart_host), []).append(d)
    for row in rows:
        found = by_pair.get((row.route, row.smart_host), [])
        observed.setdefault((row.route, row.smart_host), {})["check"] = "; ".join(
            describe(str(d.verdict), d.stage, d.reason, d.latency) for d in found) or "none"
        problems += check_problems(row, found)
    write_table(backend, observed)
    assert not problems, problems
    assert "lost" not in {str(d.verdict) for d in outcome.decisions}
