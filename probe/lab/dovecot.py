"""A private Dovecot for the lab's IMAP mailboxes: Debian's dovecot-imapd and dovecot-lmtpd, no system service.

It runs from ``dovecot -c CONF`` with everything under its own fresh directory (below /tmp, 0711, so its
unprivileged processes can reach it; removed when it stops): maildir mail stores, a passwd-file of the lab's
mailbox accounts (UTF-8 passwords, PLAIN scheme), INBOX plus ``Junk`` (``\\Junk``) and ``Trash`` (``\\Trash``)
created on first use, IMAP in the clear on one loopback port (the lab's IMAP front, probe.lab.imap_front,
terminates TLS in front of it and injects the faults), and LMTP on a unix socket, where recipients
``name+Junk@domain`` are saved to Junk. It is started as root, as Debian's packages expect.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from probe.secret import Secret

DOVECOT: Final = Path("/usr/sbin/dovecot")
IMAP_BINARY: Final = Path("/usr/lib/dovecot/imap")
LMTP_BINARY: Final = Path("/usr/lib/dovecot/lmtp")
START_TIMEOUT: Final = 20.0
_TRIES: Final = 3  # ports taken between choosing and binding are tried again

_CONF: Final = """\
# The lab's private Dovecot: IMAP (plain, loopback; TLS is the lab's IMAP front's) and LMTP (unix socket).
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = mailflow-lab-{name}
log_path = {dir}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{dir}/mail/%d/%n
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1
mail_max_userip_connections = 64
lmtp_save_to_detail_mailbox = yes
recipient_delimiter = +
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {dir}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={dir}/home/%d/%n
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service auth {{
  user = root
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


class DovecotError(Exception):
    """The lab's Dovecot could not be set up, started or stopped; the message says why."""


def missing_parts() -> list[str]:
    """Return what the lab's IMAP mailboxes need that this machine lacks (scripts/setup installs them)."""
    missing = [f"{path} (Debian package {package})" for path, package in
               ((DOVECOT, "dovecot-core"), (IMAP_BINARY, "dovecot-imapd"), (LMTP_BINARY, "dovecot-lmtpd"))
               if not path.exists()]
    if os.geteuid() != 0:
        missing.append("root (the lab starts Dovecot as root, as Debian's packages expect)")
    return missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_dovecot(conf: Path) -> tuple[int, str]:
    """Run ``dovecot -c CONF``; return its exit code and output (to a file: the daemon keeps its parent's
    stdout open, and a pipe would never end)."""
    with tempfile.TemporaryFile() as out:
        done = subprocess.run([str(DOVECOT), "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=30, check=False)
        out.seek(0)
        return done.returncode, out.read().decode("utf-8", errors="replace").strip()


class Dovecot:
    """The lab's Dovecot: ``start()`` it, read ``imap_port`` and ``lmtp_socket``, ``stop()`` it."""

    def __init__(self, *, users: Mapping[str, Secret], name: str = "lab") -> None:
        self.users = dict(users)
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="mailflow-lab-dovecot-", dir="/tmp"))
        self.directory.chmod(0o711)
        self.imap_port = 0
        self._running = False

    @property
    def lmtp_socket(self) -> Path:
        """Return the path of the LMTP socket."""
        return self.directory / "run" / "lmtp"

    @property
    def log_file(self) -> Path:
        """Return Dovecot's log file."""
        return self.directory / "dovecot.log"

    def log_text(self) -> str:
        """Return Dovecot's log so far."""
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def start(self) -> None:
        """Write the configuration and start Dovecot; raise DovecotError when it does not come up."""
        missing = missing_parts()
        if missing:
            raise DovecotError("the lab's IMAP mailboxes need " + "; ".join(missing) + " (run scripts/setup)")
        self._prepare()
        problem = ""
        for _ in range(_TRIES):
            self.imap_port = _free_port()
            (self.directory / "dovecot.conf").write_text(
                _CONF.format(dir=self.directory, name=self.directory.name, imap_port=self.imap_port))
            self._running = True  # stop() looks for its PID file even if the start fails half-way
            code, problem = _run_dovecot(self.directory / "dovecot.conf")
            if code == 0:
                self._wait_ready()
                return
            if "Address already in use" not in problem:
                break
        raise DovecotError(f"Dovecot did not start: {problem[-1500:]}")

    def _prepare(self) -> None:
        for sub in ("run", "state"):
            (self.directory / sub).mkdir(mode=0o755, exist_ok=True)
        for sub in ("mail", "home"):
            (self.directory / sub).mkdir(mode=0o700, exist_ok=True)
            shutil.chown(self.directory / sub, "dovecot", "dovecot")
        users = self.directory / "users"
        fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for user, secret in self.users.items():
                if any(ch in secret.reveal() for ch in ":\n\r"):
                    raise DovecotError(f"the password of {user} cannot be written to a passwd-file (':' or a newline)")
                handle.write(f"{user.lower()}:{{PLAIN}}{secret.reveal()}\n")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=2.0) as sock:
                    if sock.makefile("rb").readline(1000).startswith(b"* OK") and self.lmtp_socket.exists():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DovecotError(f"Dovecot gave no IMAP greeting in {START_TIMEOUT:.0f} s; its log: "
                                   f"{self.log_text()[-1500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Dovecot (TERM, then KILL) and remove its directory; safe to call twice."""
        if self._running:
            self._running = False
            self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _terminate(self) -> None:
        try:
            pid = int((self.directory / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if not running(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Say whether ``pid`` runs. A zombie has ended: Dovecot's master daemonizes, so its parent is PID 1, and
    where PID 1 reaps late (a container's init) /proc/PID stays as a zombie (here 1.3 s of each 2.6 s stop)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
