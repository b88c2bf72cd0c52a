"""The files the probe makes or keeps (signing key, state file): usable by this process, checked at load.

``validate`` (every load) says now what ``run`` would otherwise find only at start: a state file that is a
directory or someone else's file, a directory the probe cannot write in, a key it cannot read or create.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from probe.config.nodes import Context, Section, byte_size
from probe.signing import KEY_BYTES, MAX_KEY_BYTES

_SQLITE_HEADER: Final = b"SQLite format 3\x00"


def _shown(ctx: Context, section: Section, key: str) -> Path:
    """Return the file as given, relative to the config's directory (as errors show paths), not made absolute."""
    return ctx.base / Path(str(section.items[key].node.value)).expanduser()


def _creatable(ctx: Context, section: Section, key: str, file: Path) -> None:
    """Raise unless a missing ``file`` can be created: its directory writable, or creatable in an ancestor."""
    item = section.items[key]
    parent = file.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ctx.error(item.node, section.at(key), f"cannot create {file}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "" if parent == file.parent else f" (nor its directory {file.parent})"
        raise ctx.error(item.node, section.at(key), f"cannot create {file}{what}: {parent} is not writable")


def _existing(ctx: Context, section: Section, key: str) -> tuple[Path, os.stat_result] | None:
    """Return the file and its status; None when it does not exist and can be created; raise otherwise."""
    item = section.items[key]
    file = _shown(ctx, section, key)
    try:
        status = file.stat()
    except FileNotFoundError:
        _creatable(ctx, section, key, file)
        return None
    except OSError as exc:
        raise ctx.error(item.node, section.at(key), f"cannot use {file}: {exc.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise ctx.error(item.node, section.at(key), f"{file} is a directory, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise ctx.error(item.node, section.at(key), f"{file} is not a regular file")
    return file, status


def _head(ctx: Context, section: Section, key: str, file: Path, size: int) -> bytes:
    """Return the first ``size`` bytes of ``file``, or raise naming why it cannot be read."""
    try:
        with file.open("rb") as stream:
            return stream.read(size)
    except OSError as exc:
        raise ctx.error(section.items[key].node, section.at(key), f"cannot read {file}: {exc.strerror}") from None


def check_signing_key(ctx: Context, section: Section) -> None:
    """Raise unless the signing key can be read (a key of a sane size) or created; warn if others can read it."""
    key = "signing_key_file"
    item = section.items[key]
    found = _existing(ctx, section, key)
    if found is None:
        return
    file, status = found
    if status.st_size > MAX_KEY_BYTES:
        raise ctx.error(item.node, section.at(key), f"{file} is {byte_size(status.st_size)}, more than a signing "
                        f"key file holds ({byte_size(MAX_KEY_BYTES)} at most); is this the right file?")
    if not os.access(file, os.R_OK):
        raise ctx.error(item.node, section.at(key), f"cannot read {file}: permission denied")
    size = len(_head(ctx, section, key, file, KEY_BYTES))
    if size < KEY_BYTES:
        what = "empty" if size == 0 else f"too short ({size} bytes)"
        raise ctx.error(item.node, section.at(key), f"{file} is {what}; a signing key has at least {KEY_BYTES} "
                        "bytes (delete the file to have a new key made)")
    if status.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        ctx.warn(item.node, section.at(key), f"{file} can be read by other users (mode "
                 f"{stat.S_IMODE(status.st_mode):04o}); chmod 600 it")


def check_state_file(ctx: Context, section: Section) -> None:
    """Raise unless the state file can be opened for writing (or created), with its directory writable.

    SQLite writes its journal (``-wal``, ``-shm``) beside the file, so the directory must be writable too.
    """
    key = "state_file"
    item = section.items[key]
    found = _existing(ctx, section, key)
    if found is None:
        return
    file, status = found
    if not os.access(file, os.R_OK | os.W_OK):
        raise ctx.error(item.node, section.at(key), f"cannot write {file}: permission denied")
    if not os.access(file.parent, os.W_OK | os.X_OK):
        raise ctx.error(item.node, section.at(key), f"cannot write in {file.parent} (SQLite keeps its journal "
                        "beside the state file): permission denied")
    if status.st_size and _head(ctx, section, key, file, len(_SQLITE_HEADER)) != _SQLITE_HEADER:
        raise ctx.error(item.node, section.at(key), f"{file} is not a SQLite database; give state_file a path "
                        "of its own")
