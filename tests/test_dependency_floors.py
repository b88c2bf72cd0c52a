"""The lowest dependency versions pyproject.toml allows are ones that work (.ci/run installs exactly those)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import probe

ROOT = Path(probe.__file__).resolve().parent.parent


def merge_key_bomb(levels: int) -> str:
    """Return a YAML text whose merges double at each level: 2**levels keys if each merge is kept."""
    lines = ["a0: &a0 {x: 0}"]
    lines += [f"a{n}: &a{n} {{<<: [*a{n - 1}, *a{n - 1}]}}" for n in range(1, levels + 1)]
    return "\n".join([*lines, f"<<: *a{levels}", ""])


def test_a_merge_key_bomb_is_a_config_error_within_a_small_memory_limit(tmp_path: Path) -> None:
    """An 856-byte merge-key bomb (2**30 keys if expanded) is an ordinary config error under a 512 MiB limit.

    This is why PyYAML's floor is 6.0.4: 6.0.3 expands the merges and runs out of memory.
    """
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(merge_key_bomb(30), encoding="utf-8")
    assert len(bomb.read_bytes()) < 1000
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        from pathlib import Path
        from probe.config import ConfigError, load_config
        try:
            load_config(Path({str(bomb)!r}))
        except ConfigError as exc:
            print("config error:", exc.describe())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "config error:" in done.stdout
    assert "unknown key" in done.stdout


def test_the_minimum_versions_file_pins_exactly_the_floors_of_pyproject() -> None:
    """.ci/minimum-versions.txt pins each runtime dependency (probe and lab extra) at its pyproject floor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for text in [*project["dependencies"], *project["optional-dependencies"]["lab"]]:
        requirement = Requirement(text)
        lowest = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
        assert len(lowest) == 1, f"{text}: no single floor"
        floors[canonicalize_name(requirement.name)] = Version(lowest[0])
    lines = (ROOT / ".ci" / "minimum-versions.txt").read_text(encoding="utf-8").splitlines()
    pins = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    pinned = {canonicalize_name(r.name): Version(next(iter(r.specifier)).version) for r in pins}
    assert pinned == floors
