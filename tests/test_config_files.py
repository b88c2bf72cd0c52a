"""The files a config names, checked from outside: huge secret files, the state file, the signing key.

Real files only: a 6 GiB sparse password file read by a child process under a 1 GiB address-space limit,
real directories and permissions checked by a child that has dropped root for nobody (as a service account
sees them), and ``mailflow-probe validate`` run as its own process.
"""

from __future__ import annotations

import contextlib
import encodings.utf_8_sig  # noqa: F401 - imported before a child drops root (it may not read the library then)
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.config import ConfigError, EwsConfig, load_config, load_config_with_warnings
from probe.signing import SigningKeyError, load_or_create_key

REPO = Path(__file__).resolve().parent.parent
MINIMAL = REPO / "tests" / "config" / "valid" / "minimal.yaml"
ENV = {"CONTOSO_SMTP_PASSWORD": "smtp-secret-7c1e", "FC_EWS_PASSWORD": "ews-secret-42ab"}
SPARSE_BYTES = 6 << 30
ADDRESS_SPACE = 1 << 30  # the child's RLIMIT_AS: reading the sparse file whole would need 6 GiB
ROUTE_MAILBOX = "    mailbox: fourthcoffee\n"


def config_with(directory: Path, **replace: str) -> Path:
    """Write the minimal config into ``directory`` with lines replaced (``old line`` -> ``new line``).

    Its route reads its NDRs from the mailbox it sends to (``bounces_mailbox``), so the only warnings are those
    of the files under test (the minimal config alone warns that no mailbox receives its route's NDRs).
    """
    text = MINIMAL.read_text().replace(ROUTE_MAILBOX, ROUTE_MAILBOX + "    bounces_mailbox: fourthcoffee\n")
    for old, new in replace.items():
        old_line = {"key": "signing_key_file: signing.key\n", "state": "state_file: state.db\n",
                    "ews_password": "      password_env: FC_EWS_PASSWORD\n"}[old]
        assert old_line in text
        text = text.replace(old_line, new)
    path = directory / "probe.yaml"
    path.write_text(text)
    return path


def run_limited(args: list[str], *, address_space: int = ADDRESS_SPACE) -> subprocess.CompletedProcess[str]:
    """Run ``python -m probe ARGS`` under an address-space limit set in the child before it execs."""
    wrapper = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2); "
               "os.execv(sys.executable, [sys.executable, '-m', 'probe', *sys.argv[2:]])")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", wrapper, str(address_space), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def load_as_nobody(path: Path) -> str:
    """Return the error of loading ``path`` (or "ok: WARNINGS") in a forked child that dropped root for nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: file permissions apply as they do to a service account
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = "ok: " + " | ".join(load_config_with_warnings(path, environ=ENV).warnings)
        except ConfigError as exc:
            result = exc.describe()
        except BaseException as exc:  # any other outcome is reported to the parent as text
            result = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside the test's private tmp_path that nobody can enter (0755), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="mailflow-files-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def sparse(path: Path, size: int = SPARSE_BYTES) -> Path:
    """Make ``path`` a sparse file of ``size`` bytes (no disk blocks used)."""
    with path.open("wb") as stream:
        stream.truncate(size)
    path.chmod(0o600)
    return path


# --- secret files: size checked before reading ---------------------------------------------------------

def test_a_6_gib_sparse_password_file_is_refused_by_size_under_a_memory_limit(tmp_path: Path) -> None:
    """validate, under a 1 GiB address-space limit, refuses a 6 GiB password file by name, without reading it."""
    secret = sparse(tmp_path / "fc-ews.pass")
    config = config_with(tmp_path, ews_password="      password_file: fc-ews.pass\n")
    result = run_limited(["validate", "-c", str(config)])
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr == (f"{config}:10: mailboxes.fourthcoffee.ews.password_file: {secret} is 6 GiB, more "
                             "than a password file holds (64 KiB at most); is this the right file?\n")


def test_a_password_file_just_under_the_limit_is_read_and_one_over_is_refused(tmp_path: Path) -> None:
    """64 KiB of password is read whole; one byte more is refused with the size named."""
    secret = tmp_path / "fc-ews.pass"
    secret.write_text("p" * (64 << 10))
    secret.chmod(0o600)
    config = config_with(tmp_path, ews_password="      password_file: fc-ews.pass\n")
    backend = load_config(config, environ=ENV).mailboxes["fourthcoffee"].backend
    assert isinstance(backend, EwsConfig)
    assert len(backend.password.reveal()) == 64 << 10
    secret.write_text("p" * ((64 << 10) + 1))
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ=ENV)
    assert caught.value.describe().endswith(f"{secret} is 64 KiB, more than a password file holds (64 KiB at most);"
                                            " is this the right file?")


def test_a_6_gib_sparse_signing_key_is_refused_by_validate_and_by_the_daemon_under_a_memory_limit(
        tmp_path: Path) -> None:
    """The signing key file is a secret file too: validate refuses it by size; the daemon's reader never reads
    it whole (checked in a child under the 1 GiB limit)."""
    key = sparse(tmp_path / "signing.key")
    config = config_with(tmp_path)
    result = run_limited(["validate", "-c", str(config)])
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"{config}:2: signing_key_file: {key} is 6 GiB, more than a signing key file holds "
                             "(64 KiB at most); is this the right file?\n")
    code = ("import resource, sys; from pathlib import Path; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE})); "
            "from probe.signing import SigningKeyError, load_or_create_key\n"
            "try:\n    load_or_create_key(Path(sys.argv[1]))\nexcept SigningKeyError as exc:\n    print(exc)")
    child = subprocess.run([sys.executable, "-c", code, str(key)], cwd=REPO, capture_output=True, text=True,
                           timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (child.returncode, child.stderr) == (0, "")
    assert child.stdout == f"signing key file {key} is larger than 65536 bytes; is this the right file?\n"


def test_the_daemons_key_reader_refuses_a_file_that_grew_past_the_limit(tmp_path: Path) -> None:
    """A key file of 64 KiB + 1 byte is refused by load_or_create_key, and one of 64 KiB is used."""
    key = tmp_path / "signing.key"
    key.write_bytes(b"k" * (64 << 10))
    key.chmod(0o600)
    assert len(load_or_create_key(key)) == 64 << 10
    key.write_bytes(b"k" * ((64 << 10) + 1))
    with pytest.raises(SigningKeyError, match="larger than 65536 bytes"):
        load_or_create_key(key)


# --- the state file ---------------------------------------------------------------------------------------

def test_a_state_file_that_is_a_directory_is_refused_by_validate(tmp_path: Path) -> None:
    """validate (its own process) refuses a state_file that is a directory, naming file, line and field."""
    (tmp_path / "state.db").mkdir()
    config = config_with(tmp_path)
    result = run_limited(["validate", "-c", str(config)])
    assert result.returncode == 2
    assert result.stderr == f"{config}:3: state_file: {tmp_path / 'state.db'} is a directory, not a file\n"


def test_check_which_keeps_its_probes_in_memory_does_not_check_the_state_file(tmp_path: Path) -> None:
    """check loads with uses_state_file=False: a state_file that is a directory does not stop it."""
    (tmp_path / "state.db").mkdir()
    config = config_with(tmp_path)
    assert load_config(config, environ=ENV, uses_state_file=False).state_file == tmp_path / "state.db"
    with pytest.raises(ConfigError, match=r"is a directory, not a file$"):
        load_config(config, environ=ENV)


def test_a_state_file_in_a_directory_nobody_can_write_is_refused(shared_dir: Path) -> None:
    """A missing state file whose directory the service account cannot write in cannot be created: refused."""
    (shared_dir / "state").mkdir(mode=0o755)
    (shared_dir / "keys").mkdir()
    (shared_dir / "keys").chmod(0o777)
    config = config_with(shared_dir, state="state_file: state/state.db\n", key="signing_key_file: keys/signing.key\n")
    assert load_as_nobody(config) == (f"{config}:3: state_file: cannot create {shared_dir / 'state' / 'state.db'}:"
                                      f" {shared_dir / 'state'} is not writable")


def test_a_state_file_whose_directory_is_missing_is_created_there_or_refused(shared_dir: Path) -> None:
    """A missing directory is fine when an ancestor is writable (the daemon creates it), refused when not."""
    writable = shared_dir / "writable"
    writable.mkdir(mode=0o777)
    writable.chmod(0o777)
    key_dir = shared_dir / "keys"
    key_dir.mkdir(mode=0o777)
    key_dir.chmod(0o777)
    config = config_with(shared_dir, state="state_file: writable/new/deeper/state.db\n",
                         key="signing_key_file: keys/signing.key\n")
    assert load_as_nobody(config) == "ok: "
    config = config_with(shared_dir, state="state_file: new/state.db\n", key="signing_key_file: keys/signing.key\n")
    assert load_as_nobody(config) == (f"{config}:3: state_file: cannot create {shared_dir / 'new' / 'state.db'} "
                                      f"(nor its directory {shared_dir / 'new'}): {shared_dir} is not writable")


def test_a_state_file_nobody_can_write_or_in_a_read_only_directory_is_refused(shared_dir: Path) -> None:
    """An existing state file must be writable, and so must its directory (SQLite's journal goes beside it)."""
    key_dir = shared_dir / "keys"
    key_dir.mkdir()
    key_dir.chmod(0o777)
    state = shared_dir / "state.db"
    with contextlib.closing(sqlite3.connect(state)) as db:  # Python's sqlite3: no sqlite3 command on a bare Debian
        db.execute("CREATE TABLE t (x)")
    state.chmod(0o644)
    config = config_with(shared_dir, key="signing_key_file: keys/signing.key\n")
    assert load_as_nobody(config) == f"{config}:3: state_file: cannot write {state}: permission denied"
    state.chmod(0o666)
    assert load_as_nobody(config) == (f"{config}:3: state_file: cannot write in {shared_dir} (SQLite keeps its "
                                      "journal beside the state file): permission denied")
    shared_dir.chmod(0o777)
    assert load_as_nobody(config) == "ok: "


def test_a_state_file_that_is_not_a_sqlite_database_is_refused(tmp_path: Path) -> None:
    """state_file pointing (through a symlink) at a text file is refused; an empty file is fine (SQLite makes
    it a database)."""
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "state.db").symlink_to(tmp_path / "notes.txt")
    config = config_with(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ=ENV)
    assert caught.value.describe() == (f"{config}:3: state_file: {tmp_path / 'state.db'} is not a SQLite database; "
                                       "give state_file a path of its own")
    (tmp_path / "state.db").unlink()
    (tmp_path / "state.db").touch()
    assert load_config(config, environ=ENV).state_file == tmp_path / "state.db"


def test_a_state_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """A named pipe is not a state file (and is not opened, so the load does not hang)."""
    os.mkfifo(tmp_path / "state.db")
    with pytest.raises(ConfigError, match=r":3: state_file: .*state\.db is not a regular file$"):
        load_config(config_with(tmp_path), environ=ENV)


# --- the signing key --------------------------------------------------------------------------------------

def test_a_signing_key_that_is_a_directory_short_or_unreadable_is_refused(shared_dir: Path) -> None:
    """A directory, a key shorter than 32 bytes, or one the service account cannot read: one clear line each."""
    key = shared_dir / "signing.key"
    key.mkdir()
    config = config_with(shared_dir, state="state_file: db/state.db\n")
    (shared_dir / "db").mkdir()
    (shared_dir / "db").chmod(0o777)
    assert load_as_nobody(config) == f"{config}:2: signing_key_file: {key} is a directory, not a file"
    key.rmdir()
    key.write_bytes(b"short")
    key.chmod(0o600)
    os.chown(key, 65534, 65534)
    assert load_as_nobody(config) == (f"{config}:2: signing_key_file: {key} is too short (5 bytes); a signing key "
                                      "has at least 32 bytes (delete the file to have a new key made)")
    key.write_bytes(b"k" * 32)
    os.chown(key, 0, 0)
    assert load_as_nobody(config) == f"{config}:2: signing_key_file: cannot read {key}: permission denied"
    os.chown(key, 65534, 65534)
    assert load_as_nobody(config) == "ok: "


def test_a_missing_signing_key_must_be_creatable(shared_dir: Path) -> None:
    """A missing key is fine where the service account can create it, refused where it cannot."""
    (shared_dir / "db").mkdir()
    (shared_dir / "db").chmod(0o777)
    config = config_with(shared_dir, state="state_file: db/state.db\n")
    assert load_as_nobody(config) == (f"{config}:2: signing_key_file: cannot create {shared_dir / 'signing.key'}: "
                                      f"{shared_dir} is not writable")
    config = config_with(shared_dir, state="state_file: db/state.db\n", key="signing_key_file: db/keys/signing.key\n")
    assert load_as_nobody(config) == "ok: "


def test_a_signing_key_others_can_read_is_warned_about(tmp_path: Path) -> None:
    """A key file readable by group or others loads, with a warning naming the file and its mode."""
    key = tmp_path / "signing.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    loaded = load_config_with_warnings(config_with(tmp_path), environ=ENV)
    assert loaded.warnings == (f"{tmp_path / 'probe.yaml'}:2: signing_key_file: {key} can be read by other users "
                               "(mode 0644); chmod 600 it",)
