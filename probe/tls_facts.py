"""What a TLS session to a smart host showed: version, cipher and the peer certificate's facts."""

from __future__ import annotations

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


def tls_facts_of(sock: ssl.SSLSocket, *, verified: bool) -> TlsFacts:
    """Return the facts of an established TLS socket (whether or not its certificate was verified)."""
    cipher = sock.cipher()
    der = sock.getpeercert(binary_form=True)
    not_after: datetime | None = None
    subject: str | None = None
    issuer: str | None = None
    if der:
        cert = _parse(der)
        if cert is not None:
            not_after = cert.not_valid_after_utc
            subject = cert.subject.rfc4514_string()
            issuer = cert.issuer.rfc4514_string()
    return TlsFacts(
        version=sock.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        not_after=not_after,
        subject=subject,
        issuer=issuer,
        verified=verified,
    )


def _parse(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:  # a certificate the handshake took but cryptography cannot read
        return None
