"""The config loader: strict YAML, errors that name file, line and field, defaults, secrets, schema."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.config import (
    BACKENDS,
    SECTIONS,
    Config,
    ConfigError,
    EwsConfig,
    ImapConfig,
    LoadedConfig,
    config_json_schema,
    load_config,
    load_config_with_warnings,
    redacted_config,
)
from probe.duration import DurationError, format_duration, parse_duration
from probe.secret import Secret
from probe.vocabulary import MailboxFolder

REPO = Path(__file__).resolve().parent.parent
INVALID = REPO / "tests" / "config" / "invalid"
MINIMAL = REPO / "tests" / "config" / "valid" / "minimal.yaml"
EXAMPLE = REPO / "config" / "example.yaml"
SMTP_SECRET = "smtp-secret-7c1e"
EWS_SECRET = "ews-secret-42ab"
ENV = {"CONTOSO_SMTP_PASSWORD": SMTP_SECRET, "FC_EWS_PASSWORD": EWS_SECRET}
def warnings_besides_bounces(loaded: LoadedConfig) -> tuple[str, ...]:
    """Return the warnings other than the minimal config's own (its sender has no mailbox for NDRs)."""
    return tuple(w for w in loaded.warnings if not w.endswith(NO_BOUNCES))


NO_BOUNCES = ("routes[0].sender: no mailbox has this address and bounces_mailbox is not set: the route's NDRs are not"
              " read (a probe refused after its 250 reads lost, not bounced)")
EXAMPLE_ENV = {
    "CONTOSO_SMTP_PASSWORD": "example-smtp-contoso-1",
    "FOURTHCOFFEE_SMTP_PASSWORD": "example-smtp-fourthcoffee-2",
    "CONTOSO_EWS_PASSWORD": "example-ews-contoso-3",
    "FOURTHCOFFEE_EWS_PASSWORD": "example-ews-fourthcoffee-4",
}
INVALID_CASES = sorted(path.stem for path in INVALID.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "probe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal_with(old: str, new: str) -> str:
    text = MINIMAL.read_text()
    assert old in text
    return text.replace(old, new, 1)


SMART_HOST_LINE = "        host: 64.4.6.100\n"


# --- the folder of invalid configs ------------------------------------------------------------------------

@pytest.mark.parametrize("name", INVALID_CASES)
def test_invalid_config_gives_its_exact_message(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each invalid config is refused with exactly the message (file, line, field, text) beside it."""
    monkeypatch.chdir(REPO)
    expected = (INVALID / f"{name}.expected").read_text().strip()
    with pytest.raises(ConfigError) as caught:
        load_config(Path("tests/config/invalid") / f"{name}.yaml", environ=ENV)
    assert caught.value.describe() == expected
    assert str(caught.value) == expected


def test_every_invalid_config_has_an_expected_message_and_there_are_many() -> None:
    """The invalid-config folder pairs every YAML file with its expected message and covers 25+ mistakes."""
    expected = sorted(path.stem for path in INVALID.glob("*.expected"))
    assert expected == INVALID_CASES
    assert len(INVALID_CASES) >= 25


@pytest.mark.parametrize("name", INVALID_CASES)
def test_errors_never_show_a_secret(name: str) -> None:
    """No error message contains a password, whether from the environment or written inline."""
    with pytest.raises(ConfigError) as caught:
        load_config(INVALID / f"{name}.yaml", environ=ENV)
    message = caught.value.describe()
    for secret in (SMTP_SECRET, EWS_SECRET, "hunter2-inline-secret", "12345678"):
        assert secret not in message


def test_the_minimal_config_is_valid() -> None:
    """The config the invalid ones are made from loads, so each invalid one fails for its one change (its one
    warning: the sender's NDRs have no mailbox to come back to)."""
    loaded = load_config_with_warnings(MINIMAL, environ=ENV)
    assert [w.split(": ", 1)[1] for w in loaded.warnings] == [NO_BOUNCES]
    assert [route.name for route in loaded.config.routes] == ["contoso-to-fourthcoffee"]


# --- the example --------------------------------------------------------------------------------------------

def test_the_example_config_validates_without_warnings() -> None:
    """config/example.yaml loads when its environment variables are set: two routes, four smart hosts."""
    loaded = load_config_with_warnings(EXAMPLE, environ=EXAMPLE_ENV)
    config = loaded.config
    assert loaded.warnings == ()
    assert {route.name for route in config.routes} == {"contoso-to-fourthcoffee", "fourthcoffee-to-contoso"}
    assert sorted(config.mailboxes) == ["contoso", "fourthcoffee"]
    assert all(len(route.smart_hosts) == 2 for route in config.routes)
    assert "64.4.6.100" in {host.host for route in config.routes for host in route.smart_hosts}
    passwords = {host.password for route in config.routes for host in route.smart_hosts}
    assert passwords == {Secret("example-smtp-contoso-1"), Secret("example-smtp-fourthcoffee-2")}


def test_the_example_config_comments_every_key_it_uses() -> None:
    """The example shows every key the loader accepts, each explained by a comment where first set."""
    lines = EXAMPLE.read_text().splitlines()
    first_use: dict[str, int] = {}
    for index, line in enumerate(lines):
        match = re.match(r"^\s*(?:- )?([a-z_]+):", line)
        if match and match.group(1) not in first_use:
            first_use[match.group(1)] = index
    uncommented = [key for key, index in first_use.items()
                   if "#" not in lines[index] and not lines[index - 1].lstrip().startswith("#")]
    assert uncommented == []
    accepted = {key for specs in SECTIONS.values() for spec in specs for key in spec.yaml_keys()}
    text = "\n".join(lines)
    assert [key for key in sorted(accepted) if not re.search(rf"\b{key}:", text)] == []


# --- defaults, overrides and derived values ------------------------------------------------------------------

def test_routes_take_interval_timeout_and_jitter_from_defaults(tmp_path: Path) -> None:
    """A route that sets no schedule uses the defaults section's values."""
    text = minimal_with("state_file: state.db\n", "state_file: state.db\ndefaults: {interval: 2m, timeout: 90s, "
                        "jitter: 250ms}\n")
    route = load_config(write(tmp_path, text), environ=ENV).routes[0]
    assert (route.interval, route.timeout, route.jitter) == (120.0, 90.0, 0.25)


def test_a_route_overrides_the_defaults_it_sets(tmp_path: Path) -> None:
    """Per-route interval, timeout and jitter win over defaults; the rest still come from defaults."""
    text = minimal_with("    mailbox: fourthcoffee\n",
                        "    mailbox: fourthcoffee\n    interval: 1h30m\n    timeout: 45\n")
    route = load_config(write(tmp_path, text), environ=ENV).routes[0]
    assert (route.interval, route.timeout, route.jitter) == (5400.0, 45.0, 10.0)


def test_without_a_defaults_section_the_built_in_defaults_apply() -> None:
    """No defaults section: 60s interval, 5m timeout, 10s jitter; port 25, STARTTLS, verification on."""
    config = load_config(MINIMAL, environ=ENV)
    route = config.routes[0]
    host = route.smart_hosts[0]
    assert (route.interval, route.timeout, route.jitter) == (60.0, 300.0, 10.0)
    assert (host.port, host.tls, host.verify, host.allow_insecure) == (25, "starttls", True, False)
    assert config.mailboxes["fourthcoffee"].folders == ("inbox", "junkemail")
    assert isinstance(config.mailboxes["fourthcoffee"].backend, EwsConfig)
    assert config.mailboxes["fourthcoffee"].backend.auth == "ntlm"
    assert config.recipient_of(route) == "probe@fourthcoffee.com"


def test_implicit_tls_defaults_to_port_465_and_an_explicit_port_is_kept(tmp_path: Path) -> None:
    """tls: implicit without a port means 465; with a port, that port."""
    implicit = minimal_with(SMART_HOST_LINE, SMART_HOST_LINE + "        tls: implicit\n")
    assert load_config(write(tmp_path, implicit), environ=ENV).routes[0].smart_hosts[0].port == 465
    explicit = minimal_with(SMART_HOST_LINE, SMART_HOST_LINE + "        tls: implicit\n        port: 2465\n")
    assert load_config(write(tmp_path, explicit), environ=ENV).routes[0].smart_hosts[0].port == 2465


def test_tls_none_is_accepted_with_allow_insecure(tmp_path: Path) -> None:
    """tls: none loads when allow_insecure is true."""
    text = minimal_with(SMART_HOST_LINE, SMART_HOST_LINE + "        tls: none\n        allow_insecure: true\n")
    host = load_config(write(tmp_path, text), environ=ENV).routes[0].smart_hosts[0]
    assert (host.tls, host.allow_insecure) == ("none", True)


def test_paths_are_relative_to_the_config_files_directory(tmp_path: Path) -> None:
    """ca_file, signing_key_file and state_file given relative are taken from the config's own directory."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = minimal_with(SMART_HOST_LINE, SMART_HOST_LINE + "        ca_file: certs/ca.pem\n")
    config = load_config(write(tmp_path, text), environ=ENV)
    assert config.routes[0].smart_hosts[0].ca_file == tmp_path / "certs" / "ca.pem"
    assert config.signing_key_file == tmp_path / "signing.key"
    assert config.state_file == tmp_path / "state.db"
    assert config.source == tmp_path / "probe.yaml"


def test_yaml_merge_keys_share_settings_and_a_later_key_overrides(tmp_path: Path) -> None:
    """A smart host may merge common settings with <<: and override one of them."""
    text = minimal_with("      - name: fc-edge-1\n", "      - &common\n        name: fc-edge-1\n") + (
        "      - <<: *common\n        name: fc-edge-2\n        host: 64.4.6.101\n")
    hosts = load_config(write(tmp_path, text), environ=ENV).routes[0].smart_hosts
    assert [(host.name, host.host, host.username) for host in hosts] == [
        ("fc-edge-1", "64.4.6.100", "FourthCoffee@Contoso.com"),
        ("fc-edge-2", "64.4.6.101", "FourthCoffee@Contoso.com"),
    ]


def test_ews_version_and_timeouts_are_read(tmp_path: Path) -> None:
    """A quoted EWS version, a timeout in ms and verify: false (warned) reach EwsConfig."""
    text = minimal_with("      password_env: FC_EWS_PASSWORD\n", "      password_env: FC_EWS_PASSWORD\n"
                        '      version: "15.2.1544.4"\n      timeout: 1500ms\n      verify: false\n')
    loaded = load_config_with_warnings(write(tmp_path, text), environ=ENV)
    ews = loaded.config.mailboxes["fourthcoffee"].backend
    assert isinstance(ews, EwsConfig)
    assert (ews.version, ews.timeout, ews.verify) == ("15.2.1544.4", 1.5, False)
    assert any("mailboxes.fourthcoffee.ews.verify: certificate verification is off" in w for w in loaded.warnings)


def test_an_unused_mailbox_is_warned_about(tmp_path: Path) -> None:
    """A mailbox no route sends to loads, with a warning naming it."""
    text = minimal_with("routes:\n", "  spare:\n    address: spare@fourthcoffee.com\n    ews:\n"
                        "      url: https://mail.fourthcoffee.com/EWS/Exchange.asmx\n      username: u\n"
                        "      password_env: FC_EWS_PASSWORD\nroutes:\n")
    loaded = load_config_with_warnings(write(tmp_path, text), environ=ENV)
    assert [w.split(": ", 1)[1] for w in warnings_besides_bounces(loaded)] == [
        "mailboxes.spare: no route sends to this mailbox"]


CONTOSO_MAILBOX = ("  contoso:\n    address: Probe@Contoso.com\n    ews:\n"
                   "      url: https://mail.contoso.com/EWS/Exchange.asmx\n      username: u\n"
                   "      password_env: FC_EWS_PASSWORD\nroutes:\n")


def test_the_mailbox_of_the_senders_address_receives_the_routes_ndrs(tmp_path: Path) -> None:
    """The mailbox whose address is the sender (case aside) is the route's bounces mailbox: no warning, and it is
    not unused though no route sends to it."""
    loaded = load_config_with_warnings(write(tmp_path, minimal_with("routes:\n", CONTOSO_MAILBOX)), environ=ENV)
    config = loaded.config
    assert loaded.warnings == ()
    assert config.bounces_mailbox_of(config.routes[0]) == "contoso"


def test_bounces_mailbox_names_another_mailbox_for_the_ndrs(tmp_path: Path) -> None:
    """An explicit bounces_mailbox wins over the sender's address."""
    text = minimal_with("routes:\n", CONTOSO_MAILBOX.replace("Probe@Contoso.com", "ndr@contoso.com"))
    text = text.replace("    mailbox: fourthcoffee\n", "    mailbox: fourthcoffee\n    bounces_mailbox: contoso\n")
    loaded = load_config_with_warnings(write(tmp_path, text), environ=ENV)
    assert loaded.warnings == ()
    assert loaded.config.bounces_mailbox_of(loaded.config.routes[0]) == "contoso"


def test_a_route_whose_ndrs_no_mailbox_receives_is_warned_about(tmp_path: Path) -> None:
    """Without a mailbox for the sender's address or a bounces_mailbox, the route loads with a warning that says
    what is lost: its NDRs are not read."""
    loaded = load_config_with_warnings(MINIMAL, environ=ENV)
    assert loaded.config.bounces_mailbox_of(loaded.config.routes[0]) is None
    assert loaded.warnings == (f"{MINIMAL}:13: {NO_BOUNCES}",)


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environ, password_env is looked up in os.environ."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    host = load_config(MINIMAL).routes[0].smart_hosts[0]
    assert host.password == Secret(SMTP_SECRET)


# --- secrets ----------------------------------------------------------------------------------------------

def test_an_inline_password_is_accepted_and_warned_without_showing_it(tmp_path: Path) -> None:
    """An inline password works, and the warning names file, line and field but not the password."""
    text = minimal_with("        password_env: CONTOSO_SMTP_PASSWORD\n", "        password: inline-pass-9d2f\n")
    path = write(tmp_path, text)
    loaded = load_config_with_warnings(path, environ=ENV)
    assert loaded.config.routes[0].smart_hosts[0].password == Secret("inline-pass-9d2f")
    assert warnings_besides_bounces(loaded) == (
        f"{path}:19: routes[0].smart_hosts[0].password: a password written in the config file; "
        "prefer password_env or password_file",
    )


def test_a_password_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    """password_file (relative to the config) gives the file's text minus one trailing newline."""
    secret_file = tmp_path / "fc-ews.pass"
    secret_file.write_text("file-pass-31c7\n")
    secret_file.chmod(0o600)
    text = minimal_with("      password_env: FC_EWS_PASSWORD\n", "      password_file: fc-ews.pass\n")
    loaded = load_config_with_warnings(write(tmp_path, text), environ=ENV)
    backend = loaded.config.mailboxes["fourthcoffee"].backend
    assert isinstance(backend, EwsConfig)
    assert backend.password == Secret("file-pass-31c7")
    assert warnings_besides_bounces(loaded) == ()


def test_a_password_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    """A world-readable password file is used, with a warning that names the file."""
    secret_file = tmp_path / "fc-ews.pass"
    secret_file.write_text("file-pass-31c7")
    secret_file.chmod(0o644)
    text = minimal_with("      password_env: FC_EWS_PASSWORD\n", "      password_file: fc-ews.pass\n")
    loaded = load_config_with_warnings(write(tmp_path, text), environ=ENV)
    assert len(warnings_besides_bounces(loaded)) == 1
    assert f"{secret_file} can be read by every user" in warnings_besides_bounces(loaded)[0]
    assert "file-pass-31c7" not in warnings_besides_bounces(loaded)[0]


def test_an_empty_password_file_or_env_var_is_an_error(tmp_path: Path) -> None:
    """An empty password file, or an empty environment variable, is refused by name."""
    (tmp_path / "fc-ews.pass").write_text("\n")
    text = minimal_with("      password_env: FC_EWS_PASSWORD\n", "      password_file: fc-ews.pass\n")
    with pytest.raises(ConfigError, match=r":10: mailboxes\.fourthcoffee\.ews\.password_file: .*\.pass is empty$"):
        load_config(write(tmp_path, text), environ=ENV)
    with pytest.raises(ConfigError, match=r"environment variable FC_EWS_PASSWORD is empty$"):
        load_config(MINIMAL, environ={**ENV, "FC_EWS_PASSWORD": ""})


def test_secrets_never_appear_in_repr_str_or_the_redacted_config() -> None:
    """repr and str of the config, and redacted_config, show every password as <secret>."""
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    texts = [repr(config), str(config), json.dumps(redacted_config(config))]
    for text in texts:
        for secret in EXAMPLE_ENV.values():
            assert secret not in text
    plain = redacted_config(config)
    assert plain["mailboxes"]["fourthcoffee"]["ews"]["password"] == "<secret>"
    assert {host["password"] for route in plain["routes"] for host in route["smart_hosts"]} == {"<secret>"}


def test_the_redacted_config_is_the_effective_config_as_plain_data() -> None:
    """redacted_config holds the defaults applied (durations in seconds, paths as text) and is JSON-ready."""
    plain = redacted_config(load_config(MINIMAL, environ=ENV))
    assert json.loads(json.dumps(plain)) == plain
    route = plain["routes"][0]
    assert (route["interval"], route["timeout"], route["jitter"]) == (60.0, 300.0, 10.0)
    assert route["smart_hosts"][0]["port"] == 25
    assert plain["mailboxes"]["fourthcoffee"]["folders"] == ["inbox", "junkemail"]
    assert isinstance(plain["signing_key_file"], str)


# --- files that are not configs -------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "expected"), [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe", ":1: not UTF-8 text (is this a binary file?)"),
    (b"signing_key_file: a\nstate_file: \x00\n", ":2: not a YAML text file: unacceptable character #x0000"),
    (b"", ": the file is empty; expected a mapping with signing_key_file, state_file, mailboxes and routes"),
    (b"just a sentence\n", ":1: expected a mapping, got \"just a sentence\""),
    (b"[" * 1000, ": nested too deeply"),
], ids=["binary", "nul", "empty", "sentence", "nesting"])
def test_files_that_are_not_configs_give_clear_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    """Binary junk, NUL characters, an empty file, a plain sentence, absurd nesting: one clear line each."""
    path = tmp_path / "junk.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENV)
    assert caught.value.describe() == f"{path}{expected}"


def test_a_missing_file_and_a_directory_give_clear_errors(tmp_path: Path) -> None:
    """A path that does not exist, or is a directory, is refused with the path named."""
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml")
    assert missing.value.describe() == f"{tmp_path / 'nope.yaml'}: no such file"
    with pytest.raises(ConfigError) as directory:
        load_config(tmp_path)
    assert directory.value.describe() == f"{tmp_path}: is a directory, not a config file"


def _load_as_nobody(path: Path) -> str:
    """Return the error (or "ok") of loading ``path`` in a forked child that has dropped root for nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no root, so file permissions apply as they do to any service account
        os.close(read_end)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            load_config(path, environ=ENV)
            result = "ok"
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


def test_an_unreadable_file_gives_a_clear_error() -> None:
    """A file without read permission is refused as such (checked as an unprivileged user, even under root)."""
    directory = Path(tempfile.mkdtemp(prefix="mailflow-unreadable-"))
    try:
        directory.chmod(0o755)
        path = write(directory, MINIMAL.read_text())
        path.chmod(0)
        assert _load_as_nobody(path) == f"{path}: cannot read: permission denied"
    finally:
        shutil.rmtree(directory)


# --- durations ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("90", 90.0), ("1.5", 1.5),
    ("1d", 86400.0), ("2m30s", 150.0), ("1s500ms", 1.5), ("0s", 0.0), (" 10s ", 10.0),
])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    """Durations with units, combined units, and plain numbers all mean seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "5m1h", "-1s", "1h 30m", "10x", "1e3s", "ms", "5mm"])
def test_malformed_durations_are_refused(text: str) -> None:
    """Anything but digits with d/h/m/s/ms units in that order is not a duration."""
    with pytest.raises(DurationError, match="expected a duration like 30s, 5m, 1h30m or 250ms"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.25, "250ms"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d"), (1.5, "1s500ms"),
])
def test_durations_format_the_way_the_config_writes_them(seconds: float, text: str) -> None:
    """format_duration writes the largest units first, to the millisecond."""
    assert format_duration(seconds) == text


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=10 * 86400 * 1000))
def test_formatting_and_parsing_a_duration_round_trips(millis: int) -> None:
    """Any whole number of milliseconds survives format_duration then parse_duration."""
    assert round(parse_duration(format_duration(millis / 1000)) * 1000) == millis


# --- the JSON Schema ----------------------------------------------------------------------------------------

def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    """config_json_schema is JSON, declares draft 2020-12, and passes the metaschema."""
    schema = json.loads(json.dumps(config_json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_schema_covers_exactly_the_keys_the_loader_accepts() -> None:
    """Every key of every section of the field table is in the schema, and the schema has no others."""
    schema = config_json_schema()
    sections = {"config": schema, **schema["$defs"]}
    assert set(sections) == set(SECTIONS)
    for name, specs in SECTIONS.items():
        accepted = {key for spec in specs for key in spec.yaml_keys()}
        assert set(sections[name]["properties"]) == accepted, name
        assert sections[name]["additionalProperties"] is False


def test_the_example_config_satisfies_the_schema_and_a_typo_does_not() -> None:
    """An editor using the schema accepts the example and flags an unknown key or a double secret."""
    validator = jsonschema.Draft202012Validator(config_json_schema())
    example = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(example)) == []
    typo = yaml.safe_load((INVALID / "unknown-key-typo.yaml").read_text())
    assert list(validator.iter_errors(typo)) != []
    twice = yaml.safe_load((INVALID / "secret-given-twice.yaml").read_text())
    assert list(validator.iter_errors(twice)) != []
    insecure = yaml.safe_load((INVALID / "tls-none-needs-allow-insecure.yaml").read_text())
    assert list(validator.iter_errors(insecure)) != []


def test_schema_defaults_are_the_dataclass_defaults() -> None:
    """The defaults an editor shows are the ones the loader applies."""
    defs = config_json_schema()["$defs"]
    assert defs["smart_host"]["properties"]["port"]["default"] == 25
    assert defs["smart_host"]["properties"]["tls"]["default"] == "starttls"
    assert defs["defaults"]["properties"]["timeout"]["default"] == "5m"
    assert defs["mailbox"]["properties"]["folders"]["default"] == ["inbox", "junkemail"]
    assert "default" not in defs["route"]["properties"]["interval"]


def test_each_backend_is_one_branch_of_the_mailbox_schema() -> None:
    """A mailbox gives exactly one backend section: the schema has a oneOf branch per backend, and refuses none."""
    schema = config_json_schema()
    mailbox = schema["$defs"]["mailbox"]
    (group,) = [rule["oneOf"] for rule in mailbox["allOf"] if "oneOf" in rule]
    assert group == [{"required": [backend.name]} for backend in BACKENDS]
    for backend in BACKENDS:
        assert mailbox["properties"][backend.name] == {"description": backend.doc, "$ref": f"#/$defs/{backend.name}"}
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load((INVALID / "mailbox-backend-missing.yaml").read_text()))) != []


_MODEL_FILES = ("model.py", "ews.py", "connector.py")


def _dataclass_defaults(path: Path) -> list[tuple[str, ast.expr]]:
    """Return (field, default expression) of every dataclass field with a default in a module of probe.config."""
    tree = ast.parse(path.read_text())
    return [(f"{node.name}.{item.target.id}", item.value) for node in tree.body if isinstance(node, ast.ClassDef)
            for item in node.body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            and item.value is not None and "ClassVar" not in ast.unparse(item.annotation)]


def test_the_field_table_is_the_only_place_a_default_is_declared() -> None:
    """Every default of the model's dataclasses is read from the field table (or is an empty container)."""
    source = REPO / "probe" / "config"
    literal = [name for file in _MODEL_FILES for name, value in _dataclass_defaults(source / file)
               if not isinstance(value, ast.Subscript) and "default_factory" not in ast.unparse(value)
               and ast.unparse(value) != "()" and ast.unparse(value) != "None"]
    assert literal == []
    assert len([1 for file in _MODEL_FILES for _ in _dataclass_defaults(source / file)]) >= 20


@pytest.mark.parametrize(("section", "model"), [
    ("defaults", "Defaults"), ("mailbox", "MailboxConfig"), ("route", "RouteConfig"),
    ("smart_host", "SmartHostConfig"), ("ews", "EwsConfig"),
])
def test_the_models_defaults_are_the_field_tables(section: str, model: str) -> None:
    """Each dataclass field of a section defaults to its row's default (an inherited one to defaults')."""
    import probe.config as package

    fields = {item.name: item for item in dataclasses.fields(getattr(package, model))}
    schedule = {spec.key: spec.default for spec in SECTIONS["defaults"]}
    for spec in SECTIONS[section]:
        if spec.required or spec.kind in {"section", "section_list", "section_map"}:
            continue
        expected = schedule[spec.key] if spec.inherited else spec.default
        assert fields[spec.key].default == expected, spec.key


def test_config_type_is_the_contract() -> None:
    """load_config returns the lead's Config type."""
    assert isinstance(load_config(MINIMAL, environ=ENV), Config)


# --- robustness -----------------------------------------------------------------------------------------

def load_outcome(path: Path) -> str:
    """Return "PATH: loaded" or the ConfigError's message; any other exception propagates (and fails)."""
    try:
        load_config(path, environ=ENV)
    except ConfigError as exc:
        return exc.describe()
    return f"{path}: loaded"


@settings(deadline=None, max_examples=150)
@given(st.text(max_size=300))
def test_any_text_either_loads_or_raises_config_error(text: str) -> None:
    """Whatever the file holds, the loader ends in a Config or a ConfigError, never another exception."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        assert load_outcome(path).startswith(str(path))


@settings(deadline=None, max_examples=150)
@given(st.lists(st.integers(min_value=0, max_value=18), max_size=4), st.sampled_from(["", " ", "  ", "- ", ": "]))
def test_a_mangled_minimal_config_either_loads_or_raises_config_error(drops: list[int], junk: str) -> None:
    """Deleting lines of a good config, or prefixing them with junk, never ends in a traceback."""
    lines = MINIMAL.read_text().splitlines(keepends=True)
    for index in drops:
        lines[index] = junk + lines[index] if junk else ""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mangled.yaml"
        path.write_text("".join(lines))
        assert load_outcome(path).startswith(str(path))


# --- the imap: section ------------------------------------------------------------------------------------

IMAP_SECTION = ("    imap:\n      host: imap.fourthcoffee.com\n      tls: starttls\n"
                "      username: probe@fourthcoffee.com\n      password_env: FC_EWS_PASSWORD\n"
                "      auth: login\n      trash_folder: Deleted Items\n"
                "    folders: [INBOX, junkemail, Spam]\n    cleanup: hard_delete\n")
EWS_SECTION = ("    ews:\n      url: https://mail.fourthcoffee.com/EWS/Exchange.asmx\n"
               "      username: FOURTHCOFFEE\\svc-mailflow\n      password_env: FC_EWS_PASSWORD\n")


def test_an_imap_mailbox_reads_mailbox_names_and_starttls_defaults_to_port_143(tmp_path: Path) -> None:
    """An imap: section: STARTTLS on 143 by default, SASL LOGIN, mailbox names as folders (neutral names kept
    neutral), a trash folder, and hard_delete; the JSON Schema accepts it and refuses soft_delete for it."""
    import jsonschema

    text = minimal_with(EWS_SECTION, IMAP_SECTION)
    mailbox = load_config(write(tmp_path, text), environ=ENV).mailboxes["fourthcoffee"]
    imap = mailbox.backend
    assert isinstance(imap, ImapConfig)
    assert (imap.port, imap.tls, imap.auth, imap.trash_folder) == (143, "starttls", "login", "Deleted Items")
    assert mailbox.folders == ("INBOX", MailboxFolder.JUNKEMAIL, "Spam")
    schema = config_json_schema()
    document = yaml.safe_load(text)
    jsonschema.validate(document, schema)
    document["mailboxes"]["fourthcoffee"]["cleanup"] = "soft_delete"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    ews_document = yaml.safe_load(MINIMAL.read_text())
    ews_document["mailboxes"]["fourthcoffee"]["folders"] = ["INBOX"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ews_document, schema)
