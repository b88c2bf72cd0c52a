"""Shared pytest fixtures, and the suite-wide check that every EWS response validates against the schema."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exchangelib.protocol import close_connections

from probe.lab import Lab
from probe.lab.ews import add_response_observer
from probe.lab.smarthost import smart_host_address
from tests.ews_schema import problems


class _SchemaAudit:
    """Validate every SOAP envelope the lab's EWS endpoint sends, during the whole test session."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked = 0
        self.failures: list[str] = []

    def observe(self, payload: bytes, operation: str) -> None:
        found = problems(payload)
        with self.lock:
            self.checked += 1
            if found and len(self.failures) < 50:
                self.failures.append(f"{operation}: {'; '.join(found)[:500]}")


_audit = _SchemaAudit()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the loopback addresses the lab needs; start auditing every EWS response against the schema."""
    address = smart_host_address(0, 0)
    try:
        with socket.socket() as probe_socket:
            probe_socket.bind((address, 0))
    except OSError as exc:
        pytest.exit(f"the lab's smart hosts listen on 127.16.0.1 and up, but {address} cannot be bound here "
                    f"({exc.strerror}): the tests need all of 127.0.0.0/8 on the loopback interface", returncode=4)
    add_response_observer(_audit.observe)


def _hand_audit_to_controller(config: pytest.Config) -> None:
    """Hand this xdist worker's audit to the controller, which reports and judges it."""
    config.workeroutput["ews_audit"] = {"checked": _audit.checked, "failures": _audit.failures}  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Add a finished xdist worker's audit to the session's (the hook exists only with pytest-xdist)."""
    found = getattr(node, "workeroutput", {}).get("ews_audit")
    if found:
        with _audit.lock:
            _audit.checked += found["checked"]
            _audit.failures.extend(found["failures"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many EWS responses were validated, and every one that was not valid."""
    terminalreporter.write_line(f"EWS schema audit: {_audit.checked} responses validated against "
                                f"tests/data/ews/schema, {len(_audit.failures)} invalid")
    for failure in _audit.failures:
        terminalreporter.write_line(f"  invalid EWS response: {failure}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any EWS response the lab sent did not validate (in a worker: pass the audit on)."""
    if hasattr(session.config, "workeroutput"):
        _hand_audit_to_controller(session.config)
    elif _audit.failures and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_itemcollected(item: pytest.Item) -> None:
    """Keep the tests that share a module-scoped fixture on one xdist worker (``--dist loadgroup``), so each
    such fixture (a Postfix, a browser, a lab with every fault) is built once. (Marked as each is collected:
    xdist reads the groups in its own pytest_collection_modifyitems.)"""
    definitions = getattr(item, "_fixtureinfo", None)
    scopes = {d.scope for defs in (definitions.name2fixturedefs.values() if definitions else ()) for d in defs}
    if "module" in scopes and isinstance(item, pytest.Function):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the modules that hold ``slow`` tests first, so that parallel workers finish together; the order
    within a module is kept."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)

@pytest.fixture
def fresh_exchangelib() -> Iterator[None]:
    """Close exchangelib's cached connections after the test, so the next starts with none (modules opt in)."""
    yield
    close_connections()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Yield a started two-forest lab on ephemeral loopback ports; stop it afterwards."""
    with Lab.start(tmp_path / "lab") as started:
        yield started

