"""The IMAP backend against a real Dovecot (the lab's, behind its TLS front): TLS, SASL, search, cleanup, IDLE."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from probe.check import CheckOptions, run_check
from probe.config import ImapConfig, MailboxConfig, load_config
from probe.dsn import DsnAction, read_report
from probe.lab import Lab
from probe.lab.imap_front import ImapFront, shift_internaldate
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.mailbox.base import SearchResult
from probe.mailbox.imap import ImapMailbox
from probe.message import build_probe_message, make_tag
from probe.secret import Secret
from probe.vocabulary import MailboxFolder, MailboxReason, Verdict

MAILBOX = "mailflow.probe@fourthcoffee.test"
ROUTE = "contoso-to-fourthcoffee"
KEY = b"s" * 32

pytestmark = pytest.mark.postfix  # Debian's Dovecot, started by the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.start(tmp_path_factory.mktemp("imap") / "lab", mailbox_backend="imap") as started:
        yield started


@pytest.fixture(autouse=True)
def no_faults(lab: Lab) -> Iterator[None]:
    lab.clear_faults()
    yield
    lab.clear_faults()


def imap_config(lab: Lab, *, forest: str = "fourthcoffee", **changes: Any) -> MailboxConfig:
    """Return the lab's IMAP mailbox config of ``forest`` with the ``imap:`` keys changed as asked."""
    target = lab.forests[forest]
    imap = ImapConfig(host="127.0.0.1", port=target.imap_port, username=target.mailboxes[0],
                      password=target.imap_password, ca_file=lab.ca_file, timeout=5.0)
    return MailboxConfig(name=forest, address=target.mailboxes[0], backend=dataclasses.replace(imap, **changes))


def deliver_probe(lab: Lab, *, key: bytes = KEY, smart_host: str = "fourthcoffee-edge-1") -> str:
    """Put a tagged probe into the mailbox as the smart hosts do; return its probe id."""
    message = build_probe_message(key=key, route=ROUTE, smart_host=smart_host, sender="mailflow.probe@contoso.test",
                                  recipient=MAILBOX)
    lab.store.deliver(MAILBOX, message.raw, accepted_at=time.time())
    return message.probe_id


def search_until(mailbox: ImapMailbox, probe_ids: set[str], *, timeout: float = 10.0) -> set[str]:
    """Search until every probe is seen (or the time is up); return those seen."""
    end = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < end and seen != probe_ids:
        result = mailbox.search(probe_ids)
        assert result.ok, result.error
        seen = {s.probe_id for s in result.sightings}
        time.sleep(0.1)
    return seen


def test_implicit_tls_and_a_utf8_password_over_sasl_plain_and_login_find_a_probe(lab: Lab) -> None:
    """IMAPS with the lab CA and a non-ASCII password: SASL PLAIN and LOGIN both log in, and the probe is found
    with its INTERNALDATE (whole seconds) and the Received hops."""
    assert not lab.forests["fourthcoffee"].imap_password.reveal().isascii()
    probe_id = deliver_probe(lab)
    for auth in ("plain", "login"):
        mailbox = ImapMailbox(imap_config(lab, auth=auth), key=KEY)
        try:
            assert search_until(mailbox, {probe_id}) == {probe_id}
            sighting = mailbox.search({probe_id}).sightings[0]
        finally:
            mailbox.close()
        assert sighting.folder == MailboxFolder.INBOX
        assert not sighting.received_precise
        assert sighting.received_server.microsecond == 0
        assert abs(sighting.received_server.timestamp() - time.time()) < 30
        assert sighting.hops


def test_starttls_comes_before_any_credentials(lab: Lab) -> None:
    """On the STARTTLS port the probe upgrades first; the front, which refuses LOGIN in the clear, saw none."""
    probe_id = deliver_probe(lab)
    before = lab.stats.imap_commands("login_before_tls")
    config = imap_config(lab, port=lab.forests["fourthcoffee"].imap_starttls_port, tls="starttls")
    mailbox = ImapMailbox(config, key=KEY)
    try:
        assert search_until(mailbox, {probe_id}) == {probe_id}
    finally:
        mailbox.close()
    assert lab.stats.imap_commands("STARTTLS", forest="fourthcoffee") >= 1
    assert lab.stats.imap_commands("login_before_tls") == before


def test_a_server_without_starttls_gets_no_credentials(lab: Lab) -> None:
    """Dovecot's own port offers no STARTTLS: the search fails with reason tls, and Dovecot logged no login."""
    wing = lab._parts.imap
    assert wing is not None
    logins = wing.dovecot.log_text().count("Login: user=")
    config = imap_config(lab, port=wing.dovecot.imap_port, tls="starttls")
    result = ImapMailbox(config, key=KEY).search({"0" * 16})
    assert (result.ok, result.error_reason) == (False, MailboxReason.TLS)
    assert "no STARTTLS" in (result.error or "")
    assert wing.dovecot.log_text().count("Login: user=") == logins


def test_a_certificate_for_another_name_or_from_another_ca_is_refused_before_login(lab: Lab, tmp_path: Path) -> None:
    """A front whose certificate names another host, and the lab's front checked against a stranger CA: reason tls,
    and no AUTHENTICATE reached either front."""
    from probe.lab.ca import LabCA

    wrong_name = lab.ca.issue("elsewhere", ["imap.elsewhere.test"]).server_context()
    wing = lab._parts.imap
    assert wing is not None
    front = ImapFront(upstream=("127.0.0.1", wing.dovecot.imap_port), faults=lab.faults, stats=lab.stats,
                      contexts=lambda _forest: wrong_name)
    front.start()
    try:
        port, _ = front.add_forest("misnamed")
        named = ImapMailbox(imap_config(lab, port=port), key=KEY).search({"0" * 16})
    finally:
        front.stop()
    stranger = LabCA(tmp_path / "stranger").ca_file
    untrusted = ImapMailbox(imap_config(lab, ca_file=stranger), key=KEY).search({"0" * 16})
    assert (named.error_reason, untrusted.error_reason) == (MailboxReason.TLS, MailboxReason.TLS)
    assert "hostname" in (named.error or "").lower() or "match" in (named.error or "").lower()
    assert lab.stats.imap_commands("AUTHENTICATE", forest="misnamed") == 0


def test_a_wrong_password_is_unauthorized_and_never_shown(lab: Lab) -> None:
    """The server's AUTHENTICATIONFAILED is reason unauthorized; the error text holds no password."""
    result = ImapMailbox(imap_config(lab, password=Secret("wrong-pässword")), key=KEY).search({"0" * 16})
    assert (result.ok, result.error_reason) == (False, MailboxReason.UNAUTHORIZED)
    assert "wrong-pässword" not in (result.error or "")


def test_one_command_per_folder_covers_every_probe_in_flight(lab: Lab) -> None:
    """Twenty probes in flight: the first search is a UID SEARCH per folder (INBOX, Junk) and one UID FETCH of
    the matches; later polls are a NOOP and one UID FETCH of the UIDs above those seen per folder, no UID
    SEARCH, and twenty more probes are found that way; all forty are moved with one UID MOVE."""
    ids = {deliver_probe(lab) for _ in range(20)}
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        search_until(mailbox, ids)
        before = {name: lab.stats.imap_commands(name) for name in ("SEARCH", "FETCH", "NOOP")}
        more = {deliver_probe(lab) for _ in range(20)}
        time.sleep(0.5)  # delivered through LMTP
        result = mailbox.search(ids | more)
        after = {name: lab.stats.imap_commands(name) - before[name] for name in before}
        assert {s.probe_id for s in result.sightings} == ids | more
        assert after == {"SEARCH": 0, "FETCH": 2, "NOOP": 2}
        moves = lab.stats.imap_commands("MOVE")
        assert mailbox.cleanup([s.item for s in result.sightings]).deleted == 40
        assert lab.stats.imap_commands("MOVE") - moves == 1
    finally:
        mailbox.close()


def test_forged_and_foreign_mail_is_neither_counted_nor_deleted(lab: Lab, tmp_path: Path) -> None:
    """A message shaped like a probe but signed with another key, and an ordinary one with MFP- in its subject,
    survive a whole check: the check's probes are delivered and moved to Trash, the two stay in INBOX."""
    forged = build_probe_message(key=b"k" * 32, route=ROUTE, smart_host="fourthcoffee-edge-1",
                                 sender="mailflow.probe@contoso.test", recipient=MAILBOX)
    foreign = (b"From: someone@fourthcoffee.test\r\nTo: " + MAILBOX.encode() + b"\r\nSubject: lunch MFP-?\r\n"
               b"Message-ID: <lunch@fourthcoffee.test>\r\n\r\nSandwiches.\r\n")
    lab.store.deliver(MAILBOX, forged.raw)
    lab.store.deliver(MAILBOX, foreign)
    config = load_config(lab.write_probe_config(tmp_path / "probe.yaml", interval=60, timeout=20, jitter=0,
                                                routes=[ROUTE]))
    outcome = run_check(config, CheckOptions(poll_seconds=0.25))
    assert [d.verdict for d in outcome.decisions] == [Verdict.DELIVERED] * 2
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        client, _validity = mailbox._connections.selected("INBOX")
        inbox = {data[b"ENVELOPE"].message_id.decode()
                 for data in client.fetch(client.search(["ALL"]), ["ENVELOPE"]).values()}
        trash = mailbox._connections.selected("Trash")[0]
        trashed = {data[b"ENVELOPE"].message_id.decode()
                   for data in trash.fetch(trash.search(["ALL"]), ["ENVELOPE"]).values()}
    finally:
        mailbox.close()
    assert {forged.message_id, "<lunch@fourthcoffee.test>"} <= inbox
    assert {d.message_id for d in outcome.decisions} <= trashed
    assert not {forged.message_id, "<lunch@fourthcoffee.test>"} & trashed


def test_hard_delete_expunges_exactly_the_verified_probes(lab: Lab) -> None:
    """cleanup: hard_delete flags and UID-EXPUNGEs the probe only; a forged reference is refused."""
    probe_id = deliver_probe(lab)
    config = dataclasses.replace(imap_config(lab), cleanup="hard_delete")
    mailbox = ImapMailbox(config, key=KEY)
    try:
        search_until(mailbox, {probe_id})
        ref = mailbox.search({probe_id}).sightings[0].item
        forged_id = deliver_probe(lab, key=b"x" * 32)
        other = ImapMailbox(imap_config(lab), key=b"x" * 32)
        try:
            forged_ref = [s.item for s in other.search({forged_id}).sightings]
        finally:
            other.close()
        result = mailbox.cleanup([ref, *forged_ref])
        assert (result.ok, result.deleted, result.refused) == (True, 1, len(forged_ref))
        assert mailbox.search({probe_id}).sightings == []
        assert mailbox.cleanup([ref]).missing == 1
    finally:
        mailbox.close()


@pytest.mark.parametrize("offset", [30.0, -30.0])
def test_the_clock_offset_is_read_from_an_appended_messages_internaldate(lab: Lab, offset: float) -> None:
    """With the server's clock 30 s off, a calibration (timed APPENDs, expunged at once) finds the offset to within
    about half a second, and leaves no message behind."""
    lab.add_fault(target="imap/fourthcoffee", kind="clock_offset", seconds=offset)
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        estimate = mailbox.calibrate_clock(target_uncertainty=0.05, budget_seconds=5.0)
        client, _validity = mailbox._connections.selected("INBOX")
        left = client.search(["SUBJECT", "clock reading"])
    finally:
        mailbox.close()
    assert estimate is not None
    assert abs(estimate.offset - offset) <= estimate.uncertainty + 0.05
    assert estimate.uncertainty < 0.6
    assert left == []


def test_shifting_internaldate_keeps_the_format() -> None:
    """The front moves an INTERNALDATE by whole seconds, across midnight, in the server's zone."""
    line = b'* 1 FETCH (UID 4 INTERNALDATE "31-Dec-2026 23:59:50 +0100")\r\n'
    assert shift_internaldate(line, 30) == b'* 1 FETCH (UID 4 INTERNALDATE "01-Jan-2027 00:00:20 +0100")\r\n'


def test_idle_reports_new_mail_within_a_second_and_stops_promptly(lab: Lab) -> None:
    """The watch IDLEs on INBOX and Junk; a delivery to each is heard within a second; stop() returns at once."""
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    heard: list[float] = []
    event = threading.Event()

    def on_new_mail(at: float) -> None:
        heard.append(at)
        event.set()

    watch = mailbox.watch(on_new_mail)
    try:
        end = time.monotonic() + 10
        while not watch.connected and time.monotonic() < end:
            time.sleep(0.05)
        assert watch.connected, watch.last_error
        for folder in ("inbox", "junkemail"):
            event.clear()
            sent = time.time()
            message = build_probe_message(key=KEY, route=ROUTE, smart_host="fourthcoffee-edge-1",
                                          sender="mailflow.probe@contoso.test", recipient=MAILBOX)
            lab.store.deliver(MAILBOX, message.raw, folder=folder)
            assert event.wait(3), folder
            assert heard[-1] - sent < 1.0
        started = time.monotonic()
        watch.stop()
        assert time.monotonic() - started < 2.0
    finally:
        mailbox.close()


@pytest.mark.parametrize(("kind", "params", "reason"), [
    ("unauthorized", {}, MailboxReason.UNAUTHORIZED),
    ("server_error", {}, MailboxReason.SERVER_ERROR),
    ("server_busy", {"back_off_ms": 100}, MailboxReason.THROTTLED),
    ("unreachable", {}, MailboxReason.UNREACHABLE),
])
def test_each_mailbox_fault_gives_its_reason(lab: Lab, kind: str, params: dict[str, object],
                                             reason: MailboxReason) -> None:
    """A search through each fault of imap/FOREST fails with the reason EWS gives for the same fault."""
    lab.add_fault(target="imap/fourthcoffee", kind=kind, **params)
    result = ImapMailbox(imap_config(lab), key=KEY).search({"0" * 16}, deadline=time.time() + 5)
    assert (result.ok, result.error_reason) == (False, reason), result.error


def test_a_dropped_connection_is_reopened_once_within_the_search(lab: Lab) -> None:
    """The front drops the session mid-way (unreachable, then lifted): the next search reconnects and succeeds."""
    probe_id = deliver_probe(lab)
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        assert search_until(mailbox, {probe_id}) == {probe_id}
        connections = lab.stats.imap_commands("connections")
        lab.add_fault(target="imap/fourthcoffee", kind="unreachable")
        assert mailbox.search({probe_id}).error_reason == MailboxReason.UNREACHABLE
        lab.clear_faults()
        assert {s.probe_id for s in mailbox.search({probe_id}).sightings} == {probe_id}
        assert lab.stats.imap_commands("connections") - connections <= 4  # bounded: one reopening per folder
    finally:
        mailbox.close()


@pytest.mark.parametrize("auth", ["plain", "login"])
def test_the_password_never_reaches_the_logs_even_at_debug(lab: Lab, auth: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """With every logger at DEBUG (IMAPClient's protocol trace included), a login leaves neither the password nor
    its base64 (alone, or as the SASL PLAIN message) in the log."""
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    mailbox = ImapMailbox(imap_config(lab, auth=auth), key=KEY)
    try:
        assert mailbox.search({"0" * 16}).ok
    finally:
        mailbox.close()
    password = lab.forests["fourthcoffee"].imap_password.reveal()
    forms = [password, base64.b64encode(password.encode()).decode(),
             base64.b64encode(f"\0{MAILBOX}\0{password}".encode()).decode()]
    assert "AUTHENTICATE" in caplog.text
    assert not [form for form in forms if form in caplog.text]


def test_a_folder_idle_heard_nothing_from_is_not_searched_again(lab: Lab) -> None:
    """With IDLE on both folders, a search right after another sends no command at all; mail to INBOX and Junk
    makes the next searches look again (a NOOP and a UID FETCH of the newer UIDs each) and find both probes."""
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    watch = mailbox.watch(lambda _at: None)
    try:
        end = time.monotonic() + 10
        while not watch.connected and time.monotonic() < end:
            time.sleep(0.05)
        assert watch.connected, watch.last_error
        time.sleep(0.3)  # what was said when IDLE began has been heard
        assert mailbox.search(set()).ok
        commands = lab.stats.imap_commands(forest="fourthcoffee")
        assert mailbox.search(set()).ok
        assert lab.stats.imap_commands(forest="fourthcoffee") == commands
        fetches = lab.stats.imap_commands("FETCH", forest="fourthcoffee")
        probe_id = deliver_probe(lab, smart_host="fourthcoffee-edge-2")
        message = build_probe_message(key=KEY, route=ROUTE, smart_host="fourthcoffee-edge-2",
                                      sender="mailflow.probe@contoso.test", recipient=MAILBOX)
        lab.store.deliver(MAILBOX, message.raw, folder="junkemail")
        seen = search_until(mailbox, {probe_id, message.probe_id})
        assert seen == {probe_id, message.probe_id}
        assert lab.stats.imap_commands("FETCH", forest="fourthcoffee") - fetches >= 2
    finally:
        mailbox.close()


def test_a_server_without_idle_is_polled(lab: Lab) -> None:
    """Behind a front that hides IDLE, the watch never connects and says why (the daemon then polls at
    poll_interval), and searches still find the probes."""
    wing = lab._parts.imap
    assert wing is not None
    front = ImapFront(upstream=("127.0.0.1", wing.dovecot.imap_port), faults=lab.faults, stats=lab.stats,
                      contexts=lambda _forest: lab.ca.issue("imap-noidle", ["127.0.0.1"]).server_context(),
                      hidden=frozenset({b"IDLE"}))
    front.start()
    try:
        port, _ = front.add_forest("noidle")
        mailbox = ImapMailbox(imap_config(lab, port=port), key=KEY)
        watch = mailbox.watch(lambda _at: None)
        try:
            end = time.monotonic() + 10
            while watch.last_error is None and time.monotonic() < end:
                time.sleep(0.05)
            assert not watch.connected
            assert "no IDLE" in (watch.last_error or "")
            probe_id = deliver_probe(lab)
            assert search_until(mailbox, {probe_id}) == {probe_id}
        finally:
            mailbox.close()
    finally:
        front.stop()


# -- delivery status reports: found by the same search as the probes, their content handed over raw ------------

REPORT_TO = "mailflow.probe@contoso.test"


def _report(probe_key: bytes = KEY, *, delayed: bool = False) -> tuple[str, bytes]:
    """Return a probe id and an Exchange NDR (or delay notification) of its message, as if sent from this mailbox."""
    original = build_probe_message(key=probe_key, route="fourthcoffee-to-contoso", smart_host="contoso-edge-1",
                                   sender=MAILBOX, recipient=REPORT_TO)
    now = datetime.now(UTC)
    notice = Notice(status="4.4.7" if delayed else "5.1.1", recipient=REPORT_TO, sender=MAILBOX,
                    postmaster="postmaster@contoso.test", reporting_mta="CONTOSO-MBX-1.contoso.test", arrival=now,
                    when=now)
    build = delay_notification if delayed else non_delivery_report
    return original.probe_id, build(original.raw, notice)


def reports_until(mailbox: ImapMailbox, reports_for: set[str], *, timeout: float = 10.0) -> SearchResult:
    """Search until a report of each probe of ``reports_for`` is handed over (or the time is up)."""
    end = time.monotonic() + timeout
    while True:
        result = mailbox.search(set(), reports_for=reports_for)
        assert result.ok, result.error
        if {r.probe_id for r in result.reports} == reports_for or time.monotonic() > end:
            return result
        time.sleep(0.1)


def test_reports_come_from_the_probes_search_and_one_fetch_of_their_content(lab: Lab) -> None:
    """A probe sent here and the NDR and delay notification of two probes bouncing here: the same UID SEARCH
    finds all three; the reports' whole content costs one UID FETCH more, once (the next poll fetches nothing
    again); probe.dsn reads them as failed and delayed; the probe is a sighting and no report is."""
    probe_id = deliver_probe(lab)
    bounced, ndr = _report()
    delayed, notice = _report(delayed=True)
    for raw in (ndr, notice):
        lab.store.deliver(MAILBOX, raw)
    warm = ImapMailbox(imap_config(lab), key=KEY)
    try:
        reports_until(warm, {bounced, delayed})  # all three are in Dovecot now
    finally:
        warm.close()
    counts = []
    for reports_for in (set(), {bounced, delayed}):  # the same search by two fresh mailboxes, without and with
        mailbox = ImapMailbox(imap_config(lab), key=KEY)
        try:
            before = lab.stats.imap_commands("FETCH")
            result = mailbox.search({probe_id}, reports_for=reports_for)
            counts.append(lab.stats.imap_commands("FETCH") - before)
            fetches = lab.stats.imap_commands("FETCH")
            again = mailbox.search({probe_id}, reports_for=reports_for)
            polled = lab.stats.imap_commands("FETCH") - fetches
        finally:
            mailbox.close()
    assert counts[1] == counts[0] + 1
    assert polled == 2  # the next poll: one UID FETCH of the newer UIDs per folder, none of the reports' content
    assert [s.probe_id for s in result.sightings] == [probe_id]
    assert sorted(r.probe_id for r in result.reports) == sorted([bounced, delayed])
    assert sorted(r.probe_id for r in again.reports) == sorted([bounced, delayed])
    actions = {r.probe_id: read_report(r.raw, key=KEY).report for r in result.reports}
    assert {p: (a.action if a else None) for p, a in actions.items()} == {
        bounced: DsnAction.FAILED, delayed: DsnAction.DELAYED}
    report = next(r for r in result.reports if r.probe_id == bounced)
    assert report.folder == MailboxFolder.INBOX
    assert abs(report.received_local - time.time()) < 30


def test_a_report_is_neither_a_probe_nor_wanted_unless_asked_for(lab: Lab) -> None:
    """An NDR is never taken for the probe it names, and a search that asks for no reports returns none."""
    bounced, ndr = _report()
    lab.store.deliver(MAILBOX, ndr)
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        reports_until(mailbox, {bounced})
        result = mailbox.search({bounced})
    finally:
        mailbox.close()
    assert result.ok, result.error
    assert (result.sightings, result.reports) == ([], [])


def test_a_report_whose_subject_tag_is_forged_is_counted_and_not_handed_over(lab: Lab) -> None:
    """A report under another key's tag is forged: counted once, never handed over, left where it is."""
    bounced, ndr = _report(b"o" * 32)
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        before = mailbox.search(set()).forged
        lab.store.deliver(MAILBOX, ndr)
        end = time.monotonic() + 10
        result = mailbox.search(set(), reports_for={bounced})
        while result.forged == before and time.monotonic() < end:
            time.sleep(0.1)
            result = mailbox.search(set(), reports_for={bounced})
    finally:
        mailbox.close()
    assert (result.reports, result.forged - before) == ([], 1)


def test_verified_reports_are_cleaned_up_without_another_read(lab: Lab) -> None:
    """A report this mailbox handed over (its subject's tag verified) is moved to Trash when asked, without a
    FETCH; nothing else moves."""
    bounced, ndr = _report()
    lab.store.deliver(MAILBOX, ndr)
    mailbox = ImapMailbox(imap_config(lab), key=KEY)
    try:
        [report] = reports_until(mailbox, {bounced}).reports
        fetches = lab.stats.imap_commands("FETCH")
        cleaned = mailbox.cleanup([report.item])
        assert lab.stats.imap_commands("FETCH") == fetches
        trash = mailbox._connections.selected("Trash")[0]
        subjects = [data[b"ENVELOPE"].subject.decode() for data in
                    trash.fetch(trash.search(["SUBJECT", "Undeliverable"]), ["ENVELOPE"]).values()]
        assert mailbox.search(set(), reports_for={bounced}).reports == []
    finally:
        mailbox.close()
    assert (cleaned.ok, cleaned.deleted) == (True, 1)
    assert [s for s in subjects if make_tag(KEY, bounced).text in s]
