"""Shared pytest fixtures, and the suite-wide check that every EWS response validates against the schema."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchangelib.protocol import close_connections

from probe.lab import Lab
from probe.lab.ews import add_response_observer
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
    """Start auditing every EWS response against the schema in tests/data/ews/schema."""
    add_response_observer(_audit.observe)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many EWS responses were validated, and every one that was not valid."""
    terminalreporter.write_line(f"EWS schema audit: {_audit.checked} responses validated against "
                                f"tests/data/ews/schema, {len(_audit.failures)} invalid")
    for failure in _audit.failures:
        terminalreporter.write_line(f"  invalid EWS response: {failure}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any EWS response the lab sent did not validate."""
    if _audit.failures and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
