"""What a TLS session to a smart host showed: version, cipher and the peer certificate's facts."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509


@dataclass(frozen=True, kw_only=True)
class TlsFacts:
    """The TLS facts of one connection; ``not_after`` is the peer certificate's expiry, in UTC."""

    version: str
    cipher: str
    not_after: datetime | None
    subject: str | None
    issuer: str | None
    verified: bool
    resumed: bool = False  # the session of an earlier, verified, handshake was resumed (probe.tls_sessions)


def tls_facts_of(sock: ssl.SSLSocket, *, verified: bool) -> TlsFacts:
    """Return the facts of an established TLS socket (whether or not its certificate was verified)."""
    cipher = sock.cipher()
    not_after, subject, issuer = _certificate_facts(sock.getpeercert(binary_form=True) or b"")
    return TlsFacts(
        version=sock.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        not_after=not_after,
        subject=subject,
        issuer=issuer,
        verified=verified,
        resumed=bool(sock.session_reused),
    )


@functools.lru_cache(maxsize=4096)
def _certificate_facts(der: bytes) -> tuple[datetime | None, str | None, str | None]:
    """Return (expiry, subject, issuer) of a DER certificate: parsed once per distinct certificate.

    Parsing costs more than half a millisecond and a smart host shows the same certificate on every
    probe; the cache is keyed by the certificate's bytes, so a new certificate is always read afresh.
    """
    if not der:
        return None, None, None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:  # a certificate the handshake took but cryptography cannot read
        return None, None, None
    return cert.not_valid_after_utc, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
