"""The submit step: one probe message straight to one smart host over SMTP (DESIGN.md, step 2).

``tls: starttls`` (the default): connect, banner, EHLO, STARTTLS (required: a host that does not
offer it is never sent credentials), certificate check, EHLO again, AUTH (PLAIN or LOGIN, only when
the host has credentials), MAIL, RCPT, DATA, QUIT.

``tls: implicit``: TLS from the first byte (usually port 465), no STARTTLS command; the handshake
is timed, and fails, as stage ``starttls`` (the TLS handshake stage of the vocabulary).

``tls: none``: refused before any connection unless the host sets ``allow_insecure``. With it, no
TLS is attempted, and if the host has credentials they ARE sent in the clear: ``allow_insecure``
is that explicit consent.

Names under ``.invalid`` fail as ``dns`` without asking any resolver (RFC 6761, section 6.4).
Every network operation, the TLS handshake and name resolution included, has the host's timeout.
Every network or protocol problem becomes a :class:`SubmitResult`; only programming errors raise.
A failure of the probe's own host (no file descriptor, memory or thread to spare: probe.local_faults)
is a result with ``local`` set and no stage or reason: it says nothing about the smart host.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from probe.config import SmartHostConfig
from probe.local_faults import explain, local_fault
from probe.secret import REDACTED, redact
from probe.tls_facts import TlsFacts, tls_facts_of
from probe.tls_sessions import SESSIONS, TlsSessions
from probe.vocabulary import LocalResource, SendReason, Stage

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MECHANISMS: Final[list[str]] = ["PLAIN", "LOGIN"]  # in order of preference (SASL mechanisms the submit step speaks)
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str,
                  tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")
_QUEUE_ID_FORMS = (
    re.compile(r"\[InternalId=([^,\]\s]+)", re.IGNORECASE),  # Exchange: "<msgid> [InternalId=123, ...]"
    re.compile(r"queued as\s+<?([\w.@:+-]+?)>?(?:[\s,;]|$)", re.IGNORECASE),  # Postfix, aiosmtpd-style
    re.compile(r"\bid=<?([\w.@:+-]+?)>?(?:[\s,;]|$)", re.IGNORECASE),  # Exim: "OK id=1abc-0001-AB"
)


@dataclass(frozen=True, kw_only=True)
class SubmitResult:
    """What one submission to one smart host came to; ``stage`` and ``reason`` say where and why it failed."""

    ok: bool
    stage: Stage | None = None
    reason: SendReason | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    smtp_reply: str | None = None
    accepted_at: float | None = None
    queue_id: str | None = None
    stage_seconds: dict[Stage, float] = field(default_factory=dict)
    tls: TlsFacts | None = None
    transcript: tuple[str, ...] = ()
    error: str | None = None
    local: LocalResource | None = None  # the probe's own host failed: no verdict on the smart host


class _SendFailedError(Exception):
    """A submission that stopped: where, why, and the server's reply if there was one."""

    def __init__(self, stage: Stage, reason: SendReason, error: str, *,
                 code: int | None = None, reply: str | None = None) -> None:
        super().__init__(error)
        self.stage, self.reason, self.error, self.code, self.reply = stage, reason, error, code, reply


class _Stopwatch:
    """Time the stages of one session; entering a stage ends the one before it."""

    def __init__(self) -> None:
        self.stage = Stage.CONNECT
        self.seconds: dict[Stage, float] = {}
        self._since: float | None = None

    def enter(self, stage: Stage) -> None:
        """End the current stage and start ``stage``."""
        self.stop()
        self.stage, self._since = stage, time.perf_counter()

    def stop(self) -> None:
        """End the current stage, adding its time to that stage's total."""
        if self._since is not None:
            elapsed = time.perf_counter() - self._since
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + elapsed
            self._since = None


class _ProbeSMTP(smtplib.SMTP):
    """smtplib's client, recording a redacted transcript, stage times and reply times."""

    def __init__(self, *, host: SmartHostConfig, local_hostname: str, clock: Callable[[], float],
                 implicit_tls: ssl.SSLContext | None, sessions: TlsSessions) -> None:
        super().__init__(local_hostname=local_hostname, timeout=host.timeout)
        self._host = host.server_name or host.host  # what STARTTLS verifies the certificate against
        self.tls_key = (host.host, host.port, self._host)  # whose TLS session may be resumed
        self.tls_context: ssl.SSLContext | None = None
        self._sessions = sessions
        self._implicit_tls = implicit_tls
        self._clock = clock
        self._in_putcmd = False
        self.authenticating = False
        self.watch = _Stopwatch()
        self.lines: list[str] = []
        self.reply_at: float | None = None
        self.tls: TlsFacts | None = None

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = _open_connection(host, port, timeout)
        if self._implicit_tls is not None:
            self.watch.enter(Stage.STARTTLS)
            sock = self._handshake(sock, self._implicit_tls)
        self.watch.enter(Stage.BANNER)
        return sock

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """Do the TLS handshake on ``sock`` (under its timeout), resuming the smart host's session if it has a
        fresh one (probe.tls_sessions), and keep the TLS facts."""
        self.tls_context = context
        try:
            session = self._sessions.offer(self.tls_key, context)
            tls = context.wrap_socket(sock, server_hostname=self._host, session=session)
        except BaseException:
            self._sessions.forget(self.tls_key)
            sock.close()
            raise
        self.tls = tls_facts_of(tls, verified=context.verify_mode != ssl.CERT_NONE)
        return tls

    def starttls(self, keyfile: Any = None, certfile: Any = None, context: Any = None) -> tuple[int, bytes]:
        """Switch to TLS as smtplib's ``starttls`` does (RFC 3207), the handshake being ``_handshake``'s."""
        if not isinstance(context, ssl.SSLContext) or keyfile is not None or certfile is not None:
            raise ValueError("the probe's STARTTLS takes an SSL context only")
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
        resp, reply = self.docmd("STARTTLS")
        if resp != 220:
            raise smtplib.SMTPResponseException(resp, reply)
        self.sock = self._handshake(self.sock, context)
        self.file = None
        # RFC 3207: forget what the server said before TLS.
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        return resp, reply

    def keep_tls_session(self) -> None:
        """Remember this connection's TLS session for the smart host's next probes (after its tickets arrived),
        when it came from a full handshake; a resumed one continues the session already kept."""
        if not self._sessions.resumes or self.tls_context is None or not isinstance(self.sock, ssl.SSLSocket):
            return
        if not self.sock.session_reused:
            self._sessions.keep(self.tls_key, self.tls_context, self.sock.session)

    def putcmd(self, cmd: str, args: str = "") -> None:
        self.lines.append("C: " + self._shown(cmd, args))
        self._in_putcmd = True
        try:
            super().putcmd(cmd, args)
        finally:
            self._in_putcmd = False

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """Say MAIL FROM:<sender>; ``sender`` is a plain address already (see _check_addresses)."""
        if options:
            return super().mail(sender, options)
        self.putcmd("mail", f"FROM:<{sender}>")  # smtplib's quoteaddr would parse it as RFC 5322 again
        return self.getreply()

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """Say RCPT TO:<recip>; ``recip`` is a plain address already (see _check_addresses)."""
        if options:
            return super().rcpt(recip, options)
        self.putcmd("rcpt", f"TO:<{recip}>")
        return self.getreply()

    def send(self, s: ReadableBuffer | str) -> None:
        if not self._in_putcmd:  # the message itself, from data()
            size = len(s) if isinstance(s, str) else memoryview(s).nbytes
            self.lines.append(f"C: <message and final dot, {size} bytes>")
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        code, text = super().getreply()
        self.reply_at = self._clock()
        lines = text.decode("utf-8", errors="replace").split("\n")
        for i, line in enumerate(lines):
            self.lines.append(f"S: {code}{'-' if i < len(lines) - 1 else ' '}{line}".rstrip())
        return code, text

    def auth_utf8(self, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
        """Say AUTH PLAIN or LOGIN with the credentials in UTF-8; raise SMTPAuthenticationError when refused.

        smtplib encodes the responses as ASCII, so a password such as ``Pässwörd-2026`` raised
        UnicodeEncodeError before anything was sent. SASL PLAIN is UTF-8 (RFC 4616); LOGIN has no standard,
        and Exchange, Postfix/Dovecot and the lab all take UTF-8 there too.
        """
        if mechanism == "PLAIN":
            code, reply = self.docmd("AUTH", "PLAIN " + _b64(f"\0{user}\0{password}"))
        else:
            code, reply = self.docmd("AUTH", "LOGIN " + _b64(user))
            if code == 334:
                code, reply = self.docmd(_b64(password))
        if code in (235, 503):  # 503: already authenticated
            return code, reply
        raise smtplib.SMTPAuthenticationError(code, reply)

    def _shown(self, cmd: str, args: str) -> str:
        if not self.authenticating:
            return f"{cmd} {args}" if args else cmd
        if cmd.upper() == "AUTH":
            mechanism, _, payload = args.partition(" ")
            return f"{cmd} {mechanism} {REDACTED}" if payload else f"{cmd} {mechanism}"
        return REDACTED  # a response to an AUTH challenge


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _resolve(name: str, port: int, timeout: float) -> list[_AddrInfo]:
    """Resolve ``name`` within ``timeout``; raise socket.gaierror if it does not resolve."""
    if name.lower().rstrip(".").endswith(".invalid") or name.lower() == "invalid":
        raise socket.gaierror(socket.EAI_NONAME, f"{name} is under .invalid (RFC 6761): it never resolves")
    if _is_ip(name):
        return list(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM))
    found: list[list[_AddrInfo] | OSError] = []

    def work() -> None:
        try:
            found.append(list(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)))
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=work, name=f"resolve {name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        raise socket.gaierror(socket.EAI_AGAIN, f"resolving {name} took more than {timeout:g}s")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


def _open_connection(name: str, port: int, timeout: float) -> socket.socket:
    """Connect to the first address of ``name`` that answers, each attempt under ``timeout``."""
    last: OSError = OSError(f"{name} has no address")
    for family, kind, proto, _, address in _resolve(name, port, timeout):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
        else:
            return sock
    raise last


_CONTEXTS: dict[tuple[str | None, bool, int, int], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()
_CONTEXTS_MAX = 256


def _tls_context(host: SmartHostConfig) -> ssl.SSLContext:
    """Return the client TLS context: verification on unless the host turns it off.

    Contexts are shared while the CA file is unchanged (same path, size and mtime): loading it costs
    more CPU than the rest of a submission's TLS set-up.
    """
    cafile = str(host.ca_file) if host.ca_file else None
    facts = Path(cafile).stat() if cafile else None  # an OSError here is what loading it would raise
    key = (cafile, host.verify, facts.st_mtime_ns if facts else 0, facts.st_size if facts else 0)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
    if context is not None:
        return context
    context = ssl.create_default_context(cafile=cafile)
    if not host.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with _CONTEXTS_LOCK:
        if len(_CONTEXTS) >= _CONTEXTS_MAX:
            _CONTEXTS.clear()
        _CONTEXTS[key] = context
    return context


def _reply_failure(stage: Stage, code: int, text: bytes, what: str) -> _SendFailedError:
    reply = redact(text.decode("utf-8", errors="replace").replace("\n", " / "))
    if 400 <= code < 500:
        reason = SendReason.TEMPFAIL
    elif 500 <= code < 600:
        reason = SendReason.AUTH_FAILED if stage is Stage.AUTH else SendReason.REJECTED
    else:
        reason = SendReason.PROTOCOL
    shown = code if code >= 0 else "an unreadable reply"
    return _SendFailedError(stage, reason, f"{what}: the smart host answered {shown} {reply}".rstrip(),
                    code=code if code >= 0 else None, reply=reply)


def _expect(stage: Stage, reply: tuple[int, bytes], *ok: int) -> None:
    code, text = reply
    if code not in ok:
        raise _reply_failure(stage, code, text, f"{stage.value} failed")


def _starttls(session: _ProbeSMTP, context: ssl.SSLContext) -> None:
    session.watch.enter(Stage.STARTTLS)
    if not session.has_extn("starttls"):
        raise _SendFailedError(Stage.STARTTLS, SendReason.TLS_UNAVAILABLE,
                       "the smart host does not offer STARTTLS; no credentials were sent")
    session.starttls(context=context)  # the handshake runs under the socket's timeout
    session.watch.enter(Stage.EHLO)
    _expect(Stage.EHLO, session.ehlo(), 250)


def _mechanism(session: _ProbeSMTP) -> str:
    if not session.has_extn("auth"):
        raise _SendFailedError(Stage.AUTH, SendReason.AUTH_UNAVAILABLE,
                       "the smart host offers no AUTH, but this host has credentials")
    offered = session.esmtp_features["auth"].upper().split()
    for mechanism in MECHANISMS:
        if mechanism in offered:
            return mechanism
    raise _SendFailedError(Stage.AUTH, SendReason.AUTH_UNAVAILABLE,
                   f"the smart host offers AUTH {' '.join(offered)}, neither PLAIN nor LOGIN")


def _authenticate(session: _ProbeSMTP, host: SmartHostConfig) -> None:
    assert host.username is not None
    assert host.password is not None
    session.watch.enter(Stage.AUTH)
    mechanism = _mechanism(session)
    session.authenticating = True
    try:
        session.auth_utf8(mechanism, host.username, host.password.reveal())
    finally:
        session.authenticating = False


def _converse(session: _ProbeSMTP, *, host: SmartHostConfig, context: ssl.SSLContext | None,
              sender: str, recipient: str, message: bytes) -> tuple[int, bytes]:
    """Run the session to the final reply after DATA; raise _SendFailedError or the network's exception."""
    session.watch.enter(Stage.CONNECT)
    _expect(Stage.BANNER, session.connect(host.host, host.port), 220)
    session.watch.enter(Stage.EHLO)
    _expect(Stage.EHLO, session.ehlo(), 250)
    if host.tls == "starttls":
        assert context is not None
        _starttls(session, context)
    if host.username is not None and host.password is not None:
        _authenticate(session, host)
    session.watch.enter(Stage.MAIL)
    _expect(Stage.MAIL, session.mail(sender), 250)
    session.watch.enter(Stage.RCPT)
    _expect(Stage.RCPT, session.rcpt(recipient), 250, 251)
    session.watch.enter(Stage.DATA)
    final = session.data(message)  # a reply to DATA other than 354 raises SMTPDataError
    _expect(Stage.DATA, final, 250)
    return final


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _classify(exc: OSError, stage: Stage, *, heard_server: bool) -> _SendFailedError:
    """Map a network, TLS or SMTP exception at ``stage`` to DESIGN.md's stage and reason.

    A connection reset before the server said anything is a refusal (stage connect): that is how
    firewalls, connection limits and listeners that abort look from the client.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    timed_out = _caused_by(exc, TimeoutError)
    if isinstance(exc, smtplib.SMTPResponseException) and not timed_out:
        reply = exc.smtp_error if isinstance(exc.smtp_error, bytes) else exc.smtp_error.encode()
        return _reply_failure(stage, exc.smtp_code, reply, f"{stage.value} failed")
    reason, what = SendReason.PROTOCOL, f"{stage.value} failed"
    if isinstance(exc, socket.gaierror):
        stage, reason, what = Stage.CONNECT, SendReason.DNS, "the smart host's name does not resolve"
    elif timed_out:
        reason, what = SendReason.TIMEOUT, f"{stage.value} timed out"
    elif not heard_server and _caused_by(exc, ConnectionResetError):
        stage, reason, what = Stage.CONNECT, SendReason.REFUSED, "the connection was reset before the banner"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        reason, what = SendReason.TLS_CERTIFICATE, "the certificate was not accepted"
        text = exc.verify_message or text
    elif isinstance(exc, smtplib.SMTPException):
        pass  # an unexpected disconnect or an unusable reply: protocol
    elif stage is Stage.STARTTLS:
        reason, what = SendReason.TLS_HANDSHAKE, "the TLS handshake failed"
    elif stage is Stage.CONNECT:
        reason, what = SendReason.REFUSED, "could not connect"
    return _SendFailedError(stage, reason, f"{what}: {text}")


def _queue_id(reply: str) -> str | None:
    """Return the queue id of a final 250 reply, in the forms Postfix, Exim and Exchange use."""
    for form in _QUEUE_ID_FORMS:
        found = form.search(reply)
        if found:
            return found.group(1)
    return None


def _enhanced(reply: str | None) -> str | None:
    found = _ENHANCED.match(reply or "")
    return found.group(1) if found else None


def _quit(session: _ProbeSMTP) -> None:
    """Say QUIT if the connection is still up, ignore whatever goes wrong, and always close."""
    try:
        if session.sock is not None:
            session.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        session.close()


def _scrubber(host: SmartHostConfig) -> Callable[[str], str]:
    """Return a function that removes the host's password, and its AUTH encodings, from text."""
    forms: list[str] = []
    if host.password is not None and host.password.reveal():
        password = host.password.reveal()
        user = host.username or ""
        forms = [password, _b64(password), _b64(f"\0{user}\0{password}"), _b64(f"{user}\0{user}\0{password}")]

    def scrub(text: str) -> str:
        for form in forms:
            text = text.replace(form, REDACTED)
        return redact(text)

    return scrub


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _refusal(host: SmartHostConfig) -> SubmitResult | None:
    if host.tls == "none" and not host.allow_insecure:
        return SubmitResult(ok=False, stage=Stage.STARTTLS, reason=SendReason.TLS_UNAVAILABLE,
                            error=f"smart host {host.name}: tls none needs allow_insecure; not connecting")
    return None


def _check_addresses(sender: str, recipient: str) -> None:
    for what, address in (("sender", sender), ("recipient", recipient)):
        if not address or any(c in address for c in "\r\n<> "):
            raise ValueError(f"the {what} address {address!r} is not a plain mail address")


def submit(*, host: SmartHostConfig, sender: str, recipient: str, message: bytes,
           local_hostname: str | None = None, clock: Callable[[], float] = time.time,
           sessions: TlsSessions = SESSIONS) -> SubmitResult:
    """Submit ``message`` from ``sender`` to ``recipient`` straight to ``host``; never raise for the network.

    ``sessions``: where the smart host's TLS session is resumed from and kept (the process's, by default).
    """
    _check_addresses(sender, recipient)
    refusal = _refusal(host)
    if refusal is not None:
        return refusal
    try:
        context = _tls_context(host) if host.tls != "none" else None
    except OSError as exc:  # ssl.SSLError is an OSError: a CA file that is missing or not PEM
        resource = local_fault(exc)
        if resource is not None:
            return _local_result(host, resource, exc)
        return SubmitResult(ok=False, stage=Stage.STARTTLS, reason=SendReason.TLS_CERTIFICATE,
                            error=f"smart host {host.name}: cannot load ca_file {host.ca_file}: {exc}")
    except MemoryError as exc:
        return _local_result(host, LocalResource.MEMORY, exc)
    session = _ProbeSMTP(host=host, local_hostname=local_hostname or host.helo or socket.gethostname(),
                         clock=clock, implicit_tls=context if host.tls == "implicit" else None, sessions=sessions)
    failure: _SendFailedError | _LocalFaultError | None = None
    final: tuple[int, bytes] | None = None
    try:
        final = _converse(session, host=host, context=context, sender=sender, recipient=recipient,
                          message=message)
    except _SendFailedError as stopped:
        failure = stopped
    except (OSError, MemoryError, RuntimeError) as exc:  # socket, ssl and smtplib errors are all OSErrors
        failure = _failure_of(exc, session)
    finally:
        session.watch.stop()
        accepted_at = session.reply_at
        session.keep_tls_session()
        _quit(session)
    return _result(session, host, failure, final, accepted_at)


class _LocalFaultError(Exception):
    """The probe's own host failed during a session (probe.local_faults)."""

    def __init__(self, resource: LocalResource, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.resource, self.cause = resource, cause


def _failure_of(exc: OSError | MemoryError | RuntimeError, session: _ProbeSMTP) -> _SendFailedError | _LocalFaultError:
    """Return a local fault as such; classify an OSError at the session's stage; raise anything else."""
    resource = local_fault(exc)
    if resource is not None:
        return _LocalFaultError(resource, exc)
    if not isinstance(exc, OSError):
        raise exc
    return _classify(exc, session.watch.stage, heard_server=session.reply_at is not None)


def _local_result(host: SmartHostConfig, resource: LocalResource, exc: BaseException,
                  base: SubmitResult | None = None) -> SubmitResult:
    error = f"smart host {host.name} not tried to the end: {explain(resource)} ({type(exc).__name__}: {exc})"
    return replace(base or SubmitResult(ok=False), ok=False, local=resource, error=redact(error))


def _result(session: _ProbeSMTP, host: SmartHostConfig, failure: _SendFailedError | _LocalFaultError | None,
            final: tuple[int, bytes] | None, accepted_at: float | None) -> SubmitResult:
    scrub = _scrubber(host)
    transcript = tuple(scrub("\n".join(session.lines)).split("\n")) if session.lines else ()  # one pass, not one a line
    base = SubmitResult(ok=False, stage_seconds=dict(session.watch.seconds), tls=session.tls, transcript=transcript)
    if isinstance(failure, _LocalFaultError):
        return _local_result(host, failure.resource, failure.cause, base)
    if failure is not None:
        reply = scrub(failure.reply) if failure.reply is not None else None
        return replace(base, stage=failure.stage, reason=failure.reason, smtp_code=failure.code,
                       enhanced_code=_enhanced(reply), smtp_reply=reply,
                       error=scrub(f"smart host {host.name}: {failure.error}"))
    assert final is not None
    code, text = final
    reply = scrub(text.decode("utf-8", errors="replace").replace("\n", " / "))
    return replace(base, ok=True, smtp_code=code, enhanced_code=_enhanced(reply), smtp_reply=reply,
                   accepted_at=accepted_at, queue_id=_queue_id(reply))
