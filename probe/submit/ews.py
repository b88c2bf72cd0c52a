"""A connector probe sent from the sender's own mailbox over EWS: CreateItem with MessageDisposition SendOnly.

exchangelib's ``Message.send(save_copy=False)`` does it (public API); the probe message goes as MimeContent,
so the tag header, Message-ID and body are the probe's own and the source forest's transport adds only what
Exchange adds on submission. The mailbox's ``ews:`` section gives the endpoint, credentials, CA and timeout,
applied through a protocol of the submission's own (probe.mailbox.ews_internals.own_protocol, the fenced
reach into exchangelib), so nothing global in exchangelib is touched.

The submission's moment of acceptance, from which latency runs, is when the NoError response to CreateItem
arrived (on the probe's clock, as an SMTP submission's is the final 250's): the source server had taken
the message by then. The response's HTTP Date (the source server's clock) is kept in the detail.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import requests
import requests.adapters
from exchangelib import DELEGATE, Account, Build, Configuration, Credentials, FailFast, Message, Version
from exchangelib.errors import ResponseMessageError
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.transport import BASIC, NTLM

from probe.config import EwsConfig, MailboxConfig
from probe.local_faults import local_fault
from probe.mailbox.ews_errors import classify, describe
from probe.mailbox.ews_internals import own_protocol
from probe.secret import redact
from probe.smtp import SubmitResult
from probe.vocabulary import MailboxReason, SendReason, Stage

_STAGES: Final[dict[MailboxReason, tuple[Stage, SendReason]]] = {
    # an EWS failure in the send vocabulary: where (connect, auth, starttls for TLS, data for the request) and why
    MailboxReason.UNREACHABLE: (Stage.CONNECT, SendReason.REFUSED),
    MailboxReason.UNAUTHORIZED: (Stage.AUTH, SendReason.AUTH_FAILED),
    MailboxReason.THROTTLED: (Stage.DATA, SendReason.TEMPFAIL),
    MailboxReason.SERVER_ERROR: (Stage.DATA, SendReason.TEMPFAIL),
    MailboxReason.PROTOCOL: (Stage.DATA, SendReason.PROTOCOL),
}


class _Exchanges:
    """What the submission's HTTP exchanges were: a transcript line each, and when the last response arrived."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lines: list[str] = []
        self.last_arrival: float | None = None
        self.last_date: str | None = None
        self._lock = threading.Lock()

    def note(self, request: requests.PreparedRequest, response: requests.Response, arrived: float) -> None:
        """Record one request and its response's status line."""
        action = request.headers.get("SOAPAction") or ""
        with self._lock:
            self.lines.append(redact(f"C: {request.method} {request.url} {action}".rstrip()))
            self.lines.append(f"S: {response.status_code} {response.reason or ''}".rstrip())
            self.last_arrival, self.last_date = arrived, response.headers.get("Date")


class _SubmitAdapter(requests.adapters.HTTPAdapter):
    """Verify against the mailbox's CA, bound every request by its timeout, and note each exchange."""

    def __init__(self, *, verify: bool | str, timeout: float, exchanges: _Exchanges) -> None:
        self._submit_verify, self._submit_timeout, self._exchanges = verify, timeout, exchanges
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def send(self, request: requests.PreparedRequest,  # noqa: PLR0917 - HTTPAdapter.send's signature
             stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        """Send with the mailbox's verification and timeout; note when the response arrived."""
        response = super().send(request, stream=stream, timeout=self._submit_timeout, verify=self._submit_verify,
                                cert=cert, proxies=proxies)
        self._exchanges.note(request, response, self._exchanges.clock())
        return response


_GUESSED: dict[str, Version] = {}  # by EWS URL: the version exchangelib guessed at the first submission there
_GUESSED_LOCK = threading.Lock()


def _version(ews: EwsConfig) -> Version | None:
    """Return the configured server version, else the one guessed before at this endpoint (None: guess now)."""
    if ews.version:
        return Version(build=Build(*(int(part) for part in ews.version.split("."))))
    with _GUESSED_LOCK:
        return _GUESSED.get(ews.url)


def _remember_version(ews: EwsConfig, account: Account) -> None:
    """Keep the version exchangelib guessed, so the next submission to this endpoint skips the guess request
    (bench/connector.py: 2 EWS requests and 11.6 ms of CPU a submission with the guess, 1 and 9.7 ms without)."""
    if not ews.version and isinstance(account.version, Version):
        with _GUESSED_LOCK:
            _GUESSED[ews.url] = account.version


def _account(mailbox: MailboxConfig, ews: EwsConfig, exchanges: _Exchanges) -> Account:
    """Make an exchangelib Account of the sender's mailbox with a protocol of its own (CA, timeout, notes)."""
    verify: bool | str = str(ews.ca_file) if ews.verify and ews.ca_file else ews.verify
    config = Configuration(service_endpoint=ews.url, credentials=Credentials(ews.username, ews.password.reveal()),
                           auth_type=NTLM if ews.auth == "ntlm" else BASIC, version=_version(ews),
                           retry_policy=FailFast(), max_connections=1)
    account = Account(primary_smtp_address=mailbox.address, config=config, autodiscover=False,
                      access_type=DELEGATE, default_timezone=EWS_UTC)
    own_protocol(account, config=config, timeout=ews.timeout,
                 adapter=lambda: _SubmitAdapter(verify=verify, timeout=ews.timeout, exchanges=exchanges))
    return account


def _failure(exc: BaseException, exchanges: _Exchanges, mailbox: MailboxConfig) -> SubmitResult:
    """Return a failed submission in the send vocabulary (a failure of this host as local: no stage)."""
    text = f"mailbox {mailbox.name}: CreateItem failed: {describe(exc)}"
    transcript = tuple(exchanges.lines)
    resource = local_fault(exc)
    if resource is not None:
        return SubmitResult(ok=False, local=resource, error=text, transcript=transcript)
    reason = classify(exc)
    stage, why = _STAGES.get(reason, (Stage.DATA, SendReason.PROTOCOL))
    if reason is MailboxReason.TIMEOUT:
        stage, why = (Stage.CONNECT if exchanges.last_arrival is None else Stage.DATA), SendReason.TIMEOUT
    elif reason is MailboxReason.TLS:
        certificate = any(isinstance(e, ssl.SSLCertVerificationError) for e in _causes(exc))
        stage, why = Stage.STARTTLS, SendReason.TLS_CERTIFICATE if certificate else SendReason.TLS_HANDSHAKE
    elif reason is MailboxReason.PROTOCOL and isinstance(exc, ResponseMessageError):
        stage, why = Stage.DATA, SendReason.REJECTED  # the server refused the message (ErrorSendAsDenied...)
    return SubmitResult(ok=False, stage=stage, reason=why, smtp_reply=describe(exc), error=text,
                        transcript=transcript)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 32:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def send_from_mailbox(mailbox: MailboxConfig, *, message: bytes,
                      clock: Callable[[], float] = time.time) -> SubmitResult:
    """Send ``message`` (RFC 5322, its To: the recipient) from ``mailbox`` with CreateItem SendOnly; never raise
    for the network or the server."""
    if not isinstance(mailbox.backend, EwsConfig):
        raise TypeError(f"mailbox {mailbox.name} has no ews: section to send from")
    exchanges = _Exchanges(clock)
    account: Account | None = None
    try:
        account = _account(mailbox, mailbox.backend, exchanges)
        Message(account=account, mime_content=message).send(save_copy=False)
        _remember_version(mailbox.backend, account)
    except Exception as exc:  # every failure of the submission is a result, never a raise
        return _failure(exc, exchanges, mailbox)
    finally:
        if account is not None:
            account.protocol.close()
    return SubmitResult(ok=True, smtp_reply="CreateItem SendOnly: NoError", accepted_at=exchanges.last_arrival,
                        transcript=(*exchanges.lines, f"source server Date: {exchanges.last_date}"))
