"""Benchmark ``mailflow-probe validate`` on large generated configs: seconds and peak memory by size.

Run: python bench/config_load.py [--quick] [--routes 1000,10000,...] [--styles block,flow]
Each config is generated here, in a temporary directory: one EWS mailbox and N routes of one smart host each
(STARTTLS, a username and password_env), written block style (as config/example.yaml is, about 240 bytes a
route) or flow style (one route a line, 86 bytes: issue 13's 15 MiB file of 190,000 routes). Each is
validated by ``python -m probe validate`` in a child process of its own, so the figures are the whole
command's: wall seconds, CPU seconds (user + system) and peak RSS, all from os.wait4 on that child, which
runs under an address-space limit (--memory-limit, 4 GiB) so that no row can take the machine down.
"a password file each" and "a password in the file each": block routes whose smart hosts each have a
password of their own, read from a file or written in the config (one warning each). "merge bomb" and
"alias bomb": small documents whose YAML merge keys (<<) or aliases would have the loader copy or read
width x width keys.
Prints a table; writes nothing else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, table

FULL_ROUTES = (1_000, 10_000, 25_000, 60_000, 190_000)
QUICK_ROUTES = (1_000,)  # the smoke run: one size per style (each validate is a process of its own)
HEAD = """\
signing_key_file: signing.key
state_file: state.db
mailboxes:
  m:
    address: probe@fourthcoffee.com
    ews:
      url: https://mail.fourthcoffee.com/EWS/Exchange.asmx
      username: FOURTHCOFFEE\\svc-mailflow
      password_env: BENCH_EWS_PASSWORD
routes:
"""
ENV = {"BENCH_EWS_PASSWORD": "bench-ews-password", "BENCH_SMTP_PASSWORD": "bench-smtp-password"}


def _block_route(index: int) -> str:
    return (f"  - name: contoso-to-fourthcoffee-{index}\n    sender: probe@contoso.com\n    mailbox: m\n"
            f"    smart_hosts:\n      - name: fc-edge-1\n        host: 64.4.6.100\n"
            f"        username: FourthCoffee@Contoso.com\n        password_env: BENCH_SMTP_PASSWORD\n")


def _flow_route(index: int) -> str:
    return f"- {{name: r{index}, sender: p@a.co, mailbox: m, smart_hosts: [{{name: e, host: mx.test}}]}}\n"


def _lines(style: str, routes: int) -> Iterator[str]:
    yield HEAD
    make = _block_route if style == "block" else _flow_route
    for index in range(routes):
        yield make(index)


def write_config(path: Path, style: str, routes: int) -> int:
    """Write a config of ``routes`` routes in ``style``; return its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        out.writelines(_lines(style, routes))
    return path.stat().st_size


def secrets_config(path: Path, routes: int, *, inline: bool) -> int:
    """Write block routes whose smart hosts each have a password of their own, written in the file (warned
    about) or in a password file each (made here); return the config's size."""
    secrets = path.parent / "secrets"
    secrets.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(HEAD)
        for index in range(routes):
            given = f"password: smtp-password-{index:06d}"
            if not inline:
                secret = secrets / f"smtp-{index}.pass"
                secret.write_text(f"smtp-password-{index:06d}\n", encoding="utf-8")
                secret.chmod(0o600)
                given = f"password_file: secrets/smtp-{index}.pass"
            out.write(_block_route(index).replace("password_env: BENCH_SMTP_PASSWORD", given))
    return path.stat().st_size


def merge_bomb(path: Path, width: int) -> int:
    """Write a mapping of ``width`` keys merged into ``width`` others (width^2 keys copied), and return its size."""
    keys = ", ".join(f"k{i}: {i}" for i in range(width))
    merged = "\n".join(f"  - {{<<: *big, name: r{i}}}" for i in range(width))
    head = HEAD.split("routes:", maxsplit=1)[0]
    path.write_text(f"{head}big: &big {{{keys}}}\nroutes:\n{merged}\n", encoding="utf-8")
    return path.stat().st_size


def alias_bomb(path: Path, width: int) -> int:
    """Write one route of ``width`` smart hosts repeated by alias ``width`` times (width^2 smart hosts to read)."""
    hosts = ", ".join(f"{{name: e{i}, host: 64.4.6.1}}" for i in range(width))
    first = f"  - &r {{name: r0, sender: p@contoso.com, mailbox: m, smart_hosts: [{hosts}]}}\n"
    path.write_text(HEAD + first + "  - *r\n" * (width - 1), encoding="utf-8")
    return path.stat().st_size


@dataclass(frozen=True)
class Outcome:
    """What one ``validate`` run took and said."""

    wall: float
    cpu: float
    peak_rss_mib: float
    code: int
    said: str


# The child sets its address-space limit, then becomes ``python -m probe validate``.
_LIMITED = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2); "
            "os.execv(sys.executable, [sys.executable, '-m', 'probe', 'validate', '-c', sys.argv[2]])")


def validate(path: Path, *, memory_limit_mib: int) -> Outcome:
    """Run ``python -m probe validate`` on ``path`` in a child process (its address space limited, so a bomb
    cannot take the machine down) and measure it with os.wait4."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", _LIMITED, str(memory_limit_mib << 20), str(path)],
                               cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    said = output.strip().splitlines()[-1] if output.strip() else ""
    said = said.replace(str(path), path.name)
    return Outcome(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss_mib=usage.ru_maxrss / 1024,
                   code=process.returncode, said=said[:110])


def _size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size / 1024:.0f} KiB"


def _row(label: str, size: int, routes: str, outcome: Outcome) -> list[object]:
    return [label, _size(size), routes, f"{outcome.wall:.2f}", f"{outcome.cpu:.2f}", f"{outcome.peak_rss_mib:.0f}",
            f"exit {outcome.code}: {outcome.said}"]


def main() -> int:
    """Generate, validate and tabulate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--routes", default=None, help="comma-separated route counts")
    parser.add_argument("--styles", default="block,flow", help="block, flow or both")
    parser.add_argument("--memory-limit", type=int, default=4096, metavar="MIB",
                        help="each validate's address-space limit (default 4096 MiB)")
    args = parser.parse_args()
    counts = [int(n) for n in args.routes.split(",")] if args.routes else (QUICK_ROUTES if args.quick else FULL_ROUTES)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-config-") as tmp:
        directory = Path(tmp)
        for style in args.styles.split(","):
            for routes in counts:
                path = directory / f"{style}-{routes}.yaml"
                size = write_config(path, style, routes)
                outcome = validate(path, memory_limit_mib=args.memory_limit)
                rows.append(_row(style, size, f"{routes:,}", outcome))
                path.unlink()
                print(" | ".join(str(cell) for cell in rows[-1]), file=sys.stderr, flush=True)
        for routes in (1_000,) if args.quick else (25_000,):
            for label, inline in (("block, a password file each", False), ("block, a password in the file each", True)):
                path = directory / f"secrets-{routes}.yaml"
                size = secrets_config(path, routes, inline=inline)
                rows.append(_row(label, size, f"{routes:,}", validate(path, memory_limit_mib=args.memory_limit)))
        for width in (300,) if args.quick else (300, 3_000, 10_000):
            for name, make in (("merge", merge_bomb), ("alias", alias_bomb)):
                path = directory / f"{name}-bomb-{width}.yaml"
                size = make(path, width)
                outcome = validate(path, memory_limit_mib=args.memory_limit)
                rows.append(_row(f"{name} bomb {width}x{width}", size, f"{width:,}", outcome))
    print(table(["config", "size", "routes", "wall s", "CPU s", "peak RSS MiB", "validate said"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
