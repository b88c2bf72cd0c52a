"""App-only tokens for Microsoft Graph with MSAL: client secret or certificate, cached and renewed before expiry.

MSAL's confidential client keeps the token in its cache and hands it out until five minutes before it
expires, then fetches a new one; ``drop()`` forgets it when Graph refuses it anyway (401). Instance discovery
(MSAL asking Microsoft whether the authority is genuine) stays on unless the config turns it off, which the
loader allows for a loopback authority (the lab) only: a real authority never needs it off.
"""

from __future__ import annotations

import threading
from typing import Any

import msal
import requests
import requests.adapters
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from probe.config import GraphConfig
from probe.vocabulary import MailboxReason


class GraphAuthError(Exception):
    """No token: the authority refused the app (reason unauthorized) or could not be asked; the text is redacted."""

    def __init__(self, reason: MailboxReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def certificate_credential(pem: bytes) -> dict[str, str]:
    """Return MSAL's credential for a PEM holding the app's certificate and private key (SHA-256 thumbprint)."""
    certificate = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, password=None)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"private_key": private,
            "public_certificate": certificate.public_bytes(serialization.Encoding.PEM).decode()}


class PinnedAdapter(requests.adapters.HTTPAdapter):
    """Verify against the mailbox's CA and bound each request in time, whatever the environment says.

    (requests lets REQUESTS_CA_BUNDLE override a session's own ``verify``; an adapter's ``send`` has the last word.)
    """

    def __init__(self, *, verify: bool | str, timeout: float) -> None:
        self._pinned_verify, self._pinned_timeout = verify, timeout
        super().__init__(max_retries=0)

    def send(self, request: requests.PreparedRequest,  # noqa: PLR0917 - HTTPAdapter.send's signature
             stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        """Send with the pinned verification and timeout."""
        return super().send(request, stream=stream, timeout=self._pinned_timeout, verify=self._pinned_verify,
                            cert=cert, proxies=proxies)


def pinned_session(graph: GraphConfig) -> requests.Session:
    """Return a session for the authority: the mailbox's CA (or the system's), its timeout."""
    session = requests.Session()
    verify: bool | str = str(graph.ca_file) if graph.verify and graph.ca_file else graph.verify
    session.mount("https://", PinnedAdapter(verify=verify, timeout=graph.timeout))
    return session


class GraphTokens:
    """The app's token for one mailbox's Graph endpoint; thread-safe."""

    def __init__(self, graph: GraphConfig) -> None:
        self._graph = graph
        self._scopes = [graph.endpoint.rstrip("/") + "/.default"]
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:  # made on first use: MSAL reads the authority's metadata then
            graph = self._graph
            credential: Any = (graph.client_secret.reveal() if graph.client_secret is not None
                               else certificate_credential(graph.certificate_file.read_bytes())  # type: ignore[union-attr]
                               )
            self._app = msal.ConfidentialClientApplication(
                graph.client_id, client_credential=credential,
                authority=f"{graph.authority.rstrip('/')}/{graph.tenant_id}",
                instance_discovery=None if graph.instance_discovery else False,
                http_client=pinned_session(graph), token_cache=msal.TokenCache())
        return self._app

    def token(self) -> str:
        """Return a valid access token (from MSAL's cache while it lasts); raise GraphAuthError when there is none."""
        with self._lock:
            try:
                result = self._application().acquire_token_for_client(scopes=self._scopes)
            except ValueError as exc:  # MSAL's word for an authority it could not read
                self._app = None
                raise GraphAuthError(MailboxReason.PROTOCOL, f"the authority is unusable: {exc}") from exc
        token = result.get("access_token") if isinstance(result, dict) else None
        if isinstance(token, str) and token:
            return token
        error = str(result.get("error", "no token")) if isinstance(result, dict) else "no token"
        codes = result.get("error_codes", []) if isinstance(result, dict) else []
        reason = MailboxReason.UNAUTHORIZED if error in ("invalid_client", "unauthorized_client", "invalid_grant",
                                                         "invalid_request", "invalid_scope") \
            else MailboxReason.SERVER_ERROR
        raise GraphAuthError(reason, f"the authority gave no token: {error} {codes}".strip())

    def drop(self) -> None:
        """Forget the cached token (Graph refused it): the next ``token()`` asks the authority again."""
        with self._lock:
            if self._app is not None:
                self._app.remove_tokens_for_client()
