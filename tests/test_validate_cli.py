"""``mailflow-probe validate`` and ``config-schema``: exit codes, one clear line per error, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.cli import main

REPO = Path(__file__).resolve().parent.parent
INVALID = REPO / "tests" / "config" / "invalid"
EXAMPLE_ENV = {
    "CONTOSO_SMTP_PASSWORD": "cli-smtp-contoso-5e1",
    "FOURTHCOFFEE_SMTP_PASSWORD": "cli-smtp-fourthcoffee-6f2",
    "CONTOSO_EWS_PASSWORD": "cli-ews-contoso-7a3",
    "FOURTHCOFFEE_EWS_PASSWORD": "cli-ews-fourthcoffee-8b4",
}
CORPUS_ENV = {"CONTOSO_SMTP_PASSWORD": "smtp-secret-7c1e", "FC_EWS_PASSWORD": "ews-secret-42ab"}
ALL_SECRETS = [*EXAMPLE_ENV.values(), *CORPUS_ENV.values(), "hunter2-inline-secret", "inline-cli-pass-0c9"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in EXAMPLE_ENV | CORPUS_ENV}
    environment.update(env or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "probe", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=60, check=False)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text


def test_validate_accepts_the_example_and_summarises_it() -> None:
    """The example with its environment set: exit 0, one summary line, nothing on stderr."""
    result = run("validate", "--config.file", "config/example.yaml", env=EXAMPLE_ENV)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "config OK: 2 routes, 4 smart hosts, 2 connector probes, 2 mailboxes\n", "")


def test_validate_names_file_line_and_field_of_a_mistake() -> None:
    """An invalid config: exit 2 and exactly its expected message on stderr, no traceback."""
    result = run("validate", "-c", "tests/config/invalid/port-not-an-integer.yaml", env=CORPUS_ENV)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (INVALID / "port-not-an-integer.expected").read_text()
    assert result.stderr.startswith("tests/config/invalid/port-not-an-integer.yaml:24: routes[0].smart_hosts[1].port:")


def test_validate_without_the_environment_says_which_variable_is_missing() -> None:
    """The example without its variables: exit 2, naming the first unset variable and where it is used."""
    result = run("validate", "-c", "config/example.yaml")
    assert result.returncode == 2
    assert result.stderr == ("config/example.yaml:32: mailboxes.fourthcoffee.ews.password_env: "
                             "environment variable FOURTHCOFFEE_EWS_PASSWORD is not set\n")


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: d / "absent.yaml", "absent.yaml: no such file"),
    (lambda d: d, ": is a directory, not a config file"),
    (lambda d: (d / "junk.yaml", (d / "junk.yaml").write_bytes(b"\x7fELF\x02\x01" + bytes(range(128, 256))))[0],
     "junk.yaml:1: not UTF-8 text (is this a binary file?)"),
    (lambda d: (d / "list.yaml", (d / "list.yaml").write_text("- a\n- b\n"))[0],
     "list.yaml:1: expected a mapping, got a list"),
    (lambda d: (d / "broken.yaml", (d / "broken.yaml").write_text("routes: [\n  {name: a\n"))[0],
     "broken.yaml:3: invalid YAML: while parsing a flow mapping, expected ',' or '}', but got '<stream end>'"),
], ids=["missing", "directory", "binary", "not-a-mapping", "unclosed-bracket"])
def test_validate_turns_every_unusable_file_into_one_line(tmp_path: Path, make, expected: str) -> None:
    """Missing, a directory, binary junk, the wrong shape, broken YAML: exit 2, one line, no traceback."""
    path: Path = make(tmp_path)
    result = run("validate", "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.rstrip("\n").endswith(expected)
    assert result.stderr.startswith(str(path))


def test_config_schema_prints_a_json_schema() -> None:
    """config-schema exits 0 and prints a JSON Schema document."""
    result = run("config-schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"signing_key_file", "state_file", "defaults", "metrics", "mailboxes", "routes"} == set(schema["properties"])


def test_validate_gives_every_invalid_config_its_expected_message(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Over the whole invalid-config folder, validate exits 2 with exactly the expected line and no secret."""
    monkeypatch.chdir(REPO)
    for name, value in CORPUS_ENV.items():
        monkeypatch.setenv(name, value)
    mismatches = []
    for path in sorted(INVALID.glob("*.yaml")):
        code = main(["validate", "-c", str(path.relative_to(REPO))])
        out, err = capsys.readouterr()
        expected = path.with_suffix(".expected").read_text()
        if (code, out, err) != (2, "", expected):
            mismatches.append((path.name, code, out, err))
        assert_no_secret(out, err)
    assert mismatches == []


def test_validate_prints_warnings_to_stderr_and_still_succeeds(tmp_path: Path) -> None:
    """An inline password is accepted with a warning on stderr that does not show it (and the minimal config's own
    warning: its sender's NDRs have no mailbox to come back to); exit 0."""
    text = (REPO / "tests" / "config" / "valid" / "minimal.yaml").read_text().replace(
        "        password_env: CONTOSO_SMTP_PASSWORD\n", "        password: inline-cli-pass-0c9\n")
    config = tmp_path / "probe.yaml"
    config.write_text(text)
    result = run("validate", "-c", str(config), env=CORPUS_ENV)
    assert result.returncode == 0
    assert result.stdout == "config OK: 1 route, 1 smart host, 1 mailbox\n"
    assert result.stderr == (f"warning: {config}:19: routes[0].smart_hosts[0].password: a password written in "
                             "the config file; prefer password_env or password_file\n"
                             f"warning: {config}:13: routes[0].sender: no mailbox has this address and "
                             "bounces_mailbox is not set: the route's NDRs are not read (a probe refused after its 250 "
                             "reads lost, not bounced)\n")
    assert_no_secret(result.stdout, result.stderr)
