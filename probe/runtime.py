"""Process-wide settings of the long-running daemon."""

from __future__ import annotations

import ctypes
import os
import resource
from typing import Final

M_ARENA_MAX: Final = -8  # glibc's mallopt() parameter number for the arena limit
ARENAS: Final = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``, unless ``MALLOC_ARENA_MAX`` already says; True when applied.

    glibc gives busy threads arenas of their own, up to 8 per CPU, and each keeps freed memory of its
    own: with a send pool of 32 threads, the watchers and the web server, that is most of the daemon's
    resident set at thousands of pairs (bench/scale.py: 245 -> 198 MiB at 2,000 pairs). Call it before
    any thread starts. Elsewhere than glibc it does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to load, or no mallopt in them
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit, as Go programs do at start; return (soft, hard).

    systemd and most shells start services with a soft ``nofile`` of 1,024 and a far higher hard limit; the
    soft one is what runs out under many connections (each probe, each mailbox connection and each web
    client holds a descriptor). Where the limit cannot be read or raised it is left as it is.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard
