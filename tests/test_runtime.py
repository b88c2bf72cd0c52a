"""The daemon caps glibc's malloc arenas, so its threads do not each keep a heap of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 16
# Each thread allocates while the others do (a barrier either side), then glibc prints one "Arena N:" per arena.
WORKLOAD = f"""
import ctypes, sys, threading
sys.path.insert(0, {str(ROOT)!r})
from probe.runtime import limit_malloc_arenas
print("applied", limit_malloc_arenas() if sys.argv[1] == "limit" else None, file=sys.stderr, flush=True)
barrier = threading.Barrier({THREADS})
def work():
    barrier.wait()
    keep = [bytearray(50_000) for _ in range(20)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range({THREADS})]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str, **env: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, timeout=60,
                          check=True, env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env)
    applied = next(line for line in done.stderr.splitlines() if line.startswith("applied"))
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines()), applied


def test_without_the_cap_busy_threads_each_get_an_arena() -> None:
    """The baseline the cap is for: glibc gives concurrent threads arenas of their own (8 per CPU at most)."""
    arenas, _ = _arenas("none")
    assert arenas >= min(THREADS, 8 * (os.cpu_count() or 1), 4)


def test_the_cap_keeps_the_daemon_to_two_arenas() -> None:
    """limit_malloc_arenas() (what `mailflow-probe run` calls first) holds glibc to two arenas."""
    arenas, applied = _arenas("limit")
    assert applied == "applied True"
    assert arenas <= 2


def test_an_arena_limit_set_by_the_operator_is_left_as_it_is() -> None:
    """MALLOC_ARENA_MAX in the environment wins: the daemon does not override it."""
    arenas, applied = _arenas("limit", MALLOC_ARENA_MAX="3")
    assert applied == "applied False"
    assert arenas == 3
