"""Fault kinds: one enum row each, checked when posted, and named by enum member wherever the lab acts on one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from probe.lab.faults import (
    TARGET_TYPES,
    ConnectorFault,
    EwsFault,
    FaultError,
    FaultKind,
    SmartHostFault,
    parse_fault,
)

REPO = Path(__file__).resolve().parents[2]
ALL_KINDS = [(target_type, kind) for target_type, kinds in TARGET_TYPES.items() for kind in kinds]


def _valid_value(name: str) -> object:
    return {"stage": "rcpt", "code": 421, "seconds": 1.5, "back_off_ms": 250, "status": "5.1.1",
            "notify_after": 0.5, "smart_host": "edge-2"}[name]


@pytest.mark.parametrize(("target_type", "kind"), ALL_KINDS, ids=[f"{t}-{k}" for t, k in ALL_KINDS])
def test_every_kind_takes_exactly_its_parameters(target_type: str, kind: FaultKind) -> None:
    """A kind's required parameters must be given, defaults fill the others, and no other parameter is taken."""
    target = f"{target_type}/somewhere"
    required = {p.name: _valid_value(p.name) for p in kind.params if p.required}
    fault = parse_fault({"target": target, "kind": str(kind), **required})
    assert fault.kind is kind
    for param in kind.params:
        assert getattr(fault, param.name) == required.get(param.name, param.default)
    for name in required:
        with pytest.raises(FaultError, match=f"^{kind} needs {name}"):
            parse_fault({"target": target, "kind": str(kind), **{k: v for k, v in required.items() if k != name}})
    for name in {"stage", "code", "seconds", "back_off_ms", "status", "notify_after", "smart_host", "color"} - {
            p.name for p in kind.params}:
        with pytest.raises(FaultError, match=f"^unknown parameters for {kind}: {name}; its parameters: "):
            parse_fault({"target": target, "kind": str(kind), **required, name: 1})


def test_the_kinds_are_those_of_the_design() -> None:
    """The kinds DESIGN.md lists for smart hosts and EWS endpoints (those the lab implements today)."""
    assert {str(k) for k in SmartHostFault} == {
        "refuse_connections", "no_starttls", "untrusted_cert", "expired_cert", "auth_reject", "tempfail",
        "reject", "slow", "delay_delivery", "drop", "duplicate", "to_junk", "bounce", "subject_prefix", "disclaimer"}
    assert {str(k) for k in EwsFault} == {
        "unauthorized", "server_error", "server_busy", "slow", "unreachable", "clock_offset"}
    assert {str(k) for k in ConnectorFault} == {
        "disabled", "bad_credentials", "address_space_removed", "tls_unavailable_required", "pin"}


@pytest.mark.parametrize(("data", "message"), [
    ({"target": "smarthost/x", "kind": "slow", "seconds": "1s", "stage": "data"}, "slow: seconds must be a number"),
    ({"target": "smarthost/x", "kind": "slow", "seconds": True, "stage": "data"}, "slow: seconds must be a number"),
    ({"target": "smarthost/x", "kind": "slow", "seconds": 1, "stage": "quit"}, "slow: stage must be one of connect"),
    ({"target": "smarthost/x", "kind": "reject", "stage": "data", "code": 250.5},
     "reject: code must be an SMTP reply code (200-599)"),
    ({"target": "smarthost/x", "kind": 7}, "kind must be a string; the smarthost fault kinds: auth_reject, "),
    ({"target": "smarthost/x", "kind": "bounce", "status": "550"}, 'bounce: status must be an enhanced status code'),
    ({"target": "smarthost/x", "kind": "bounce", "status": "2.0.0"}, 'bounce: status must be an enhanced status code'),
    ({"target": "smarthost/x", "kind": "bounce"}, 'bounce needs status, an enhanced status code of a failure'),
    ({"target": "smarthost/x", "kind": "delay_delivery", "seconds": 5, "notify_after": -1},
     "delay_delivery: notify_after must be a number of seconds (0 or more)"),
    ({"target": "mta/x", "kind": "disabled"}, "unknown target type 'mta': use smarthost/NAME, connector/FOREST, "
     "or ews/FOREST, imap/FOREST or graph/FOREST"),
    ({"target": "connector/x", "kind": "pin"}, "pin needs smart_host, the name of a smart host of the lab"),
    ({"target": "connector/x", "kind": "pin", "smart_host": 3}, "pin: smart_host must be the name of a smart host"),
    ({"target": "connector/x", "kind": "refuse_connections"}, "unknown connector fault kind 'refuse_connections'; "
     "known: address_space_removed, bad_credentials, disabled, pin, tls_unavailable_required"),
])
def test_bad_parameter_values_are_refused_by_name(data: dict[str, object], message: str) -> None:
    """A parameter of the wrong type or range is refused, naming the kind, the parameter and what it must be."""
    with pytest.raises(FaultError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_fault(data)


def _string_kind_lookups(path: Path, methods: set[str]) -> list[str]:
    """Return calls of ``fault(...)``/``find(...)`` that name a kind with a string literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods):
            continue
        args = node.args[1:] if node.func.attr == "find" else node.args[:1]
        if any(isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in args):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_lookup_names_its_kind_by_enum_member() -> None:
    """No part of the lab (nor a test) looks a fault up by a string, which a typo would silently never match.

    (Tests that put faults in force by string go through parse_fault, which refuses a misspelt kind.)
    """
    lab = [hit for path in (REPO / "probe" / "lab").rglob("*.py")
           for hit in _string_kind_lookups(path, {"fault", "find"})]
    tests = [hit for path in (REPO / "tests").rglob("*.py") for hit in _string_kind_lookups(path, {"find"})]
    assert lab + tests == []
    lookups = sum(1 for path in (REPO / "probe" / "lab").rglob("*.py")
                  for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in {"SmartHostFault", "EwsFault"})
    assert lookups >= 18


def test_every_mailbox_backend_has_the_same_fault_kinds() -> None:
    """ews/FOREST, imap/FOREST and graph/FOREST take the same kinds: each backend's lab part acts on all of them."""
    assert TARGET_TYPES["ews"] is TARGET_TYPES["imap"] is TARGET_TYPES["graph"]


def test_a_fault_for_a_backend_the_lab_does_not_run_is_refused(tmp_path: Path) -> None:
    """In a lab serving its mailboxes over EWS, an imap/ or graph/ fault is refused, saying which target to use."""
    from probe.lab import Lab

    with Lab.start(tmp_path / "lab", smart_hosts_per_forest=1) as lab:
        for target_type in ("imap", "graph"):
            with pytest.raises(FaultError, match=f"over ews, not {target_type}: use ews/FOREST"):
                lab.add_fault(target=f"{target_type}/contoso", kind="unreachable")
        assert lab.add_fault(target="ews/contoso", kind="unreachable").target == "ews/contoso"
