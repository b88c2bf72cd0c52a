"""A new mailbox backend's config is one module plus one row: shown with a made-up ``imapx:`` in a scratch copy.

The copy of probe/ gets probe/config/imapx.py (its section: rows, type, builder) and, in
probe/config/backends.py, its row and its type in the union; nothing else. Then the loader accepts it, a
mailbox with two backend sections or none is refused by name, and the schema gains its oneOf branch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

IMAPX_MODULE = '''"""A made-up IMAP-like backend section, for tests only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from probe.config.fields import FieldSpec
from probe.config.nodes import Context, Section
from probe.secret import Secret

DOC: Final = "How to reach the mailbox over IMAP."
FIELDS: Final = (
    FieldSpec(key="host", kind="host", required=True, doc="The IMAP server."),
    FieldSpec(key="port", kind="port", default=993, doc="The port."),
    FieldSpec(key="username", kind="string", required=True, doc="The account."),
    FieldSpec(key="password", kind="secret", required=True, doc="The password."),
)
_DEFAULT: Final = {spec.key: spec.default for spec in FIELDS}


@dataclass(frozen=True, kw_only=True)
class ImapxConfig:
    """How to reach one mailbox over IMAP."""

    name: ClassVar[str] = "imapx"

    host: str
    username: str
    password: Secret
    port: int = _DEFAULT["port"]


def build(ctx: Context, section: Section) -> ImapxConfig:
    """Make the section's config."""
    return ImapxConfig(**section.scalars())
'''

PROBE_SCRIPT = '''
import json, sys
from pathlib import Path
from probe.config import ConfigError, config_json_schema, load_config
out = {"schema": config_json_schema()["$defs"]["mailbox"]}
for name in sys.argv[1:]:
    try:
        mailbox = load_config(Path(name), environ={"PW": "secret-1"}).mailboxes["fc"]
        out[name] = [type(mailbox.backend).__name__, mailbox.backend.name, mailbox.backend.port]
    except ConfigError as exc:
        out[name] = exc.describe()
print(json.dumps(out))
'''

HEAD = "signing_key_file: k\nstate_file: s.db\nmailboxes:\n  fc:\n    address: probe@fourthcoffee.com\n"
EWS = ("    ews:\n      url: https://mail.fourthcoffee.com/EWS/Exchange.asmx\n      username: u\n"
       "      password_env: PW\n")
IMAPX = "    imapx:\n      host: imap.fourthcoffee.com\n      username: u\n      password_env: PW\n"
TAIL = ("routes:\n  - name: r\n    sender: probe@contoso.com\n    mailbox: fc\n    smart_hosts:\n"
        "      - name: h\n        host: 64.4.6.100\n")


def with_backend(root: Path) -> Path:
    """Copy probe/ under ``root`` and add the imapx backend: its module, its row and its union member."""
    shutil.copytree(REPO / "probe", root / "probe", ignore=shutil.ignore_patterns("__pycache__", "lab"))
    (root / "probe" / "config" / "imapx.py").write_text(IMAPX_MODULE)
    table = root / "probe" / "config" / "backends.py"
    text = table.read_text()
    for old, new in (
        ("from probe.config import ews, graph, imap\n", "from probe.config import ews, graph, imap, imapx\n"),
        ("BackendConfig: TypeAlias = ews.EwsConfig | imap.ImapConfig | graph.GraphConfig",
         "BackendConfig: TypeAlias = ews.EwsConfig | imap.ImapConfig | graph.GraphConfig | imapx.ImapxConfig"),
        ("    Backend(name=ews.EwsConfig.name, doc=ews.DOC, fields=ews.FIELDS, build=ews.build),\n",
         "    Backend(name=ews.EwsConfig.name, doc=ews.DOC, fields=ews.FIELDS, build=ews.build),\n"
         "    Backend(name=imapx.ImapxConfig.name, doc=imapx.DOC, fields=imapx.FIELDS, build=imapx.build),\n"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    table.write_text(text)
    return root


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = with_backend(tmp_path_factory.mktemp("scratch"))
    configs = {"imapx.yaml": HEAD + IMAPX + TAIL, "both.yaml": HEAD + EWS + IMAPX + TAIL, "none.yaml": HEAD + TAIL}
    for name, text in configs.items():
        (root / name).write_text(text)
    result = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, *configs], cwd=root, capture_output=True,
                            text=True, timeout=60, check=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"})
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_a_mailbox_of_the_new_backend_loads(outcome: dict[str, Any]) -> None:
    """The new section is read with its own rows and defaults into its own config type."""
    assert outcome["imapx.yaml"] == ["ImapxConfig", "imapx", 993]


def test_a_mailbox_has_exactly_one_backend_section(outcome: dict[str, Any]) -> None:
    """Two backend sections, or none, are refused naming the alternatives."""
    assert outcome["both.yaml"] == ("both.yaml:10: mailboxes.fc.imapx: ews and imapx are both given; "
                                    "give only one of ews, imapx, imap or graph")
    assert outcome["none.yaml"] == ('none.yaml:5: mailboxes.fc: missing required key "ews" '
                                    '(or "imapx" or "imap" or "graph")')


def test_the_schema_has_a_branch_per_backend(outcome: dict[str, Any]) -> None:
    """The mailbox schema requires exactly one of the backend sections, each a $ref of its own."""
    mailbox = outcome["schema"]
    assert {"oneOf": [{"required": ["ews"]}, {"required": ["imapx"]}, {"required": ["imap"]},
                                  {"required": ["graph"]}]} in mailbox["allOf"]
    assert mailbox["properties"]["imapx"]["$ref"] == "#/$defs/imapx"
