"""Every benchmark script still runs end to end against the lab, at a smoke size (no figures are judged here).

Benchmarks are measured by hand (docs/benchmarks.md); this only keeps the scripts working as the probe
changes: each runs in its own process at its smallest size, must exit 0, must print its table, and must
leave docs/benchmarks.md alone.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "benchmarks.md"
SCRIPTS = {
    "submit": (["bench/submit.py", "--quick", "--no-report"],
               "| submit(): the whole submit step, a full TLS handshake each |"),
    "scale": (["bench/scale.py", "--quick", "--no-report"], "| daemon / submit step |"),
    "connector": (["bench/connector.py", "--quick"], "| connector, submit: smtp |"),
    "batching": (["bench/batching.py", "--quick", "--no-report"], "| batched (the probe) |"),
    "accuracy": (["bench/accuracy.py", "--quick", "--no-report"], "| streaming |"),
    "accuracy_imap": (["bench/accuracy.py", "--quick", "--no-report", "--backend", "imap"], "| streaming |"),
    "accuracy_graph": (["bench/accuracy.py", "--quick", "--no-report", "--backend", "graph"], "| streaming |"),
    "scale_imap": (["bench/scale.py", "--quick", "--no-report", "--backend", "imap"], "| 20 | 5 s x 1 |"),
    "scale_graph": (["bench/scale.py", "--quick", "--no-report", "--backend", "graph"], "| 20 | 5 s x 1 |"),
    "metrics_render": (["bench/metrics_render.py", "--quick"], "| 500 |"),
    "config_load": (["bench/config_load.py", "--quick"], "| merge bomb 300x300 |"),
    "lab_ews": (["bench/lab_ews.py", "--items", "300", "--clients", "2", "--requests", "5"], "| 2 |"),
    "threads": (["bench/threads.py", "--quick"], "| the whole process |"),
    "slow_clients": (["bench/slow_clients.py", "--quick"], "| slow clients cut by the server |"),
    "auth_flood": (["bench/auth_flood.py", "--quick"], "| a new wrong password each request |"),
    "ews_internals": (["bench/ews_internals.py", "--quick", "--no-report"], "| without responses read whole |"),
    "soak": (["bench/soak.py", "--quick"], "PASS"),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_benchmark_script_runs_at_its_smoke_size_and_prints_its_table(name: str, tmp_path: Path) -> None:
    """The script exits 0, prints its table (a row it always has), and does not rewrite the report."""
    args, expected = SCRIPTS[name]
    before = _digest(REPORT)
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=280,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{output[-3000:]}"
    assert expected in done.stdout, f"{name} did not print {expected!r}:\n{output[-3000:]}"
    assert _digest(REPORT) == before, f"{name} rewrote docs/benchmarks.md at its smoke size"
