"""The parts of prometheus_client the fast renderer relies on beyond its documented API are all still there.

One check per internal (probe.prometheus_internals.INTERNALS): an upgrade that removes or reshapes one fails
exactly its check here, naming it and what relies on it. A scratch copy of prometheus_client with one name
renamed (as an upgrade's refactoring would) shows it: exactly that check fails, by name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from probe.prometheus_internals import INTERNALS, Internal
from tests.renamed_package import REPO, renamed_copy, run_fence_against

FENCE = "probe/prometheus_internals.py"
THIS = "tests/test_prometheus_internals.py"
# prometheus_client's modules beyond its documented API (its top-level package, metrics_core's Metric and
# samples' Sample that a custom collector reads and writes, registry's Collector, exposition's encoders and
# content types, and the parser are documented).
PRIVATE_MODULES = ("prometheus_client.utils", "prometheus_client.openmetrics", "prometheus_client.metrics",
                   "prometheus_client.values", "prometheus_client.validation")


@pytest.mark.parametrize("internal", INTERNALS, ids=[internal.path for internal in INTERNALS])
def test_internal_is_as_the_renderer_expects(internal: Internal) -> None:
    """The internal exists in the installed prometheus_client and behaves as the fast renderer relies on."""
    problem = internal.problem()
    assert problem is None, f"{internal.path}: {problem} -- relied on because {internal.why}"


def test_each_internal_is_listed_once() -> None:
    """No internal is checked twice (a removed one fails exactly one check)."""
    paths = [internal.path for internal in INTERNALS]
    assert len(paths) == len(set(paths))


def _private_uses(path: Path) -> list[str]:
    """Return where a module imports a private part of prometheus_client or reads choose_encoder's partial."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [f"line {node.lineno}: from {node.module} import ..." for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module is not None
             and any(node.module == private or node.module.startswith(f"{private}.") for private in PRIVATE_MODULES)]
    found += [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr in {"func", "keywords", "floatToGoString"}]
    return found


@pytest.mark.parametrize("module", sorted(
    path.relative_to(REPO).as_posix() for path in (REPO / "probe").rglob("*.py")
    if path.relative_to(REPO).as_posix() != FENCE and "prometheus_client" in path.read_text(encoding="utf-8")))
def test_only_the_fence_reaches_into_prometheus_client(module: str) -> None:
    """Outside probe/prometheus_internals.py, no module of the probe uses a private part of prometheus_client."""
    assert _private_uses(REPO / module) == []


@pytest.mark.parametrize(("name", "check"), [
    ("floatToGoString", "prometheus_client.utils:floatToGoString"),
    ("escape_label_name", "prometheus_client.openmetrics.exposition:escape_label_name"),
])
def test_a_renamed_internal_fails_exactly_its_own_check(tmp_path: Path, name: str, check: str) -> None:
    """Against a prometheus_client with one name renamed, one fence check fails, naming it; the rest pass."""
    copy = renamed_copy(tmp_path, package="prometheus_client", name=name)
    run = run_fence_against(copy, package="prometheus_client",
                            tests=f"{THIS}::test_internal_is_as_the_renderer_expects")
    assert re.search(r"\b1 failed, \d+ passed\b", run.summary), run.output[-3000:]
    assert run.failed == [f"FAILED {THIS}::test_internal_is_as_the_renderer_expects[{check}]"], run.output
    assert re.search(rf"AssertionError: {re.escape(check)}: not found .* -- relied on because ", run.output), run.output
