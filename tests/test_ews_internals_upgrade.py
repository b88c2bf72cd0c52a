"""An exchangelib whose private parts moved (as an upgrade may move them) fails exactly one check, by name.

Each case copies the installed exchangelib, renames one private name throughout the copy (its definition
and every use inside exchangelib, as a real refactoring would), puts the copy first on the path of a
fresh pytest, and runs tests/test_ews_internals.py there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.renamed_package import renamed_copy, run_fence_against

FENCE_TESTS = "tests/test_ews_internals.py"


@pytest.mark.parametrize(("name", "check"), [
    ("_get_elems_from_page", "exchangelib.services.common:EWSPagingService._get_elems_from_page"),
    ("DummyResponse", "exchangelib.util:DummyResponse"),
    ("_streaming_response", "exchangelib.services.common:EWSService._streaming_response"),
    ("_elems_to_objs", "exchangelib.services.common:EWSService._elems_to_objs"),
])
def test_a_renamed_internal_fails_exactly_its_own_check(tmp_path: Path, name: str, check: str) -> None:
    """Against an exchangelib with one private name renamed, one fence check fails, naming it; the rest pass."""
    copy = renamed_copy(tmp_path, package="exchangelib", name=name)
    run = run_fence_against(copy, package="exchangelib", tests=FENCE_TESTS)
    assert re.search(r"\b1 failed, \d+ passed\b", run.summary), run.output[-3000:]
    assert run.failed == [f"FAILED {FENCE_TESTS}::test_internal_is_as_the_ews_backend_expects[{check}]"], run.output
    assert re.search(rf"AssertionError: {re.escape(check)}: .* -- relied on because ", run.output), run.output
