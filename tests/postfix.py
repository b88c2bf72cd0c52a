"""A private Postfix smart host for the tests: Debian's postfix and Dovecot, each run from its own directory.

    postfix = PostfixSmartHost.configure(directory / "postfix", address="127.0.0.55", relay=relay,
                                         cert=ca.issue("postfix", ["127.0.0.55"]))
    with DovecotAuth.start(directory / "dovecot", users={"probe": secret}, sockets=[postfix.auth_socket]):
        with postfix.start():
            postfix.port, postfix.maillog()

Postfix runs from ``postfix -c DIR`` with its own queue and data directories (no systemd, no syslog: it
logs to ``DIR/maillog`` through postlogd); its smtpd listens on one loopback address only, offers
STARTTLS with a lab certificate and AUTH (Dovecot's, over a socket in its queue directory) only under
TLS, and relays one domain to a lab smart host with STARTTLS required and SASL client authentication.
Dovecot runs from ``dovecot -c CONF`` with no listener but its auth sockets (``protocols = none``).
Both are started and stopped as root, by the test; nothing they run listens off loopback.
"""

from __future__ import annotations

import ipaddress
import os
import pty
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from probe.lab.ca import IssuedCert
from probe.lab.dovecot import running
from probe.secret import Secret

POSTFIX: Final = Path("/usr/sbin/postfix")
DOVECOT: Final = Path("/usr/sbin/dovecot")
SASL_PLUGINS: Final = ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/aarch64-linux-gnu/sasl2", "/usr/lib/sasl2")
START_TIMEOUT: Final = 20.0
_COMMAND_TIMEOUT: Final = 30.0
_SMTPD_LINE: Final = re.compile(r"postfix/smtpd\[(\d+)\]: (.*)$")


class MailServerError(Exception):
    """A private Postfix or Dovecot could not be set up, started or stopped; the message says why."""


def missing_parts() -> list[str]:
    """Return what scripts/setup installs that this machine lacks to run the Postfix smart host."""
    missing = [f"{path} (package {package}: scripts/setup installs it, as root)" for path, package in
               ((POSTFIX, "postfix"), (DOVECOT, "dovecot-core")) if not path.exists()]
    if not any(Path(d, "libplain.so.2").exists() or Path(d, "libplain.so").exists() for d in SASL_PLUGINS):
        missing.append("Cyrus SASL PLAIN plugin, for Postfix's client AUTH (package libsasl2-modules: "
                       "scripts/setup installs it, as root)")
    if os.geteuid() != 0:
        missing.append("root (Postfix and Dovecot are started as root, as in CI)")
    pty_problem = _pty_problem()
    if pty_problem:
        missing.append(pty_problem)
    return missing


def _pty_problem() -> str | None:
    """Return why no pseudo-terminal can be opened here (Postfix's commands report errors only to one)."""
    try:
        controller, terminal = pty.openpty()
    except OSError as exc:
        return (f"a pseudo-terminal (pty.openpty: {exc.strerror or exc}): mount devpts on /dev/pts, "
                "e.g. mount -t devpts devpts /dev/pts")
    os.close(controller)
    os.close(terminal)
    return None


def reachable_directory(prefix: str, *, parent: Path = Path("/tmp")) -> Path:
    """Make a fresh directory (0711) that Postfix's and Dovecot's unprivileged users can pass through.

    Postfix opens some files as its ``mail_owner`` and Dovecot's auth reads as ``dovecot``; pytest's
    tmp_path lies below a root-only (0700) directory, which they cannot pass.
    """
    for ancestor in (parent, *parent.parents):
        if not ancestor.stat().st_mode & 0o001:
            raise MailServerError(f"{ancestor} is not searchable by other users; Postfix could not reach "
                                  f"a directory under {parent}")
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    directory.chmod(0o711)
    return directory


def free_port(address: str) -> int:
    """Return a TCP port that is free on ``address`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_banner(address: str, port: int, *, timeout: float = START_TIMEOUT) -> None:
    """Wait until an SMTP server on ``address:port`` greets with 220 (then QUIT); raise MailServerError at ``timeout``.

    A greeting, not a bare accept: Postfix's master accepts even when every smtpd it starts dies at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2.0) as sock:
                banner = sock.makefile("rb").readline(1000)
                if banner.startswith(b"220 "):
                    sock.sendall(b"QUIT\r\n")
                    return
                problem = f"greeting {banner!r}"
        except OSError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise MailServerError(f"no SMTP greeting on {address}:{port} after {timeout:.0f} s: {problem}")
        time.sleep(0.1)


def _run(command: list[str], *, what: str, tty: bool = False) -> str:
    """Run ``command``; return its output, or raise MailServerError with it when it fails.

    The output goes to a file, not a pipe: a daemon that keeps its parent's stdout would hold a pipe open.
    ``tty``: stderr is a pseudo-terminal, for Postfix's commands, which write their errors to stderr only
    when it is a terminal (else to syslog, which a test machine may not have).
    """
    try:
        terminal, stderr = pty.openpty() if tty else (-1, subprocess.STDOUT)
    except OSError as exc:
        raise MailServerError(f"{what}: no pseudo-terminal for Postfix's errors ({exc.strerror or exc}): "
                              "mount devpts on /dev/pts") from None
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=stderr,
                                  timeout=_COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MailServerError(f"{what}: {' '.join(command)}: {exc}") from exc
        finally:
            if tty:
                os.close(stderr)
        out.seek(0)
        output = out.read().decode("utf-8", errors="replace") + (_drain(terminal) if tty else "")
    if done.returncode != 0:
        raise MailServerError(f"{what}: {' '.join(command)} exited {done.returncode}: {output.strip()}")
    return output.strip()


def _drain(terminal: int) -> str:
    """Read what is waiting on a pseudo-terminal's controller side, then close it."""
    os.set_blocking(terminal, False)
    chunks = []
    try:
        while chunk := os.read(terminal, 65536):
            chunks.append(chunk)
    except OSError:  # EAGAIN: nothing more; EIO: no process holds the other side
        pass
    finally:
        os.close(terminal)
    return b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")


def _write(path: Path, text: str, *, mode: int = 0o644) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@dataclass(frozen=True, kw_only=True)
class Relay:
    """Where Postfix sends one domain's mail: a smart host that wants STARTTLS and AUTH."""

    domain: str
    host: str
    port: int
    username: str
    password: Secret
    ca_file: Path

    @property
    def nexthop(self) -> str:
        """Return the next hop as Postfix writes it, with no MX lookup: ``[host]:port``."""
        return f"[{self.host}]:{self.port}"


# -- Dovecot


_DOVECOT_CONF: Final = """\
# A private Dovecot for one test run: SASL for Postfix over unix sockets, nothing else.
base_dir = {base}
state_dir = {state}
instance_name = {name}
log_path = {log}
info_log_path = {log}
protocols = none
listen = 127.0.0.1  # required non-empty; protocols = none opens no inet listener
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0  # tests: a wrong password is answered at once
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home=/nonexistent
}}
service auth {{
  # root: the passwd-file lives under the test's private (root-only) temporary directory
  user = root
{listeners}}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

_LISTENER: Final = """\
  unix_listener {path} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
"""


class DovecotAuth:
    """A private Dovecot whose only job is SASL authentication for Postfix, over unix sockets."""

    def __init__(self, directory: Path, *, users: dict[str, Secret]) -> None:
        self.directory = directory
        self.users = users
        self.conf = directory / "dovecot.conf"
        self.log = directory / "dovecot.log"
        self.sockets: list[Path] = []
        self._running = False

    @classmethod
    def start(cls, directory: Path, *, users: dict[str, Secret], sockets: list[Path]) -> Self:
        """Write the configuration for auth ``sockets`` (absolute paths), start Dovecot, and return it."""
        auth = cls(directory, users=users)
        auth.sockets = sockets
        try:
            auth._configure()
            auth._launch()
        except BaseException:
            auth.stop()
            raise
        return auth

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid_file(self) -> Path:
        """Return Dovecot's master PID file."""
        return self.directory / "run" / "master.pid"

    def _configure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "state"):
            (self.directory / sub).mkdir(mode=0o755, exist_ok=True)
        users = _write(self.directory / "users",
                       "".join(f"{name}:{{PLAIN}}{secret.reveal()}\n" for name, secret in self.users.items()),
                       mode=0o600)
        listeners = "".join(_LISTENER.format(path=path) for path in self.sockets)
        _write(self.conf, _DOVECOT_CONF.format(
            base=self.directory / "run", state=self.directory / "state", name=f"dovecot-{self.directory.name}",
            log=self.log, users=users, listeners=listeners))

    def _launch(self) -> None:
        self._running = True
        _run([str(DOVECOT), "-c", str(self.conf)], what="start Dovecot")
        deadline = time.monotonic() + START_TIMEOUT
        while not all(path.exists() for path in self.sockets):
            if time.monotonic() > deadline:
                raise MailServerError(f"Dovecot made no auth socket in {START_TIMEOUT:.0f} s; its log: "
                                      f"{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        """Return Dovecot's log so far."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop Dovecot (TERM to its master, KILL if it lingers); do nothing when it is not running."""
        if not self._running:
            return
        self._running = False
        _stop_pid_file(self.pid_file, marker=str(self.conf), name="Dovecot")


def _read_pid(pid_file: Path, marker: str) -> int | None:
    """Return the PID in ``pid_file`` if that process runs and is ours (``marker`` in its command or environment)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        proc = Path(f"/proc/{pid}")
        seen = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker.encode() in seen and running(pid) else None


def _stop_pid_file(pid_file: Path, *, marker: str, name: str, timeout: float = 10.0) -> None:
    """Send TERM to our process in ``pid_file`` and wait for it to end; KILL it at ``timeout``."""
    pid = _read_pid(pid_file, marker)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise MailServerError(f"{name} (pid {pid}) did not stop on TERM in {timeout:.0f} s; killed")


def process_tree(pid: int) -> set[int]:
    """Return ``pid`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, []))
    return tree


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode /proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def tcp_listeners(pids: set[int]) -> list[tuple[str, int]]:
    """Return every TCP (v4 and v6) address and port that one of ``pids`` listens on."""
    inodes = _socket_inodes(pids)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.append((str(_address(address)), int(port, 16)))
    return found


def smtpd_sessions(maillog: str) -> list[list[str]]:
    """Split Postfix's log into smtpd sessions: each one's lines, from "connect from" to "disconnect from"."""
    sessions: list[list[str]] = []
    open_by_process: dict[str, list[str]] = {}
    for line in maillog.splitlines():
        match = _SMTPD_LINE.search(line)
        if match is None:
            continue
        process, text = match.group(1), match.group(2)
        if text.startswith("connect from "):
            open_by_process[process] = [line]
            sessions.append(open_by_process[process])
        elif process in open_by_process:
            open_by_process[process].append(line)
            if text.startswith("disconnect from "):
                del open_by_process[process]
    return sessions


# -- Postfix


# What every private Postfix of the tests shares: its own directories and log, a fixed name, and (below) no
# local delivery, aliases, DNS or peer lookups.
_BASE_CF: Final = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {maillog}
maillog_file_prefixes = {directory}
myhostname = postfix.contoso.test
mydomain = contoso.test
myorigin = $myhostname
"""
_LOCAL_OFF_CF: Final = """\
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
"""
_MAIN_CF: Final = """\
# A private Postfix for one test run: a smart host on {address}:{port} relaying {domain} to {nexthop}.
""" + _BASE_CF + """\
# Postfix accepts only an interface's own address here; master.cf binds smtpd to {address} itself.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_bind_address = {address}
mynetworks = {address}/32
""" + _LOCAL_OFF_CF + """\
relayhost =
relay_domains = {domain}
transport_maps = texthash:{transport}
default_transport = error:5.7.1 this test instance relays only {domain}
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_security_options = noanonymous
smtpd_tls_security_level = {tls_level}
smtpd_tls_auth_only = {tls_auth_only}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{passwords}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca_file}
smtp_tls_loglevel = 1
smtp_tls_session_cache_database =
smtp_connect_timeout = 10s
delay_warning_time = 0
smtpd_error_sleep_time = 0
"""

_MASTER_CF: Final = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{address}:{port} inet n -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp -o syslog_name=postfix/$service_name
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSmartHost:
    """A private Postfix: smtpd on one loopback address and port, relaying one domain onward."""

    def __init__(self, directory: Path, *, address: str, port: int, cert: IssuedCert, relay: Relay,
                 tls: bool) -> None:
        self.directory = directory
        self.address = address
        self.port = port
        self.cert = cert
        self.relay = relay
        self.tls = tls
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "queue"
        self.maillog_file = directory / "maillog"
        self._running = False

    @classmethod
    def configure(cls, directory: Path, *, address: str, cert: IssuedCert, relay: Relay, tls: bool = True,
                  port: int | None = None) -> Self:
        """Write the configuration and make the queue's ``private`` directory; :meth:`start` starts it.

        ``tls=False`` turns STARTTLS off and offers AUTH in the clear (``smtpd_tls_auth_only = no``): a
        downgraded smart host that invites credentials. Dovecot must serve :attr:`auth_socket` before
        the start: an smtpd that offers AUTH before TLS asks Dovecot for its mechanisms at each connection.
        """
        postfix = cls(directory, address=address, port=port or free_port(address), cert=cert, relay=relay,
                      tls=tls)
        postfix._configure()
        return postfix

    def start(self) -> Self:
        """Start Postfix and wait for its smtpd's greeting; stop what did start if that fails."""
        try:
            self._running = True  # from here on, stop() cleans up whatever part did start
            self.postfix("start")  # its postfix-script checks the configuration and makes the queue first
            wait_for_banner(self.address, self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def auth_socket(self) -> Path:
        """Return where smtpd looks for Dovecot's auth socket (``smtpd_sasl_path = private/auth``)."""
        return self.queue_dir / "private" / "auth"

    def _configure(self) -> None:
        for path in (self.config_dir, self.queue_dir, self.directory / "data"):
            path.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.directory / "data", owner.pw_uid, owner.pw_gid)  # master.lock is opened as postfix
        private = self.queue_dir / "private"  # as postfix makes it; made here for Dovecot's socket
        private.mkdir(mode=0o700, exist_ok=True)
        os.chown(private, owner.pw_uid, owner.pw_gid)
        relay = self.relay
        transport = _write(self.config_dir / "transport", f"{relay.domain} relay:{relay.nexthop}\n")
        passwords = _write(self.config_dir / "relay_passwords",
                           f"{relay.nexthop} {relay.username}:{relay.password.reveal()}\n", mode=0o600)
        _write(self.config_dir / "main.cf", _MAIN_CF.format(
            queue=self.queue_dir, data=self.directory / "data", maillog=self.maillog_file,
            directory=self.directory, address=self.address, port=self.port, domain=relay.domain,
            nexthop=relay.nexthop, transport=transport, passwords=passwords, ca_file=relay.ca_file,
            cert=self.cert.cert_file, key=self.cert.key_file, tls_level="may" if self.tls else "none",
            tls_auth_only="yes" if self.tls else "no"))
        _write(self.config_dir / "master.cf", _MASTER_CF.format(address=self.address, port=self.port))

    def postfix(self, *args: str) -> str:
        """Run ``postfix -c DIR ARGS...`` and return its output."""
        return _run([str(POSTFIX), "-c", str(self.config_dir), *args], what=f"postfix {' '.join(args)}", tty=True)

    def maillog(self) -> str:
        """Return Postfix's log so far (``maillog_file``)."""
        if not self.maillog_file.exists():
            return ""
        return self.maillog_file.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Stop Postfix (``postfix stop``, then TERM/KILL via its PID file); do nothing when it is not running."""
        if not self._running:
            return
        self._running = False
        pid_file = self.queue_dir / "pid" / "master.pid"
        if not pid_file.exists():
            return
        try:
            self.postfix("stop")
        finally:
            _stop_pid_file(pid_file, marker=f"MAIL_CONFIG={self.config_dir}", name="Postfix master")


# -- Postfix as a source forest's transport: a Send connector through smart hosts


_SEND_CONNECTOR_CF: Final = """\
# A private Postfix for one test run: a source forest's transport on {address}:{port}, relaying everything
# through its smart hosts exactly as a Send connector does: the first as relayhost, the rest as fallback
# relays, STARTTLS required (encrypt) before the stored credentials (SASL) are sent.
""" + _BASE_CF + """\
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_bind_address = {address}
mynetworks =
""" + _LOCAL_OFF_CF + """\
relay_domains =
relayhost = {relayhost}
smtp_fallback_relay = {fallback}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_security_options = noanonymous
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{passwords}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca_file}
smtp_tls_loglevel = 1
smtp_tls_session_cache_database =
smtp_connect_timeout = 10s
delay_warning_time = 0
smtpd_error_sleep_time = 0
"""


class PostfixSendConnector(PostfixSmartHost):
    """A private Postfix in the source forest's place: authenticated submission in, a Send connector out.

    ``relays`` are the connector's smart hosts in order: ``relayhost`` is the first, ``smtp_fallback_relay``
    the others; each gets the connector's stored credentials in ``smtp_sasl_password_maps``.
    """

    relays: tuple[Relay, ...] = ()

    @classmethod
    def configure_connector(cls, directory: Path, *, address: str, cert: IssuedCert,
                            relays: tuple[Relay, ...]) -> PostfixSendConnector:
        """Write the configuration; :meth:`start` starts it (Dovecot must serve :attr:`auth_socket` first)."""
        connector = cls(directory, address=address, port=free_port(address), cert=cert, relay=relays[0], tls=True)
        connector.relays = relays
        connector._configure()
        return connector

    def _configure(self) -> None:
        if not self.relays:
            raise MailServerError("a Send connector needs its smart hosts: use configure_connector")
        for path in (self.config_dir, self.queue_dir, self.directory / "data"):
            path.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.directory / "data", owner.pw_uid, owner.pw_gid)
        private = self.queue_dir / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        os.chown(private, owner.pw_uid, owner.pw_gid)
        self.store_password(self.relays[0].password)
        _write(self.config_dir / "main.cf", _SEND_CONNECTOR_CF.format(
            queue=self.queue_dir, data=self.directory / "data", maillog=self.maillog_file,
            directory=self.directory, address=self.address, port=self.port, relayhost=self.relays[0].nexthop,
            fallback=", ".join(relay.nexthop for relay in self.relays[1:]), passwords=self.passwords_file,
            ca_file=self.relays[0].ca_file, cert=self.cert.cert_file, key=self.cert.key_file))
        _write(self.config_dir / "master.cf", _MASTER_CF.format(address=self.address, port=self.port))

    @property
    def passwords_file(self) -> Path:
        """Return the connector's stored credentials, one line per smart host (``smtp_sasl_password_maps``)."""
        return self.config_dir / "relay_passwords"

    def store_password(self, password: Secret) -> None:
        """Store ``password`` as the connector's credentials for every smart host (``postfix reload`` when running)."""
        _write(self.passwords_file, "".join(f"{relay.nexthop} {relay.username}:{password.reveal()}\n"
                                            for relay in self.relays), mode=0o600)
        if self._running:
            self.postfix("reload")
