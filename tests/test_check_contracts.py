"""``check``'s output contracts under hostile replies and faults of its own host, from a real process.

text and --debug show remote text with control characters escaped; ``--format json`` always parses (debug
details inside each object); ``--format nagios`` always prints one status line first and exits 3 on an
unexpected error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.lab import Lab
from probe.report import FORMATS
from tests.daemon_harness import with_open_files_limit
from tests.hostile_smtp import hostile_smtp

ROUTE = "contoso-to-fourthcoffee"
UTF8_PASSWORD = "Pässwörd-2026"

pytestmark = pytest.mark.usefixtures("fresh_exchangelib")


def check_argv(config: Path, *args: str, timeout: str = "15s", limit_files: int | None = None) -> list[str]:
    """Return the command line of ``python -m probe check`` (under a lowered open-files limit, if asked)."""
    argv = [sys.executable, "-m", "probe", "check", "-c", str(config), "--timeout", timeout, *args]
    return with_open_files_limit(argv, limit_files)


def run_check(config: Path, *args: str, timeout: str = "15s",
              limit_files: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m probe check`` as its own process (with a lowered open-files limit, if asked)."""
    return subprocess.run(check_argv(config, *args, timeout=timeout, limit_files=limit_files), capture_output=True,
                          text=True, timeout=120, check=False)


def run_checks(config: Path, *runs: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run one ``python -m probe check`` process per argument list, all at once (they are independent), and
    return each one's outcome, in order."""
    procs = [subprocess.Popen(check_argv(config, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in runs]
    outcomes = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        outcomes.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return outcomes


def hostile_config(lab: Any, tmp_path: Path, port: int) -> Path:
    """Write the lab's config with the first route's smart hosts replaced by one hostile server (no TLS)."""
    path: Path = lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=10, jitter=1, routes=[ROUTE])
    data = yaml.safe_load(path.read_text())
    data["routes"][0]["smart_hosts"] = [{"name": "evil", "host": "127.0.0.1", "port": port, "tls": "none",
                                         "allow_insecure": True}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_every_format_of_the_cli_comes_from_the_one_table() -> None:
    """The --format choices are the report's table of formats, nothing listed twice."""
    from probe.cli import build_parser

    args = build_parser().parse_args(["check", "-c", "x.yaml", "--format", "nagios"])
    assert args.format == "nagios"
    for name in ("text", "json", "nagios", "xml"):
        try:
            build_parser().parse_args(["check", "-c", "x.yaml", "--format", name])
        except SystemExit:
            assert name not in FORMATS
        else:
            assert name in FORMATS
    assert tuple(FORMATS) == ("text", "json", "nagios")


def test_escape_sequences_in_smtp_replies_never_reach_the_terminal(lab: Any, tmp_path: Path) -> None:
    """A smart host's banner and reply with ESC, BEL and CSI: text and nagios (--debug) show them escaped;
    JSON keeps them as data (JSON's own escapes) and still parses, the debug details inside each object."""
    with hostile_smtp() as port:
        config = hostile_config(lab, tmp_path, port)
        text, nagios, as_json = run_checks(config, ("--debug",), ("--format", "nagios", "--debug"),
                                           ("--format", "json", "--debug"))
    for proc in (text, nagios, as_json):
        assert "\x1b" not in proc.stdout + proc.stderr
        assert "\x07" not in proc.stdout + proc.stderr
        assert "\x9b" not in proc.stdout
    assert text.returncode == 1, text.stderr
    assert "\\x1b]0;pwned\\x07" in text.stdout  # shown, escaped: in the reply column and the transcript
    assert "mail/rejected" in text.stdout
    lines = nagios.stdout.splitlines()
    assert nagios.returncode == 2
    assert lines[0].startswith("MAILFLOW CRITICAL - ")
    assert "|" in lines[0]
    assert len(lines) > 1
    assert all("|" not in line for line in lines[1:])
    assert any("\\x1b]0;pwned" in line for line in lines[1:])
    items = json.loads(as_json.stdout)
    assert as_json.returncode == 1
    assert items[0]["verdict"] == "send_failed"
    assert items[0]["reason"] == "rejected"
    transcript = items[0]["debug"]["transcript"]
    assert any("\x1b]0;pwned\x07" in line for line in transcript)  # the data, unchanged beyond JSON's escaping
    assert "\\u001b" in as_json.stdout


def test_json_and_nagios_hold_their_shape_on_a_config_error(tmp_path: Path) -> None:
    """A config that does not load: JSON prints one parseable object with the error (exit 2); nagios one
    UNKNOWN line (exit 3); neither prints a traceback."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: [this is: not, valid\n")
    as_json, nagios = run_checks(broken, ("--format", "json"), ("--format", "nagios", "--debug"))
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)
    assert str(broken) in error["error"]
    assert error["exit_code"] == 2
    assert nagios.returncode == 3
    assert len(nagios.stdout.splitlines()) == 1
    assert nagios.stdout.startswith("MAILFLOW UNKNOWN - ")
    assert "Traceback" not in as_json.stderr + nagios.stderr + nagios.stdout


@pytest.mark.parametrize("fmt", ["json", "nagios", "text"])
def test_a_check_whose_host_runs_out_of_file_descriptors_keeps_its_contract(tmp_path: Path, fmt: str) -> None:
    """With the open-files limit far too low (a real setrlimit in the check's process), nothing is blamed on a
    smart host: every probe is unknown (reason local) or the check fails in its format's shape: JSON parses,
    nagios prints one UNKNOWN line first and exits 3, and there is no traceback."""
    with Lab.start(tmp_path / "lab", smart_hosts_per_forest=4) as lab:
        # 0-2 are stdio; two more descriptors for 8 sends at once and the two mailboxes' connections. The probes
        # the smart hosts took stay open until their deadline (their mailbox cannot be searched), then are
        # unknown: a short timeout, as the verdict is the same with a long one.
        proc = run_check(lab.config_path, "--format", fmt, timeout="4s", limit_files=5)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "send_failed" not in proc.stdout
    assert "refused" not in proc.stdout
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "local" in proc.stdout or "file descriptors" in proc.stdout + proc.stderr
    if fmt == "json":
        parsed = json.loads(proc.stdout)
        verdicts = [item["verdict"] for item in parsed] if isinstance(parsed, list) else []
        assert set(verdicts) <= {"unknown", "delivered"}  # never send_failed, never lost
        assert any(item["reason"] == "local" for item in parsed) if verdicts else True
        assert isinstance(parsed, list) or "file descriptors" in parsed["error"]
    elif fmt == "nagios":
        assert proc.stdout.startswith("MAILFLOW UNKNOWN - ")


def test_a_non_ascii_smtp_password_delivers_through_the_lab(tmp_path: Path) -> None:
    """Smart hosts whose account password is Pässwörd-2026: AUTH in UTF-8 (RFC 4616), every probe delivered, the
    connector probes too (the lab's Send connectors store that password)."""
    with Lab.start(tmp_path / "lab", smart_hosts_per_forest=1, smtp_password=UTF8_PASSWORD) as lab:
        proc = run_check(lab.config_path, "--format", "nagios")
        stats = lab.stats.to_json()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("MAILFLOW OK - 4 probes: 4 delivered")
    assert "'contoso-to-fourthcoffee/@connector'=" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert UTF8_PASSWORD not in proc.stdout + proc.stderr
    assert json.dumps(stats).count("auth_success") >= 1
