"""Authentication of the lab's EWS endpoints: Basic, and NTLM/Negotiate served by pyspnego."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import spnego
from spnego.exceptions import NegotiateOptions, SpnegoError

CONNECTION_SCHEMES: Final = ("NTLM", "Negotiate")
_USER_FILE_ENV: Final = "NTLM_USER_FILE"


class NtlmUserFile:
    """The one NTLM credential file of this process (pyspnego reads it from a global env var).

    Every EWS server of the process registers its users here; the file holds their union, so servers never
    race over the env var. A username registered by two servers with different passwords keeps the first.
    """

    _lock = threading.Lock()
    _owners: dict[int, dict[str, str]] = {}
    _path: Path | None = None

    @classmethod
    def register(cls, owner: int, users: dict[str, str]) -> None:
        """Add the users of one server and rewrite the file."""
        with cls._lock:
            cls._owners[owner] = dict(users)
            cls._write()

    @classmethod
    def unregister(cls, owner: int) -> None:
        """Remove the users of one server and rewrite the file."""
        with cls._lock:
            cls._owners.pop(owner, None)
            cls._write()

    @classmethod
    def _write(cls) -> None:
        if cls._path is None:
            handle, name = tempfile.mkstemp(prefix="lab-ews-ntlm-", suffix=".users")
            os.close(handle)
            cls._path = Path(name)
            cls._path.chmod(0o600)
        seen: set[str] = set()
        lines: list[str] = []
        for users in cls._owners.values():
            for username, password in users.items():
                line = _user_line(username, password)
                key = line.rsplit(":", 1)[0].upper()
                if key not in seen:
                    seen.add(key)
                    lines.append(line)
        tmp = cls._path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(cls._path)
        os.environ[_USER_FILE_ENV] = str(cls._path)


def _user_line(username: str, password: str) -> str:
    """Return the pyspnego (Heimdal) line DOMAIN:USER:PASSWORD for a username."""
    domain, _, user = username.rpartition("\\")
    return f"{domain}:{user}:{password}"


def canonical_user(username: str) -> str:
    """Return a username in a form to compare case-insensitively."""
    return username.strip().lower()


@dataclass
class ConnectionAuth:
    """The authentication state of one TCP connection (NTLM authenticates connections, not requests)."""

    user: str | None = None
    context: Any = None
    scheme: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthResult:
    """The outcome of one Authorization header: a user, a challenge to send with 401, or a plain 401."""

    user: str | None = None
    challenge: str | None = None


class Authenticator:
    """Check Basic credentials and drive NTLM/Negotiate handshakes against one server's users."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {canonical_user(u): p for u, p in users.items()}

    def basic(self, token: str) -> AuthResult:
        """Check a Basic token."""
        try:
            username, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return AuthResult()
        expected = self._users.get(canonical_user(username))
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return AuthResult()
        return AuthResult(user=username)

    def connection(self, scheme: str, token: str, state: ConnectionAuth) -> AuthResult:
        """Take one leg of an NTLM/Negotiate handshake on a connection."""
        try:
            data = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return AuthResult()
        if state.context is None or state.scheme != scheme or data.startswith(b"NTLMSSP\x00\x01"):
            protocol = "ntlm" if scheme == "NTLM" else "negotiate"
            state.context = spnego.server(protocol=protocol, options=NegotiateOptions.use_ntlm)
            state.scheme = scheme
        try:
            out = state.context.step(data)
        except (SpnegoError, ValueError, KeyError) as exc:
            state.context = None
            state.extra["error"] = str(exc)
            return AuthResult()
        if not state.context.complete:
            return AuthResult(challenge=f"{scheme} {base64.b64encode(out or b'').decode()}")
        principal = str(state.context.client_principal or "")
        state.context = None
        if canonical_user(principal) not in self._users:
            return AuthResult()
        state.user = principal
        return AuthResult(user=principal)

    def check(self, header: str | None, state: ConnectionAuth) -> AuthResult:
        """Authenticate a request from its Authorization header and its connection's state."""
        if not header:
            return AuthResult(user=state.user)
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "basic":
            return self.basic(token.strip())
        for known in CONNECTION_SCHEMES:
            if scheme.lower() == known.lower():
                return self.connection(known, token.strip(), state)
        return AuthResult()
