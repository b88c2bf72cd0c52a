"""The probe's signing key: 32 random bytes in a file only its owner can read."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Final

KEY_BYTES: Final = 32
MAX_KEY_BYTES: Final = 64 << 10  # a larger file is not a key: refused, never read whole
_log = logging.getLogger(__name__)


class SigningKeyError(Exception):
    """The signing key file cannot be made or used; the message names the file."""


def _create(path: Path) -> bytes | None:
    """Write a new key to ``path`` (mode 0600) and return it, or None if the file appeared meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "wb") as stream:
        stream.write(key)
        stream.flush()
        os.fsync(stream.fileno())
    return key


def _read(path: Path) -> bytes:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise SigningKeyError(f"signing key file {path} is not a regular file")
    with path.open("rb") as stream:
        key = stream.read(MAX_KEY_BYTES + 1)  # bounded: a huge file is refused, not read whole
    if len(key) > MAX_KEY_BYTES:
        raise SigningKeyError(f"signing key file {path} is larger than {MAX_KEY_BYTES} bytes; is this the right file?")
    if len(key) < KEY_BYTES:
        what = "empty" if not key else f"too short ({len(key)} bytes)"
        raise SigningKeyError(f"signing key file {path} is {what}; it needs at least {KEY_BYTES} bytes "
                              "(delete it to have a new key made)")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _log.warning("signing key file %s can be read by other users (mode %04o); chmod 600 it",
                     path, stat.S_IMODE(mode))
    return key


def load_or_create_key(path: Path) -> bytes:
    """Return the signing key in ``path``, creating the file (0600, with its directories) when missing."""
    try:
        if not path.exists():
            created = _create(path)
            if created is not None:
                return created
        return _read(path)
    except SigningKeyError:
        raise
    except OSError as exc:
        raise SigningKeyError(f"signing key file {path}: {exc.strerror or exc}") from None
