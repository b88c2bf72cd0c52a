"""An exchangelib whose private parts moved (as an upgrade may move them) fails exactly one check, by name.

Each case copies the installed exchangelib, renames one private name throughout the copy (its definition
and every use inside exchangelib, as a real refactoring would), puts the copy first on the path of a
fresh pytest, and runs tests/test_ews_internals.py there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import exchangelib
import pytest

REPO = Path(__file__).resolve().parent.parent
FENCE_TESTS = "tests/test_ews_internals.py"


def renamed_copy(into: Path, name: str) -> Path:
    """Copy the installed exchangelib under ``into`` with every ``name`` renamed; return the path to put first."""
    target = into / "exchangelib"
    shutil.copytree(Path(exchangelib.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    changed = 0
    for source in target.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        new, count = pattern.subn(f"{name}_renamed", text)
        if count:
            source.write_text(new, encoding="utf-8")
            changed += count
    assert changed, f"{name} is not in exchangelib at all"
    return into


@pytest.mark.parametrize(("name", "check"), [
    ("_get_elems_from_page", "exchangelib.services.common:EWSPagingService._get_elems_from_page"),
    ("DummyResponse", "exchangelib.util:DummyResponse"),
    ("_streaming_response", "exchangelib.services.common:EWSService._streaming_response"),
    ("_elems_to_objs", "exchangelib.services.common:EWSService._elems_to_objs"),
])
def test_a_renamed_internal_fails_exactly_its_own_check(tmp_path: Path, name: str, check: str) -> None:
    """Against an exchangelib with one private name renamed, one fence check fails, naming it; the rest pass."""
    path = renamed_copy(tmp_path, name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", FENCE_TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\b1 failed, \d+ passed\b", summary), output[-3000:]
    failed = [line.split(" - ")[0] for line in output.splitlines() if line.startswith("FAILED ")]
    assert failed == [f"FAILED {FENCE_TESTS}::test_internal_is_as_the_ews_backend_expects[{check}]"], output
    assert re.search(rf"AssertionError: {re.escape(check)}: .* -- relied on because ", output), output
    assert str(path / "exchangelib") in subprocess.run(
        [sys.executable, "-c", "import exchangelib; print(exchangelib.__file__)"],
        env=env, capture_output=True, text=True, check=True).stdout
