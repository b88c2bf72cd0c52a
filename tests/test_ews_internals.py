"""The private parts of exchangelib and requests the EWS backend relies on are all still there, as expected.

One check per internal (probe.mailbox.ews_internals.INTERNALS): an upgrade that renames or reshapes one
fails exactly its check here, with a message naming it and what relies on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from probe.mailbox.ews_internals import INTERNALS, Internal

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("internal", INTERNALS, ids=[internal.path for internal in INTERNALS])
def test_internal_is_as_the_ews_backend_expects(internal: Internal) -> None:
    """The internal exists in the installed version, with the parameters the override or call relies on."""
    problem = internal.problem()
    assert problem is None, f"{internal.path}: {problem} -- relied on because {internal.why}"


def test_each_internal_is_listed_once() -> None:
    """No internal is checked twice (a renamed one fails exactly one check)."""
    paths = [internal.path for internal in INTERNALS]
    assert len(paths) == len(set(paths))


def _reaches_past_public_api(path: Path) -> list[str]:
    """Return where a module reaches past another library's public API.

    ``x._name`` with ``x`` not ``self``/``cls``; ``getattr(x, "_name")``; ``x.__class__``/``x.__call__``;
    ``del Class[...]``; a ``_name`` method of a class whose bases are not the module's own.
    """
    tree = ast.parse(path.read_text())
    own_classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and (_private(node.attr) or node.attr in {"__class__", "__call__"})
             and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})]
    found += [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
              if isinstance(node, ast.Call) and ast.unparse(node.func) in {"getattr", "setattr", "hasattr"}
              and any(isinstance(a, ast.Constant) and isinstance(a.value, str) and _private(a.value)
                      for a in node.args)]
    found += [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree) if isinstance(node, ast.Delete)
              and any(isinstance(t, ast.Subscript) and ast.unparse(t.value)[:1].isupper() for t in node.targets)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base) not in own_classes for base in node.bases):
            found += [f"line {item.lineno}: {node.name}.{item.name}" for item in node.body
                      if isinstance(item, ast.FunctionDef) and _private(item.name) and item.name != "__init__"]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("module", sorted(
    path.relative_to(REPO).as_posix() for path in (REPO / "probe").rglob("*.py")
    if "lab" not in path.parts and path.name != "ews_internals.py"
    and any(word in path.read_text() for word in ("exchangelib", "import requests"))))
def test_only_the_fence_reaches_into_exchangelib_or_requests(module: str) -> None:
    """Outside probe/mailbox/ews_internals.py, no module that uses exchangelib or requests touches a private part."""
    assert _reaches_past_public_api(REPO / module) == []
