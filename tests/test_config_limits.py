"""Resource limits of config loading, from outside: real generated configs validated by a child process that
runs under a real address-space limit (``resource.setrlimit`` before it becomes ``mailflow-probe validate``).

A config past the documented limit (MAX_NODES YAML nodes; merge keys and aliases may not make the loader copy
or read more than that many keys either) is refused with one line naming file, line and field; anything
smaller validates within the limit. The speed and memory figures are bench/config_load.py's, not asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from probe.config.composer import MAX_NODES

REPO = Path(__file__).resolve().parent.parent
ENV = {"BENCH_EWS_PASSWORD": "ews-secret-42ab", "BENCH_SMTP_PASSWORD": "smtp-secret-7c1e"}
ADDRESS_SPACE = 1 << 30  # the child's RLIMIT_AS: what each of these documents would need without the limits
HEAD = """\
signing_key_file: signing.key
state_file: state.db
mailboxes:
  fourthcoffee:
    address: probe@fourthcoffee.com
    ews:
      url: https://mail.fourthcoffee.com/EWS/Exchange.asmx
      username: FOURTHCOFFEE\\svc-mailflow
      password_env: BENCH_EWS_PASSWORD
"""
# a route that reads its NDRs from the mailbox it sends to (bounces_mailbox): it loads without a warning
ROUTE = ("  - {{name: r{i}, sender: p@contoso.com, mailbox: fourthcoffee, bounces_mailbox: fourthcoffee, "
         "smart_hosts: [{{name: e1, host: 64.4.6.1, username: u@contoso.com, password_env: BENCH_SMTP_PASSWORD}}]}}\n")
NODES_PER_ROUTE = 1 + 2 * 5 + 1 + 2 * 4  # the route's mapping and 5 pairs (a list the last value), the host's and 4
# 86 bytes; the smart host a reserved .test name (nothing is ever sent to it)
SHORT_ROUTE = "- {{name: r{i}, sender: p@a.co, mailbox: m, smart_hosts: [{{name: e, host: mx.test}}]}}\n"
NODES_PER_SHORT_ROUTE = 1 + 2 * 4 + 1 + 2 * 2
# the top mapping, two paths, mailboxes (key, mapping), the mailbox (key, mapping), its address, ews (key, mapping)
# and its 3 pairs, routes (key, list)
NODES_BEFORE_ROUTES = 1 + 2 * 2 + 2 + 2 + 2 + 2 + 2 * 3 + 2


def validate_limited(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m probe validate -c PATH`` in a child under the address-space limit."""
    wrapper = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2); "
               "os.execv(sys.executable, [sys.executable, '-m', 'probe', 'validate', '-c', sys.argv[2]])")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", wrapper, str(ADDRESS_SPACE), str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def line_of(text: str, needle: str) -> int:
    """Return the 1-based line of the first line of ``text`` that contains ``needle``."""
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_large_config_within_the_limit_validates_under_a_memory_limit(tmp_path: Path) -> None:
    """Routes up to nine tenths of the node limit (about 25,000) validate in a child limited to 1 GiB."""
    routes = MAX_NODES * 9 // 10 // NODES_PER_ROUTE
    path = tmp_path / "large.yaml"
    path.write_text(HEAD + "routes:\n" + "".join(ROUTE.format(i=i) for i in range(routes)))
    result = validate_limited(path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"config OK: {routes} routes, {routes} smart hosts, 1 mailbox\n"


def test_a_config_past_the_node_limit_is_refused_at_the_line_it_reaches(tmp_path: Path) -> None:
    """Issue 13's 15 MiB config of 190,000 routes is refused with one line where the count passes the limit
    (it took 105 s and 2.2 GB to validate)."""
    path = tmp_path / "huge.yaml"
    head = HEAD.replace("  fourthcoffee:", "  m:") + "routes:\n"
    text = head + "".join(SHORT_ROUTE.format(i=i) for i in range(190_000))
    path.write_text(text)
    assert 15 << 20 < path.stat().st_size < 16 << 20
    result = validate_limited(path)
    first_route_line = line_of(text, "{name: r0,")
    line = first_route_line + (MAX_NODES - NODES_BEFORE_ROUTES) // NODES_PER_SHORT_ROUTE
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"{path}:{line}: too large: more than {MAX_NODES:,} YAML nodes (keys, values, lists and "
                             "mappings) by this line; one instance takes at most that many (split the routes "
                             "across instances)\n")


def test_a_merge_key_bomb_is_refused_before_it_copies_past_the_limit(tmp_path: Path) -> None:
    """10,000 keys merged into 10,000 mappings (400 KB, 100 million copies) are refused at the mapping that
    would pass the limit, within 1 GiB."""
    width = 10_000
    keys = ", ".join(f"k{i}: {i}" for i in range(width))
    text = HEAD + f"big: &big {{{keys}}}\nroutes:\n" + "".join(f"  - {{<<: *big, name: r{i}}}\n" for i in range(width))
    path = tmp_path / "merge-bomb.yaml"
    path.write_text(text)
    result = validate_limited(path)
    index = MAX_NODES // width  # the first mapping whose merge passes the limit
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"{path}:{line_of(text, f'name: r{index}}}')}: routes[{index}]: too large: YAML merge "
                             f"keys (<<) copy more than {MAX_NODES:,} keys by this line; one instance takes at most "
                             "that many\n")


def test_nested_merges_copy_each_mapping_once(tmp_path: Path) -> None:
    """The merge-key bomb of PyYAML 6.0.1 (each level merges the one before ten times: 10^9 keys at the ninth)
    costs the loader ten keys a level: it gets to reading, and refuses the first unknown key."""
    levels = [HEAD, "a0: &a0 {" + ", ".join(f"x{i}: {i}" for i in range(10)) + "}\n"]
    levels += [f"a{n}: &a{n} {{<<: [{', '.join([f'*a{n - 1}'] * 10)}]}}\n" for n in range(1, 10)]
    path = tmp_path / "nested-bomb.yaml"
    path.write_text("".join(levels) + "routes: [{<<: *a9}]\n")
    result = validate_limited(path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"{path}:10: a0: unknown key; expected one of: ")


def test_a_mapping_that_merges_itself_is_refused(tmp_path: Path) -> None:
    """A mapping whose merge includes itself (through a mapping inside it) is one clear line, not a hang."""
    path = tmp_path / "self-merge.yaml"
    path.write_text(HEAD + "routes:\n  - &r {<<: {<<: *r}, name: a}\n")
    result = validate_limited(path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{path}:11: routes[0].<<: invalid YAML merge: a mapping merges itself\n"


def test_an_alias_bomb_is_refused_before_it_reads_past_the_limit(tmp_path: Path) -> None:
    """One route of 3,000 smart hosts repeated 3,000 times by alias (110 KB, 9 million smart hosts to read) is
    refused once the keys read pass the limit, within 1 GiB."""
    width = 3_000
    hosts = ", ".join(f"{{name: e{i}, host: 64.4.6.1}}" for i in range(width))
    first = f"  - &r {{name: r0, sender: p@contoso.com, mailbox: fourthcoffee, smart_hosts: [{hosts}]}}\n"
    path = tmp_path / "alias-bomb.yaml"
    path.write_text(HEAD + "routes:\n" + first + "  - *r\n" * (width - 1))
    result = validate_limited(path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"{path}:11: routes[")
    assert result.stderr.endswith(f": too large: YAML aliases (*) repeat mappings to more than {MAX_NODES:,} keys by "
                                  "this line; one instance takes at most that many\n")


def test_thousands_of_distinct_passwords_are_each_redacted_from_validates_warnings(tmp_path: Path) -> None:
    """2,000 routes, each with its own password written in the file: 2,000 warnings, none showing a password
    (redact looks the passwords up by prefix once there are many)."""
    routes = 2_000
    path = tmp_path / "inline.yaml"
    path.write_text(HEAD + "routes:\n" + "".join(
        ROUTE.format(i=i).replace("password_env: BENCH_SMTP_PASSWORD", f"password: inline-pw-{i:05d}-z")
        for i in range(routes)))
    result = validate_limited(path)
    assert (result.returncode, result.stdout) == (0, f"config OK: {routes} routes, {routes} smart hosts, 1 mailbox\n")
    warnings = result.stderr.splitlines()
    assert len(warnings) == routes
    assert all(line.endswith(": a password written in the config file; prefer password_env or password_file")
               for line in warnings)
    assert "inline-pw-" not in result.stderr


def test_redact_with_many_secrets_removes_each_one_and_the_longest_first() -> None:
    """Past the secrets redact tries one by one, every secret in a text is still replaced, a secret inside a
    longer one goes with the longer one, and text without secrets is unchanged."""
    from probe.secret import REDACTED, Secret, redact

    secrets = [Secret(f"many-secret-{i:05d}-q") for i in range(20_000)]  # far more than a short text's substrings
    Secret("outer-many-secret-00007-q-and-more")
    assert redact("nothing secret here, many- and -q alone") == "nothing secret here, many- and -q alone"
    text = " ".join(secret.reveal() for secret in secrets[::1000]) + " | many-secret-00001-qmany-secret-00002-q"
    redacted = redact(text)
    assert "many-secret-" not in redacted
    assert redacted.count(REDACTED) == len(secrets[::1000]) + 2
    assert redact("x outer-many-secret-00007-q-and-more y") == f"x {REDACTED} y"
