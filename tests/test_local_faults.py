"""Failures of the probe's own host, made for real in a child process, are recognised for what ran out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probe.local_faults import local_fault
from probe.vocabulary import LocalResource

_CHILD = r"""
import resource, socket, sys, threading
from probe.local_faults import local_fault
kind = sys.argv[1]
try:
    if kind == "descriptors":
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
        held = [socket.socket() for _ in range(64)]
    elif kind == "threads":
        resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
        threads = []
        for _ in range(10_000):
            t = threading.Thread(target=threading.Event().wait, daemon=True)
            t.start()
            threads.append(t)
    elif kind == "memory":
        resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
        hog = bytearray(2 * 2**30)
    elif kind == "disk":
        open("/dev/full", "wb", buffering=0).write(b"x")
    print("no fault")
except BaseException as exc:
    print(local_fault(exc))
"""


@pytest.mark.parametrize("kind", ["descriptors", "threads", "memory", "disk"])
def test_a_real_local_fault_is_recognised(kind: str) -> None:
    """EMFILE under a real open-files limit, a thread that cannot start and a MemoryError under a real address
    space limit, ENOSPC from /dev/full: each is named by what ran out."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.stdout.strip() == kind, proc.stdout + proc.stderr


def test_a_wrapped_local_fault_is_found_and_a_peers_fault_is_not() -> None:
    """requests/urllib3 wrap the socket's OSError two levels deep; a refused connection is no local fault."""
    wrapped = ConnectionError("Max retries exceeded")
    wrapped.__cause__ = OSError(24, "Too many open files")
    assert local_fault(wrapped) is LocalResource.DESCRIPTORS
    assert local_fault(ConnectionRefusedError(111, "Connection refused")) is None
    assert local_fault(RuntimeError("something else")) is None
