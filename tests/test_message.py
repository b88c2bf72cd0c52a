"""The probe message, its signed tag, and the signing key file."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import stat
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.message import (
    TAG_HEADER,
    Tag,
    build_probe_message,
    make_tag,
    parse_tag,
    probe_id_if_genuine,
    tag_search_prefix,
    verify_tag,
)
from probe.signing import KEY_BYTES, SigningKeyError, load_or_create_key

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def probe(**overrides: object):
    arguments: dict[str, object] = {
        "key": KEY, "route": "contoso-to-fourthcoffee", "smart_host": "fc-edge-1",
        "sender": "mailflow.probe@contoso.com", "recipient": "mailflow.probe@fourthcoffee.com",
        "probe_id": "0123456789abcdef", "now": NOW, "hostname": "probe-1.contoso.com",
    }
    arguments.update(overrides)
    return build_probe_message(**arguments)  # type: ignore[arg-type]


# --- the message ----------------------------------------------------------------------------------------

def test_the_message_uses_crlf_and_nothing_else_as_line_end() -> None:
    """Every line of the raw message ends in CRLF: no bare LF, no bare CR, and it ends with CRLF."""
    raw = probe().raw
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_the_message_is_rfc_5322_with_date_message_id_and_a_text_body() -> None:
    """The parsed message has Date, From, To, Subject, Message-ID, MIME headers and a non-empty body."""
    message = probe()
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    assert parsed.defects == []
    assert parsedate_to_datetime(parsed["Date"]) == NOW.replace(microsecond=0)
    assert parsed["From"] == "mailflow.probe@contoso.com"
    assert parsed["To"] == "mailflow.probe@fourthcoffee.com"
    assert parsed["Message-ID"] == message.message_id
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed["Subject"] == message.subject
    body = parsed.get_content()
    assert "contoso-to-fourthcoffee" in body
    assert "fc-edge-1" in body
    assert "2026-03-14T09:26:53.589+00:00" in body


def test_every_header_line_is_at_most_78_characters() -> None:
    """Long subjects are folded, so every header line stays within RFC 5322's recommended 78 characters."""
    message = probe(route="a-rather-long-route-name-from-contoso-to-fourthcoffee", smart_host="edge-number-1")
    header = message.raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in header.split(b"\r\n")) <= 78
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    assert parsed["Subject"] == message.subject


def test_the_message_id_is_the_probes_own() -> None:
    """Message-ID is <probe_id.milliseconds@mailflow-probe.sender-domain>."""
    message = probe()
    millis = int(NOW.timestamp() * 1000)
    assert message.message_id == f"<0123456789abcdef.{millis}@mailflow-probe.contoso.com>"


def test_the_tag_is_in_the_header_and_the_subject() -> None:
    """X-Mailflow-Probe holds the tag, and the subject is '[mailflow-probe] ROUTE via HOST TAG'."""
    message = probe()
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    assert parsed[TAG_HEADER] == message.tag.text
    assert message.subject == f"[mailflow-probe] contoso-to-fourthcoffee via fc-edge-1 {message.tag.text}"
    assert message.tag.text.startswith(tag_search_prefix())
    assert tag_search_prefix() in message.subject
    assert re.fullmatch(r"MFP-0123456789abcdef-[0-9a-f]{32}", message.tag.text)


def test_each_probe_gets_its_own_id_and_the_same_inputs_give_the_same_bytes() -> None:
    """Without a probe id each message gets a fresh one; with one and a fixed time the bytes repeat."""
    ids = {probe(probe_id=None).probe_id for _ in range(500)}
    assert len(ids) == 500
    assert probe().raw == probe().raw


def test_a_time_in_another_zone_is_written_with_its_offset() -> None:
    """The Date header keeps the instant, whatever the zone of ``now``."""
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    parsed = email.message_from_bytes(probe(now=local).raw, policy=email.policy.default)
    assert parsedate_to_datetime(parsed["Date"]) == NOW.replace(microsecond=0)


@pytest.mark.parametrize(("field", "value"), [
    ("route", "evil\r\nBcc: victim@example.com"),
    ("smart_host", "fc edge"),
    ("sender", "a@b\nX: y"),
    ("recipient", ""),
])
def test_fields_that_would_break_the_header_are_refused(field: str, value: str) -> None:
    """A route, smart host or address with spaces or line breaks cannot inject headers: ValueError."""
    with pytest.raises(ValueError, match=field):
        probe(**{field: value})


def test_a_naive_time_is_refused() -> None:
    """``now`` must say its zone: a naive datetime is a ValueError."""
    with pytest.raises(ValueError, match="aware"):
        probe(now=datetime(2026, 1, 1))


# --- the tag --------------------------------------------------------------------------------------------

def test_a_tag_round_trips_through_subject_and_header() -> None:
    """The tag parsed back from the subject or the header is the one made, and it verifies."""
    message = probe()
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    assert parse_tag(message.subject) == message.tag
    assert parse_tag(parsed[TAG_HEADER]) == message.tag
    assert verify_tag(KEY, message.tag)
    assert probe_id_if_genuine(KEY, parsed["Subject"], list(parsed.items())) == "0123456789abcdef"
    assert probe_id_if_genuine(KEY, parsed["Subject"], {TAG_HEADER: parsed[TAG_HEADER]}) == "0123456789abcdef"


def test_a_tag_survives_a_subject_prefix_and_upper_case() -> None:
    """A relay's '[EXTERNAL]' prefix or an upper-cased subject still yields the verifying tag."""
    tag = make_tag(KEY, "00ff00ff00ff00ff")
    assert probe_id_if_genuine(KEY, f"[EXTERNAL] RE: [mailflow-probe] r via h {tag}") == "00ff00ff00ff00ff"
    assert probe_id_if_genuine(KEY, f"[mailflow-probe] r via h {tag}".upper()) == "00ff00ff00ff00ff"


def _flip(hex_text: str, index: int) -> str:
    return hex_text[:index] + ("0" if hex_text[index] != "0" else "1") + hex_text[index + 1:]


@pytest.mark.parametrize("position", [0, 15, 31])
def test_a_tag_with_a_wrong_mac_is_rejected(position: int) -> None:
    """Changing any character of the MAC makes the tag fail to verify, and the message not count."""
    tag = make_tag(KEY, "0123456789abcdef")
    forged = Tag(probe_id=tag.probe_id, mac=_flip(tag.mac, position))
    assert not verify_tag(KEY, forged)
    assert probe_id_if_genuine(KEY, f"[mailflow-probe] r via h {forged}", {TAG_HEADER: forged.text}) is None


def test_a_tag_made_under_another_key_is_rejected() -> None:
    """A well-formed tag signed with another key does not verify."""
    foreign = make_tag(OTHER_KEY, "0123456789abcdef")
    assert not verify_tag(KEY, foreign)
    assert probe_id_if_genuine(KEY, f"[mailflow-probe] r via h {foreign}") is None


def test_a_genuine_id_with_the_mac_of_another_id_is_rejected() -> None:
    """A MAC is bound to its probe id: reusing it for another id fails."""
    genuine = make_tag(KEY, "0123456789abcdef")
    assert not verify_tag(KEY, Tag(probe_id="fedcba9876543210", mac=genuine.mac))


@pytest.mark.parametrize("text", [
    "MFP-0123456789abcdef-0123456789abcdef0123456789abcde",  # MAC one short
    "MFP-0123456789abcde-0123456789abcdef0123456789abcdef",  # id one short
    "MFP-0123456789abcdef",
    "MFP-",
    "MFP-0123456789abcdeg-0123456789abcdef0123456789abcdef",
    "XMFP-0123456789abcdef-0123456789abcdef0123456789abcdef",
    "MFP-0123456789abcdef-0123456789abcdef0123456789abcdef0",
    "",
    "\x00\udcff\r\n",
])
def test_truncated_and_junk_tags_are_not_tags(text: str) -> None:
    """Truncated, over-long, non-hex or glued-on tag shapes are not parsed as tags at all."""
    assert parse_tag(text) is None
    assert probe_id_if_genuine(KEY, text, {TAG_HEADER: text}) is None


def test_a_forged_header_next_to_a_genuine_subject_makes_nothing_count() -> None:
    """If the header's tag is forged or names another probe, the genuine subject alone does not count."""
    genuine = make_tag(KEY, "0123456789abcdef")
    other = make_tag(KEY, "fedcba9876543210")
    forged = Tag(probe_id=genuine.probe_id, mac=_flip(genuine.mac, 3))
    subject = f"[mailflow-probe] r via h {genuine}"
    assert probe_id_if_genuine(KEY, subject, {TAG_HEADER: forged.text}) is None
    assert probe_id_if_genuine(KEY, subject, [(TAG_HEADER.lower(), other.text)]) is None


def test_a_message_without_a_tag_is_foreign() -> None:
    """No tag in subject or headers: not a probe."""
    assert probe_id_if_genuine(KEY, "Quarterly numbers", {"From": "cfo@contoso.com"}) is None
    assert probe_id_if_genuine(KEY, None) is None


@settings(deadline=None)
@given(st.text())
def test_parse_tag_never_raises(text: str) -> None:
    """parse_tag returns a Tag or None for any text whatsoever."""
    result = parse_tag(text)
    assert result is None or isinstance(result, Tag)


@settings(deadline=None)
@given(st.text(), st.lists(st.tuples(st.text(), st.text()), max_size=5), st.binary(max_size=40))
def test_probe_id_if_genuine_never_raises_and_never_accepts_junk(subject: str, headers: list[tuple[str, str]],
                                                                 key: bytes) -> None:
    """Arbitrary subjects, headers and keys never raise, and random text never passes as genuine."""
    assert probe_id_if_genuine(key, subject, headers) is None


@settings(deadline=None)
@given(st.text(alphabet=" []:;,.!?-_()<>", max_size=20), st.text(alphabet=" []:;,.!?-_()<>", max_size=20),
       st.text(alphabet="0123456789abcdef", min_size=16, max_size=16))
def test_a_tag_is_found_wherever_it_sits_in_the_text(before: str, after: str, probe_id: str) -> None:
    """Surrounded by punctuation or spaces, the tag is found and verifies."""
    tag = make_tag(KEY, probe_id)
    found = parse_tag(f"{before}{tag}{after}")
    assert found == tag
    assert verify_tag(KEY, found)


# --- the signing key ------------------------------------------------------------------------------------

def test_a_missing_key_file_is_created_0600_with_its_directories(tmp_path: Path) -> None:
    """load_or_create_key makes the directories and a 0600 file of 32 random bytes, then reads it back."""
    path = tmp_path / "var" / "lib" / "mailflow-probe" / "signing.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key
    assert load_or_create_key(path) == key
    assert load_or_create_key(tmp_path / "another.key") != key


@pytest.mark.parametrize(("content", "what"), [(b"", "is empty"), (b"short", "is too short (5 bytes)")])
def test_an_empty_or_short_key_file_is_an_error(tmp_path: Path, content: bytes, what: str) -> None:
    """An existing key file with fewer than 32 bytes is refused, naming the file; it is not replaced."""
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=f"signing key file {re.escape(str(path))} {re.escape(what)}"):
        load_or_create_key(path)
    assert path.read_bytes() == content


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A world-readable key still works, and a warning names the file and its mode."""
    path = tmp_path / "signing.key"
    path.write_bytes(KEY)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="probe.signing"):
        assert load_or_create_key(path) == KEY
    assert f"signing key file {path} can be read by other users (mode 0644)" in caplog.text


def test_a_key_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    """A directory where the key file should be is a SigningKeyError, not a traceback."""
    with pytest.raises(SigningKeyError, match="is not a regular file"):
        load_or_create_key(tmp_path)
