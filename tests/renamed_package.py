"""Run a fence test module against a scratch copy of an installed package with one private name renamed.

An upgrade that moves a private part of exchangelib or prometheus_client should fail exactly one fence check,
by name. These helpers build that upgrade by hand: copy the package, rename the name throughout the copy (its
definition and every use, as a real refactoring would), and run the fence tests with the copy first on the path.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def renamed_copy(into: Path, *, package: str, name: str) -> Path:
    """Copy the installed ``package`` under ``into`` with every ``name`` renamed; return the path to put first."""
    target = into / package
    source_dir = Path(importlib.import_module(package).__file__ or "").parent
    shutil.copytree(source_dir, target, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    changed = 0
    for source in target.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        new, count = pattern.subn(f"{name}_renamed", text)
        if count:
            source.write_text(new, encoding="utf-8")
            changed += count
    assert changed, f"{name} is not in {package} at all"
    return into


@dataclass(frozen=True)
class FenceRun:
    """What a fresh pytest of the fence tests printed against a renamed copy."""

    output: str
    failed: list[str]
    summary: str


def run_fence_against(copy: Path, *, package: str, tests: str) -> FenceRun:
    """Run ``tests`` in a fresh pytest with ``copy`` first on the path; check the copy is the one imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    imported = subprocess.run([sys.executable, "-c", f"import {package}; print({package}.__file__)"],
                              env=env, capture_output=True, text=True, check=True).stdout
    assert str(copy / package) in imported, imported
    output = result.stdout + result.stderr
    failed = [line.split(" - ")[0] for line in output.splitlines() if line.startswith("FAILED ")]
    return FenceRun(output=output, failed=failed, summary=output.strip().splitlines()[-1])
