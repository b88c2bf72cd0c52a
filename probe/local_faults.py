"""Failures of the probe's own host: out of file descriptors, memory, disk or threads (DESIGN.md: reason ``local``).

Such a failure says nothing about a smart host or a mailbox, so it is never a ``send_failed`` nor a mailbox
error: the probe ends ``unknown`` with reason ``local``, ``success`` does not move, and
``mailflow_probe_local_errors_total{resource}`` counts it. :func:`local_fault` recognises one in an
exception and in whatever that exception was raised from (requests and urllib3 wrap the ``OSError`` of a
socket that could not be made two or three levels deep).
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Final

from probe.vocabulary import LocalResource

_ERRNOS: Final = {
    errno.EMFILE: LocalResource.DESCRIPTORS, errno.ENFILE: LocalResource.DESCRIPTORS,
    errno.ENOMEM: LocalResource.MEMORY, errno.ENOBUFS: LocalResource.MEMORY,
    errno.ENOSPC: LocalResource.DISK, errno.EDQUOT: LocalResource.DISK,
}
# SQLite's primary result codes for a full disk and for memory (sqlite3.Error.sqlite_errorcode & 0xff).
_SQLITE_CODES: Final = {13: LocalResource.DISK, 7: LocalResource.MEMORY}
_THREAD_START: Final = "can't start new thread"
_MOST_LINKS: Final = 32

EXPLANATIONS: Final = {
    LocalResource.DESCRIPTORS: "this host ran out of file descriptors (raise LimitNOFILE / ulimit -n)",
    LocalResource.MEMORY: "this host ran out of memory",
    LocalResource.DISK: "this host's disk is full (or over quota)",
    LocalResource.THREADS: "this host cannot start another thread (tasks limit, memory)",
}


def _linked(exc: BaseException) -> list[BaseException]:
    links = [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args[:1]]
    return [e for e in links if isinstance(e, BaseException)]


def _own(exc: BaseException) -> LocalResource | None:
    if isinstance(exc, MemoryError):
        return LocalResource.MEMORY
    if isinstance(exc, RuntimeError) and _THREAD_START in str(exc):
        return LocalResource.THREADS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return _SQLITE_CODES.get(code & 0xFF) if isinstance(code, int) else None
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ERRNOS.get(exc.errno)
    return None


def local_fault(exc: BaseException) -> LocalResource | None:
    """Return what the host ran out of when ``exc`` (or what it came from) is a local fault, else None."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending and len(seen) < _MOST_LINKS:
        current = pending.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        found = _own(current)
        if found is not None:
            return found
        pending += _linked(current)
    return None


def explain(resource: LocalResource) -> str:
    """Return the log's words for a resource the host ran out of."""
    return EXPLANATIONS[resource]
