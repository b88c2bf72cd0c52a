"""Fixtures of the lab's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from exchangelib.protocol import close_connections

from tests.ews_schema import StandaloneEws, standalone_ews


@pytest.fixture
def ews(tmp_path: Path) -> Iterator[StandaloneEws]:
    """An EWS endpoint of its own; every response it sent must validate against the schema."""
    with standalone_ews(tmp_path) as env:
        yield env
        close_connections()
    assert env.schema_problems() == []
