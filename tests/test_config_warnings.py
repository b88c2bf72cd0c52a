"""Warnings of a config that works but exposes something: AUTH in the clear with ``tls: none``.

Seen three ways: by the loader, by ``mailflow-probe validate`` (its own process), and in the log of
``mailflow-probe run`` started with the container image's own command line (the Dockerfile's CMD, its config
path and port swapped for a temporary file and an ephemeral loopback port).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from probe.config import load_config_with_warnings

REPO = Path(__file__).resolve().parent.parent
MINIMAL = REPO / "tests" / "config" / "valid" / "minimal.yaml"
ENV = {"CONTOSO_SMTP_PASSWORD": "smtp-secret-7c1e", "FC_EWS_PASSWORD": "ews-secret-42ab"}
HOST_LINE = "        host: 64.4.6.100\n"
ROUTE_MAILBOX = "    mailbox: fourthcoffee\n"
CLEAR_AUTH = ('"none" with a username and password: AUTH sends them unencrypted, readable on the network')


def write_config(tmp_path: Path, extra: str, *, credentials: bool = True, host: str = "64.4.6.100") -> Path:
    """Write the minimal config with ``extra`` lines under its smart host (and without its credentials); its route
    reads its NDRs from the mailbox it sends to, so the only warnings are those of the smart host under test."""
    text = MINIMAL.read_text().replace(HOST_LINE, f"        host: {host}\n{extra}")
    text = text.replace(ROUTE_MAILBOX, ROUTE_MAILBOX + "    bounces_mailbox: fourthcoffee\n")
    if not credentials:
        text = text.replace("        username: FourthCoffee@Contoso.com\n        password_env: CONTOSO_SMTP_PASSWORD\n",
                            "")
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    return path


def test_tls_none_with_credentials_is_warned_naming_file_line_and_field(tmp_path: Path) -> None:
    """tls: none (allowed) with a username and password loads, with one warning at the tls line."""
    path = write_config(tmp_path, "        tls: none\n        allow_insecure: true\n")
    loaded = load_config_with_warnings(path, environ=ENV)
    assert loaded.config.routes[0].smart_hosts[0].tls == "none"
    assert loaded.warnings == (f"{path}:19: routes[0].smart_hosts[0].tls: {CLEAR_AUTH}",)


def test_tls_none_without_credentials_or_with_starttls_is_not_warned(tmp_path: Path) -> None:
    """No credentials to expose, or TLS before AUTH: no warning."""
    plain = write_config(tmp_path, "        tls: none\n        allow_insecure: true\n", credentials=False)
    assert load_config_with_warnings(plain, environ=ENV).warnings == ()
    starttls = write_config(tmp_path, "        tls: starttls\n")
    assert load_config_with_warnings(starttls, environ=ENV).warnings == ()


def test_validate_prints_the_clear_text_auth_warning_and_succeeds(tmp_path: Path) -> None:
    """validate (its own process) exits 0 and prints the warning on stderr, without the password."""
    path = write_config(tmp_path, "        tls: none\n        allow_insecure: true\n")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "probe", "validate", "-c", str(path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "config OK: 1 route, 1 smart host, 1 mailbox\n")
    assert result.stderr == f"warning: {path}:19: routes[0].smart_hosts[0].tls: {CLEAR_AUTH}\n"
    assert ENV["CONTOSO_SMTP_PASSWORD"] not in result.stderr


def container_command(config: Path) -> list[str]:
    """Return the Dockerfile's CMD with the image's config path and port swapped for a test's."""
    text = (REPO / "Dockerfile").read_text()
    found = re.search(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert found is not None, "the Dockerfile has no CMD in exec form"
    command: list[str] = json.loads(found.group(1))
    assert command[0] == "run"
    assert {"/etc/mailflow-probe/config.yaml", ":9425"} <= set(command)
    swapped = {"/etc/mailflow-probe/config.yaml": str(config), ":9425": "127.0.0.1:0"}
    return [swapped.get(arg, arg) for arg in command]


def test_the_containers_command_logs_the_warning_at_start(tmp_path: Path) -> None:
    """The image's command (run) logs the clear-text AUTH warning as a config warning when it starts."""
    insecure = "        port: 9\n        tls: none\n        allow_insecure: true\n"
    config = write_config(tmp_path, insecure, host="127.0.0.1")
    config.write_text(config.read_text().replace("https://mail.fourthcoffee.com/", "https://127.0.0.1:9/"))
    log = tmp_path / "daemon.log"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "probe", *container_command(config), "--log.format", "json"],
                                   cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"msg": "started"' not in log.read_text() and process.poll() is None:
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = [line["msg"] for line in lines if line["level"] == "warn" and line["msg"].startswith("config: ")]
    assert '"msg": "started"' in log.read_text(), log.read_text()
    assert warnings == [f"config: {config}:20: routes[0].smart_hosts[0].tls: {CLEAR_AUTH}"], log.read_text()
    assert ENV["CONTOSO_SMTP_PASSWORD"] not in log.read_text()
