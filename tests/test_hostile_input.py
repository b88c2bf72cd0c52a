"""Hostile input: fuzzed configs, tags and Received headers; junk, huge and foreign mail in the probe mailbox."""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.check import CheckOptions, run_check
from probe.cli import main as cli_main
from probe.config import Config, load_config
from probe.lab import Lab
from probe.ledger import Ledger
from probe.mailbox.ews import EwsMailbox
from probe.mailbox.received import parse_hop, parse_received
from probe.message import Tag, build_probe_message, make_tag, parse_tag, probe_id_if_genuine, verify_tag
from probe.pipeline import NullObserver, confirm, send_probe, targets
from probe.signing import load_or_create_key
from probe.vocabulary import Verdict
from tests.test_config import load_outcome

REPO = Path(__file__).resolve().parent.parent
MINIMAL = REPO / "tests" / "config" / "valid" / "minimal.yaml"
ROUTE = "contoso-to-fourthcoffee"
MAILBOX = "mailflow.probe@fourthcoffee.test"
KEY = b"k" * 32
FUZZ = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("fresh_exchangelib")  # a new connection pool per test


# -- the config loader -------------------------------------------------------------------------------------


def in_temp_file(content: bytes) -> str:
    """Write ``content`` to a temporary config file and return the loader's outcome."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yaml"
        path.write_bytes(content)
        outcome = load_outcome(path)
        assert outcome.startswith(str(path)), outcome
        assert "Traceback" not in outcome
        return outcome


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_either_load_or_raise_a_config_error_naming_the_file(content: bytes) -> None:
    """Arbitrary bytes (non-UTF-8, NUL, BOMs) end in a Config or a ConfigError naming the file."""
    in_temp_file(content)


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.sampled_from(["", "0s", "-1s", "1e309", "~", "*", "&a", "!!binary", "\x00", "64.4.6.100:25", "..", "/"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=6,
)


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the path of every value in a YAML document (mappings and sequences walked)."""
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += leaf_paths(value, (*prefix, index))
    return paths


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """Return a copy of ``document`` with the value at ``path`` replaced."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {k: (replaced(v, rest, value) if k == head else v) for k, v in document.items()}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(document)]


MINIMAL_DATA = yaml.safe_load(MINIMAL.read_text())
MINIMAL_PATHS = leaf_paths(MINIMAL_DATA)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(MINIMAL_PATHS), YAML_VALUES), min_size=1, max_size=3))
def test_a_good_config_with_values_of_any_type_loads_or_names_file_and_field(
        changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    """Any key of a good config given a value of another type or shape: a Config, or a ConfigError naming
    the file (and, when the key is still there, the line)."""
    document = MINIMAL_DATA
    for path, value in changes:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            document = replaced(document, path, value)
    in_temp_file(yaml.safe_dump(document, allow_unicode=True).encode())


@FUZZ
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=len(MINIMAL.read_bytes())))
def test_a_good_config_with_junk_spliced_in_loads_or_raises_a_config_error(junk: bytes, at: int) -> None:
    """Bytes spliced anywhere into a good config never end in a traceback."""
    good = MINIMAL.read_bytes()
    in_temp_file(good[:at] + junk + good[at:])


@settings(deadline=None, max_examples=25)
@given(st.binary(max_size=300))
def test_validate_on_any_bytes_exits_0_or_2_with_one_clear_message(content: bytes) -> None:
    """``mailflow-probe validate`` on arbitrary bytes: exit 0 or 2, the file named, never a traceback."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yaml"
        path.write_bytes(content)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["validate", "-c", str(path)])
    assert code in (0, 2)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if code == 2:
        assert str(path) in err.getvalue()


# -- the tag parser ------------------------------------------------------------------------------------------

HEX = "0123456789abcdefABCDEF"


@FUZZ
@given(st.text(alphabet=HEX, max_size=40), st.text(alphabet=HEX, max_size=70), st.sampled_from(["-", "_", "", "--"]),
       st.text(max_size=20), st.text(max_size=20))
def test_look_alike_tags_never_count(probe_id: str, mac: str, sep: str, before: str, after: str) -> None:
    """"MFP-" followed by hex of any length: parse_tag gives a Tag or None, and nothing passes as genuine."""
    text = f"{before}MFP-{probe_id}{sep}{mac}{after}"
    tag = parse_tag(text)
    assert tag is None or isinstance(tag, Tag)
    assert probe_id_if_genuine(KEY, text, [("X-Mailflow-Probe", text)]) is None


@FUZZ
@given(st.integers(min_value=0, max_value=52), st.sampled_from("0123456789abcdef"))
def test_a_genuine_tag_changed_in_one_character_is_refused(position: int, char: str) -> None:
    """Changing any one hex digit of a genuine tag makes it count for nothing."""
    tag = str(make_tag(KEY, "0123456789abcdef"))
    index = len("MFP-") + min(position, len(tag) - len("MFP-") - 1)
    if tag[index] in (char, "-"):
        return
    mutated = tag[:index] + char + tag[index + 1:]
    parsed = parse_tag(mutated)
    assert parsed is None or not verify_tag(KEY, parsed)
    assert probe_id_if_genuine(KEY, mutated) is None


def test_the_tag_parser_takes_huge_and_binary_looking_text_in_its_stride() -> None:
    """5 MB of look-alikes, NULs, surrogates and non-strings: no exception, no genuine tag."""
    huge = "MFP-" * 1_250_000
    for text in (huge, "MFP-" + "a" * 5_000_000, "\x00MFP-\udcff" * 1000, "MFP-\u0660" * 100):
        assert probe_id_if_genuine(KEY, text, [("X-Mailflow-Probe", text)]) is None
    for thing in (None, b"MFP-", 12, ["MFP-"]):
        assert parse_tag(thing) is None  # type: ignore[arg-type]


# -- the Received-header parser --------------------------------------------------------------------------------

WORDS = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=25)
ZONES = st.sampled_from(["+0000", "-0000", "+1400", "-1200", "+9999", "-2359", "GMT", "UT", "EST", "Z", "", "+01:00"])


@st.composite
def received_values(draw: st.DrawFn) -> str:
    """A Received header value: clauses in any order, comments, and a date that may be valid or not."""
    clauses = draw(st.lists(st.tuples(st.sampled_from(["from", "by", "with", "id", "for", "via", "FROM"]), WORDS),
                            max_size=6))
    text = " ".join(f"{name} {word}" + draw(st.sampled_from(["", " (comment)", " ((nested) (x)",
                                                             " )", " (", " [1.2.3.4]"]))
                    for name, word in clauses)
    stamp = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    date = stamp.strftime(draw(st.sampled_from(["%a, %d %b %Y %H:%M:%S", "%d %b %Y %H:%M", "%Y-%m-%d %H:%M:%S",
                                                "%a, %d %b %y %H:%M:%S"])))
    return text + draw(st.sampled_from(["; ", ";", "", ";;"])) + date + " " + draw(ZONES)


@FUZZ
@given(st.lists(received_values(), max_size=6))
def test_received_headers_of_any_shape_give_hops_with_utc_times_or_none(values: list[str]) -> None:
    """Structured but hostile Received values: hops oldest first, each time aware UTC or None, never a raise."""
    hops = parse_received(values)
    assert len(hops) == len(values)
    for hop in hops:
        assert hop.timestamp is None or hop.timestamp.utcoffset() == timedelta(0)
        assert hop.delay is None or isinstance(hop.delay, float)


def test_pathological_received_headers_are_parsed_quickly_without_a_raise() -> None:
    """Megabyte headers, 100,000 open parentheses, out-of-range dates, NULs: a hop each, no exception."""
    values = [
        "(" * 100_000, "from x " + "(" * 50_000 + ")" * 50_000 + " by y; Mon, 1 Jan 2024 00:00:00 +0000",
        "from " + "a" * 1_000_000, "by x; Fri, 31 Dec 9999 23:59:59 -2359", "by x; Mon, 1 Jan 0001 00:00:00 +1400",
        "\x00from\x00 a\x00; \x00", ";" * 10_000, "from a by b with c id d for <e>; 99 Foo 2024 99:99:99 +0000",
    ]
    hops = parse_received(values)
    assert len(hops) == len(values)
    assert all(h.timestamp is None or h.timestamp.tzinfo is not None for h in hops)
    assert parse_hop("from a by b; Mon, 1 Jan 2024 00:00:00 +0000").timestamp == datetime(2024, 1, 1, tzinfo=UTC)


# -- the probe mailbox full of strange mail ----------------------------------------------------------------------


def hostile_messages() -> list[bytes]:
    """Return messages no probe sent: 5 MB, broken MIME, no headers, binary junk, non-UTF-8, look-alike tags."""
    rng = random.Random(7)
    to = MAILBOX.encode()
    head = b"From: someone@fourthcoffee.test\r\nTo: " + to + b"\r\n"
    return [
        head + b"Subject: the quarterly figures MFP-0123456789abcdef-\r\nMessage-ID: <big@x>\r\n\r\n"
        + b"0123456789abcdef" * (5 * 1024 * 1024 // 16),
        head + b"Subject: broken MIME\r\nMessage-ID: <mime@x>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"nowhere\r\n\r\n--nowhere\r\n"
        b"Content-Type: text/plain; charset=\"x-nonsense\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--nowh",
        b"just a body without any header at all\r\n",
        bytes(rng.randrange(256) for _ in range(20_000)),
        head + b"Subject: caf\xe9 \xff\xfe MFP-\xe9\xe9\r\nMessage-ID: <latin1@x>\r\nX-Mailflow-Probe: \xff\x00\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xc3\x28 invalid UTF-8 \xed\xa0\x80 surrogate\r\n",
        head + b"Subject: =?utf-8?B?!!!?= =?unknown?Q?x?= MFP-zzzz\r\nMessage-ID: <encoded@x>\r\n\r\nbody\r\n",
        head + b"Subject: control \x01\x02\x1b[31m chars\r\nMessage-ID: <ctl@x>\r\n\r\n\x00\x00\r\n",
        head + b"Subject: " + b"MFP-" * 20_000 + b"\r\nMessage-ID: <long@x>\r\n\r\nlong subject\r\n",
    ]


def one_route(lab: Lab, tmp_path: Path) -> Config:
    return load_config(lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=15, jitter=1,
                                              routes=[ROUTE]))


def test_huge_malformed_binary_and_non_utf8_mail_in_the_mailbox_leaves_probes_working_and_is_not_deleted(
        lab: Lab, tmp_path: Path) -> None:
    """A 5 MB message, broken MIME, no headers, binary junk, non-UTF-8 and control characters, look-alike tags:
    both probes are delivered, and every one of those messages is still in the mailbox afterwards."""
    foreign = [lab.store.deliver(MAILBOX, raw) for raw in hostile_messages()]
    foreign.append(lab.store.deliver(MAILBOX, hostile_messages()[4], folder="junkemail"))
    outcome = run_check(one_route(lab, tmp_path), CheckOptions(poll_seconds=0.25))
    assert [str(d.verdict) for d in outcome.decisions] == ["delivered", "delivered"]
    left = {item.item_id for item in lab.store.items(MAILBOX, ["inbox", "junkemail"])}
    assert {item.item_id for item in foreign} <= left
    assert len(left) == len(foreign)  # the probes themselves were cleaned up


def deliver_foreign(lab: Lab, count: int, look_alikes: int) -> set[str]:
    """Put ``count`` foreign messages into the probe mailbox, ``look_alikes`` of them with an invalid MFP- tag."""
    ids = set()
    for n in range(count):
        subject = (f"Re: invoice MFP-{n:016x}-{'0' * 31}x" if n < look_alikes // 2 else
                   f"MFP-{n:016x}-{n:032x}" if n < look_alikes else f"lunch on day {n}")
        raw = (f"From: colleague{n}@fourthcoffee.test\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
               f"Message-ID: <foreign-{n}@fourthcoffee.test>\r\n\r\nNot a probe.\r\n").encode()
        ids.add(lab.store.deliver(MAILBOX, raw, folder="junkemail" if n % 10 == 0 else "inbox").item_id)
    return ids


def test_ten_thousand_foreign_items_cost_one_find_item_per_search_and_none_is_deleted(lab: Lab,
                                                                                       tmp_path: Path) -> None:
    """10,000 foreign items (300 with a look-alike MFP- subject whose MAC is wrong): each search of the
    mailbox is one FindItem request, the probes are delivered, and no foreign item is deleted."""
    foreign = deliver_foreign(lab, 10_000, look_alikes=300)
    config = one_route(lab, tmp_path)
    key = load_or_create_key(config.signing_key_file)
    ledger = Ledger(":memory:")
    chosen = targets(config, [ROUTE])
    mailbox = EwsMailbox(config.mailboxes[chosen[0].mailbox.name], key=key)
    per_search: list[int] = []
    try:
        for target in chosen:
            assert send_probe(target, key=key, ledger=ledger, observer=NullObserver()) is None
        for _ in range(40):
            before = lab.stats.ews_requests("FindItem", forest="fourthcoffee")
            confirm(chosen[0].mailbox.name, mailbox, key=key, ledger=ledger, observer=NullObserver(), late_window=60)
            per_search.append(lab.stats.ews_requests("FindItem", forest="fourthcoffee") - before)
            if not ledger.open_probes():
                break
            time.sleep(0.25)
    finally:
        mailbox.close()
    assert ledger.counts() == {str(Verdict.DELIVERED): 2}
    assert per_search
    assert set(per_search) == {1}, per_search
    left = {item.item_id for item in lab.store.items(MAILBOX, ["inbox", "junkemail"])}
    assert left == foreign
    deleted = lab.store.items(MAILBOX, ["deleteditems"])
    assert len(deleted) == 2
    assert all(probe_id_if_genuine(key, i.subject, i.headers) for i in deleted)


def test_a_probe_for_another_key_is_neither_counted_nor_deleted(lab: Lab, tmp_path: Path) -> None:
    """A well-formed probe signed with another key, in Inbox and Junk: it survives the check untouched."""
    other = build_probe_message(key=b"x" * 32, route=ROUTE, smart_host="fourthcoffee-edge-1",
                                sender="mailflow.probe@contoso.test", recipient=MAILBOX)
    kept = {lab.store.deliver(MAILBOX, other.raw, folder=f).item_id for f in ("inbox", "junkemail")}
    outcome = run_check(one_route(lab, tmp_path), CheckOptions(poll_seconds=0.25))
    assert {str(d.verdict) for d in outcome.decisions} == {"delivered"}
    assert {i.item_id for i in lab.store.items(MAILBOX, ["inbox", "junkemail"])} == kept
