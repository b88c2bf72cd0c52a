"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Yield a started two-forest lab on ephemeral loopback ports; stop it afterwards."""
    with Lab.start(tmp_path / "lab") as started:
        yield started
