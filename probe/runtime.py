"""Process-wide settings of the long-running daemon."""

from __future__ import annotations

import ctypes
import os
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
