"""TLS and basic auth for the web listener, in the Prometheus exporter-toolkit web-config format.

```yaml
tls_server_config:
  cert_file: server.crt          # relative paths are relative to this file
  key_file: server.key
  client_auth_type: NoClientCert # or VerifyClientCertIfGiven / RequireAndVerifyClientCert (+ client_ca_file)
  min_version: TLS12             # TLS12 | TLS13
  max_version: TLS13
http_server_config:
  headers: {X-Frame-Options: deny}
basic_auth_users:
  alice: $2y$10$...              # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')
```
Mistakes are ``ConfigError``s naming the file, line and field. Keys the toolkit knows but this
listener does not implement (cipher_suites, curve_preferences, client_allowed_sans, ...) are refused
rather than silently ignored. The listener speaks HTTP/1.1 only: ``http2: false`` says so and is accepted,
``http2: true`` is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import bcrypt
import yaml

from probe.config import ConfigError

_BCRYPT: Final = re.compile(r"\$2[aby]?\$\d{2}\$[./A-Za-z0-9]{53}")
_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH: Final = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                       "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_TOP: Final = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS: Final = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
_TLS_UNSUPPORTED: Final = ("cert", "key", "client_ca", "client_allowed_sans", "cipher_suites",
                           "prefer_server_cipher_suites", "curve_preferences")
_HTTP_KEYS: Final = ("headers", "http2")
CACHE_SIZE: Final = 100  # exporter-toolkit's cache size


class VerdictCache:
    """Outcomes of bcrypt checks, keyed by user, hash and password, as exporter-toolkit caches them.

    A bcrypt check costs about 0.1 s of CPU by design; a scraper sends the same credentials every time. The
    key is a keyed BLAKE2b digest (the password itself is not kept). Credentials that passed and those that
    failed are kept apart, each up to ``size``: wrong passwords, however many, never push out right ones.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._salt = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._passed: dict[bytes, None] = {}
        self._failed: dict[bytes, None] = {}

    def key(self, user: str, hashed: bytes, password: str) -> bytes:
        """Return the cache key of one (user, hash, password)."""
        data = b"\0".join((user.encode("utf-8"), hashed, password.encode("utf-8")))
        return hashlib.blake2b(data, key=self._salt, digest_size=32).digest()

    def get(self, key: bytes) -> bool | None:
        """Return the cached outcome, or None."""
        with self._lock:
            if key in self._passed:
                return True
            return False if key in self._failed else None

    def put(self, key: bytes, passed: bool) -> None:
        """Remember an outcome; when full, forget the oldest of its kind."""
        with self._lock:
            kept = self._passed if passed else self._failed
            if len(kept) >= self._size:
                kept.pop(next(iter(kept)))
            kept[key] = None


@dataclass(frozen=True)
class WebConfig:
    """What the listener does beyond plain HTTP: TLS, basic auth, extra response headers."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    cache: VerdictCache = field(default_factory=VerdictCache, compare=False, repr=False)

    @property
    def auth_required(self) -> bool:
        """Return whether requests must carry basic auth credentials."""
        return bool(self.users)

    def _lookup(self, header: str | None) -> tuple[bytes | None, bytes, str, bytes]:
        """Return the user's hash (None: no such user), the hash to check against, the password, the cache key."""
        user, password = _basic_credentials(header)
        hashed = self.users.get(user) if user is not None else None
        # An unknown user still costs one bcrypt check, so timing does not tell which users exist.
        reference = hashed if hashed is not None else next(iter(self.users.values()))
        return hashed, reference, password, self.cache.key(user or "", reference, password)

    def cached_verdict(self, header: str | None) -> bool | None:
        """Return whether an ``Authorization`` header is let in, when that is known without bcrypt; else None."""
        if not self.users:
            return True
        if _basic_credentials(header)[0] is None:
            return False  # no credentials at all: nothing to check
        return self.cache.get(self._lookup(header)[3])

    def verify(self, header: str | None) -> bool:
        """Check an ``Authorization`` header with bcrypt and cache the outcome."""
        if not self.users:
            return True
        hashed, reference, password, key = self._lookup(header)
        try:
            matches = bcrypt.checkpw(password.encode("utf-8"), reference)
        except ValueError:
            matches = False
        passed = matches and hashed is not None
        self.cache.put(key, passed)
        return passed

    def authorized(self, header: str | None) -> bool:
        """Return whether an ``Authorization`` header names a user whose bcrypt hash the password matches."""
        cached = self.cached_verdict(header)
        return cached if cached is not None else self.verify(header)


def _basic_credentials(header: str | None) -> tuple[str | None, str]:
    if not header or header[:6].lower() != "basic ":
        return None, ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, "")


@dataclass
class _Reader:
    file: Path

    def error(self, node: yaml.Node | None, path: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, field_path=path or None)

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...],
                unsupported: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, path, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            if key in unsupported:
                raise self.error(key_node, where, "is not supported by mailflow-probe's listener")
            if allowed and key not in allowed:
                raise self.error(key_node, where, f"unknown key; expected one of {', '.join(allowed)}")
            if key in out:
                raise self.error(key_node, where, "given twice")
            out[key] = value
        return out

    def text(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" or not node.value:
            raise self.error(node, path, "expected a non-empty string")
        return str(node.value)

    def file_path(self, node: yaml.Node, path: str) -> Path:
        given = Path(self.text(node, path)).expanduser()
        resolved = given if given.is_absolute() else self.file.parent / given
        if not resolved.is_file():
            raise self.error(node, path, f"no such file: {resolved}")
        return resolved

    def choice(self, node: yaml.Node, path: str, options: tuple[str, ...]) -> str:
        value = self.text(node, path)
        if value not in options:
            raise self.error(node, path, f"{value!r} is not one of {', '.join(options)}")
        return value


def _tls_context(reader: _Reader, node: yaml.Node) -> ssl.SSLContext:
    path = "tls_server_config"
    keys = reader.mapping(node, path, _TLS_KEYS, _TLS_UNSUPPORTED)
    for required in ("cert_file", "key_file"):
        if required not in keys:
            raise reader.error(node, f"{path}.{required}", "is required when tls_server_config is given")
    cert = reader.file_path(keys["cert_file"], f"{path}.cert_file")
    key = reader.file_path(keys["key_file"], f"{path}.key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if name in keys:
            setattr(ctx, attr, _VERSIONS[reader.choice(keys[name], f"{path}.{name}", tuple(_VERSIONS))])
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise reader.error(keys["cert_file"], f"{path}.cert_file",
                           f"cannot use {cert} with {key}: {exc.strerror or exc}") from None
    _client_auth(reader, ctx, keys, node)
    return ctx


def _client_auth(reader: _Reader, ctx: ssl.SSLContext, keys: dict[str, yaml.Node], node: yaml.Node) -> None:
    path = "tls_server_config"
    mode = "NoClientCert"
    if "client_auth_type" in keys:
        mode = reader.choice(keys["client_auth_type"], f"{path}.client_auth_type", tuple(_CLIENT_AUTH))
    if mode == "NoClientCert":
        return
    if "client_ca_file" not in keys:
        raise reader.error(node, f"{path}.client_ca_file", f"is required with client_auth_type {mode}")
    ca = reader.file_path(keys["client_ca_file"], f"{path}.client_ca_file")
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise reader.error(keys["client_ca_file"], f"{path}.client_ca_file", f"cannot load {ca}: {exc}") from None
    ctx.verify_mode = _CLIENT_AUTH[mode]


def _users(reader: _Reader, node: yaml.Node) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, value in reader.mapping(node, "basic_auth_users", ()).items():
        where = f"basic_auth_users.{user}"
        hashed = reader.text(value, where)
        if not _BCRYPT.fullmatch(hashed):
            raise reader.error(value, where, "expected a bcrypt hash ($2y$..., e.g. from htpasswd -nB), "
                               "not a plain password")
        users[user] = hashed.encode("ascii")
    return users


def _headers(reader: _Reader, node: yaml.Node) -> dict[str, str]:
    keys = reader.mapping(node, "http_server_config", _HTTP_KEYS)
    if "http2" in keys:
        _http2_off(reader, keys["http2"])
    if "headers" not in keys:
        return {}
    headers = reader.mapping(keys["headers"], "http_server_config.headers", ())
    return {name: reader.text(value, f"http_server_config.headers.{name}") for name, value in headers.items()}


def _http2_off(reader: _Reader, node: yaml.Node) -> None:
    path = "http_server_config.http2"
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    if value in ("true", "True", "TRUE"):
        raise reader.error(node, path, "HTTP/2 is not supported by mailflow-probe's listener (HTTP/1.1 only); "
                           "remove the key or set it to false")
    if value not in ("false", "False", "FALSE"):
        raise reader.error(node, path, "expected true or false")


def load_web_config(file: Path) -> WebConfig:
    """Read an exporter-toolkit web config file; raise ``ConfigError`` naming the file, line and field."""
    reader = _Reader(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the web config: {getattr(exc, 'strerror', None) or exc}",
                          file=file) from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", file=file,
                          line=mark.line + 1 if mark is not None else None) from None
    if root is None:
        return WebConfig(source=file)
    top = reader.mapping(root, "", _TOP)
    return WebConfig(
        tls=_tls_context(reader, top["tls_server_config"]) if "tls_server_config" in top else None,
        users=_users(reader, top["basic_auth_users"]) if "basic_auth_users" in top else {},
        headers=_headers(reader, top["http_server_config"]) if "http_server_config" in top else {},
        source=file,
    )
