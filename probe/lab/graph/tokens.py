"""The lab's Microsoft Entra stand-in for one tenant: OpenID metadata, signing keys, and the client-credentials grant.

It answers what MSAL's confidential client asks of an authority: the OpenID configuration at
``/{tenant}/v2.0/.well-known/openid-configuration`` and tokens at ``/{tenant}/oauth2/v2.0/token`` for an app
registration that proves itself with its client secret or a client assertion (a JWT signed with its
certificate's key, ``x5t#S256`` or ``x5t`` naming the certificate, audience the token endpoint). Access
tokens are RS256 JWTs (PyJWT) for the resource the scope names, with the app role Mail.ReadWrite; the
Graph endpoint checks their signature, audience and expiry. Errors carry Entra's AADSTS codes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from probe.secret import Secret

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ROLE: Final = "Mail.ReadWrite"


class TokenRefused(Exception):  # noqa: N818 - the token endpoint's answer, not a failure of the lab
    """The token endpoint's error: status, OAuth error and Entra's description with its AADSTS code."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code = status, error, code

    def body(self) -> dict[str, Any]:
        """Return the error as Entra words it."""
        return {"error": self.error, "error_description": f"AADSTS{self.code}: {self}", "error_codes": [self.code],
                "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}


def _digest(text: object) -> bytes | None:
    """Decode a thumbprint header, base64url or base64, padded or not."""
    if not isinstance(text, str) or not text:
        return None
    normal = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except ValueError:
        return None


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def app_certificate(name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Make a self-signed RSA certificate for an app registration, as an admin would upload one."""
    key = _rsa_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return cert, key


def pem_of(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> str:
    """Return the certificate and its unencrypted private key as one PEM text (the probe's certificate_file)."""
    return (cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())).decode()


@dataclass(kw_only=True)
class AppRegistration:
    """One app registration of the tenant: its id, its secret, and the certificate it may prove itself with."""

    client_id: str
    secret: Secret
    certificate: x509.Certificate
    certificate_key: rsa.RSAPrivateKey
    roles: tuple[str, ...] = (ROLE,)

    def names(self, header: dict[str, Any]) -> bool:
        """Say whether a client assertion's ``x5t#S256`` (SHA-256) or ``x5t`` (SHA-1) names this certificate.

        Base64url as RFC 7515 has it, or plain base64 with padding, as MSAL Python sends it: Entra takes both.
        """
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        wanted = {"x5t#S256": hashlib.sha256(der).digest(), "x5t": hashlib.sha1(der).digest()}  # noqa: S324
        return any(_digest(header.get(name)) == digest for name, digest in wanted.items())


@dataclass(kw_only=True)
class Tenant:
    """The authority of one lab tenant, at ``base`` (https://127.0.0.1:PORT); its apps; its signing key."""

    tenant_id: str
    base: str = ""
    apps: dict[str, AppRegistration] = field(default_factory=dict)
    token_lifetime: float = 3599.0
    key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)
    kid: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def issuer(self) -> str:
        """Return the tokens' issuer (the v2.0 authority)."""
        return f"{self.base}/{self.tenant_id}/v2.0"

    @property
    def token_endpoint(self) -> str:
        """Return the token endpoint's URL."""
        return f"{self.base}/{self.tenant_id}/oauth2/v2.0/token"

    def openid_configuration(self) -> dict[str, Any]:
        """Return the OpenID Provider metadata MSAL reads before its first token."""
        root = f"{self.base}/{self.tenant_id}"
        return {
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer,
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
        }

    def jwks(self) -> dict[str, Any]:
        """Return the signing keys (JWKS) that tokens are checked against."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "kty": "RSA"}]}

    def grant(self, form: dict[str, str], *, resource: str) -> dict[str, Any]:
        """Answer a client-credentials request; raise TokenRefused as Entra would."""
        if form.get("grant_type") != "client_credentials":
            raise TokenRefused(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            raise TokenRefused(400, "unauthorized_client", 700016, f"Application with identifier "
                               f"'{form.get('client_id', '')}' was not found in the directory '{self.tenant_id}'.")
        self._authenticate(app, form)
        if form.get("scope", "") != f"{resource}/.default":
            raise TokenRefused(400, "invalid_resource", 500011, f"The resource principal named "
                               f"{form.get('scope', '').removesuffix('/.default')} was not found in the tenant.")
        now = int(time.time())
        claims = {"aud": resource, "iss": self.issuer, "iat": now, "nbf": now, "exp": now + int(self.token_lifetime),
                  "appid": app.client_id, "azp": app.client_id, "tid": self.tenant_id, "roles": list(app.roles),
                  "sub": app.client_id, "oid": app.client_id, "idtyp": "app", "ver": "2.0"}
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return {"token_type": "Bearer", "expires_in": int(self.token_lifetime),
                "ext_expires_in": int(self.token_lifetime), "access_token": token}

    def _authenticate(self, app: AppRegistration, form: dict[str, str]) -> None:
        if "client_secret" in form:
            if not secrets.compare_digest(form["client_secret"].encode(), app.secret.reveal().encode()):
                raise TokenRefused(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the "
                                   "secret being sent in the request is the client secret value, not the client "
                                   "secret ID, for a secret added to app '" + app.client_id + "'.")
            return
        if form.get("client_assertion_type") != ASSERTION_TYPE or "client_assertion" not in form:
            raise TokenRefused(401, "invalid_client", 7000218, "The request body must contain the following "
                               "parameter: 'client_assertion' or 'client_secret'.")
        self._check_assertion(app, form["client_assertion"])

    def _check_assertion(self, app: AppRegistration, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
            if not app.names(header):
                raise TokenRefused(401, "invalid_client", 700027, "The certificate with identifier used to sign the "
                                   "client assertion is not registered on application.")
            claims = jwt.decode(assertion, app.certificate.public_key(),  # type: ignore[arg-type]
                                algorithms=["RS256", "PS256"], audience=self.token_endpoint, issuer=app.client_id,
                                options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.PyJWTError as exc:
            raise TokenRefused(401, "invalid_client", 700027, f"Client assertion failed signature validation: "
                               f"{type(exc).__name__}.") from exc
        if claims.get("sub") != app.client_id:
            raise TokenRefused(401, "invalid_client", 700023, "Client assertion audience or subject is invalid.")

    def check_token(self, token: str, *, resource: str) -> dict[str, Any] | str:
        """Return a valid access token's claims for ``resource``, or why it is refused (Graph's message)."""
        try:
            claims: dict[str, Any] = jwt.decode(token, self.key.public_key(), algorithms=["RS256"], audience=resource,
                                                issuer=self.issuer, options={"require": ["exp", "aud", "iss"]})
        except jwt.ExpiredSignatureError:
            return "Lifetime validation failed, the token is expired."
        except jwt.InvalidAudienceError:
            return "Invalid audience."
        except jwt.PyJWTError:
            return "Access token validation failure."
        if ROLE not in claims.get("roles", []):
            return "Access is denied. Check credentials and try again."
        return claims
