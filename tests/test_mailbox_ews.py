"""The EWS confirm step against the lab's EWS endpoint, with real exchangelib over real sockets."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import exchangelib.protocol
import pytest

from probe.config import Cleanup, EwsAuth, EwsConfig, MailboxConfig
from probe.dsn import DsnAction, read_report
from probe.lab.ca import LabCA
from probe.lab.ews.server import EwsServer
from probe.lab.faults import EwsFault, FaultRegistry, parse_fault
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.mailbox.base import ItemRef, Mailbox
from probe.mailbox.ews import EwsMailbox, parse_ews_datetime
from probe.message import build_probe_message
from probe.secret import Secret
from probe.vocabulary import MailboxReason

FOREST = "fourthcoffee"
ADDRESS = "mailflow.probe@fourthcoffee.com"
USERNAME = "FOURTHCOFFEE\\svc-mailflow"
PASSWORD = "ews-Pa55word-for-tests"
KEY = b"k" * 32
OTHER_KEY = b"x" * 32


@dataclass
class World:
    """One forest's mailbox store behind the lab's EWS endpoint, with faults and stats."""

    server: EwsServer
    store: MailboxStore
    faults: FaultRegistry
    stats: LabStats
    ca_file: Path

    def fault(self, kind: str, **params: float) -> None:
        self.faults.add(parse_fault({"target": f"ews/{FOREST}", "kind": kind, **params}))

    def deliver(self, *, key: bytes = KEY, folder: str = "inbox", subject: str | None = None) -> tuple[str, str]:
        """Deliver a probe message (or a plain one with ``subject``); return its probe id and item id."""
        if subject is not None:
            raw = (f"From: someone@contoso.com\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{time.time()}@contoso.com>\r\n\r\nhello\r\n").encode()
            return "", self.store.deliver(ADDRESS, raw, folder=folder).item_id
        message = build_probe_message(key=key, route="contoso-to-fourthcoffee", smart_host="fc-edge-1",
                                      sender="mailflow.probe@contoso.com", recipient=ADDRESS)
        item = self.store.deliver(ADDRESS, message.raw, folder=folder, accepted_at=time.time())
        return message.probe_id, item.item_id

    def mailbox(self, *, auth: EwsAuth = "basic", password: str = PASSWORD, url: str | None = None,
                cleanup: Cleanup = "move_to_deleted_items", timeout: float = 5.0,
                ca_file: Path | None = None) -> EwsMailbox:
        ews = EwsConfig(url=url or str(self.server.https_url), username=USERNAME, password=Secret(password),
                        auth=auth, ca_file=ca_file or self.ca_file, version="15.2.1544.4", timeout=timeout)
        return EwsMailbox(MailboxConfig(name=FOREST, address=ADDRESS, backend=ews, cleanup=cleanup), key=KEY)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    faults, stats = FaultRegistry(), LabStats()

    def clock(forest: str) -> float:
        offset = faults.find(f"ews/{forest}", EwsFault.CLOCK_OFFSET)
        return time.time() + (offset.seconds or 0.0 if offset is not None else 0.0)

    store = MailboxStore(clock=clock)
    store.add_mailbox(ADDRESS, FOREST)
    ca = LabCA(tmp_path / "ca")
    cert = ca.issue("ews.fourthcoffee.com", ["127.0.0.1", "ews.fourthcoffee.com"])
    server = EwsServer(FOREST, store=store, faults=faults, stats=stats, users={USERNAME: PASSWORD},
                       host="127.0.0.1", ssl_context=cert.server_context())
    server.start()
    try:
        yield World(server=server, store=store, faults=faults, stats=stats, ca_file=ca.ca_file)
    finally:
        exchangelib.protocol.close_connections()
        server.stop()


@pytest.fixture
def mailbox(world: World) -> Iterator[EwsMailbox]:
    box = world.mailbox()
    yield box
    box.close()


def _search(box: EwsMailbox, probe_ids: list[str]):
    return box.search(probe_ids, since=time.time() - 60)


def test_one_search_covers_every_probe_in_flight(world: World, mailbox: EwsMailbox):
    """Twenty probes in flight, in Inbox and Junk, cost one FindItem and one GetItem, over verified HTTPS."""
    delivered = [world.deliver(folder="junkemail" if i % 4 == 0 else "inbox") for i in range(20)]
    result = _search(mailbox, [probe_id for probe_id, _ in delivered])
    assert result.ok, result.error
    assert sorted(s.probe_id for s in result.sightings) == sorted(p for p, _ in delivered)
    folders = {s.probe_id: s.folder for s in result.sightings}
    assert [folders[p] for p, _ in delivered[:4]] == ["junkemail", "inbox", "inbox", "inbox"]
    assert world.stats.ews_requests("FindItem") == 1
    assert world.stats.ews_requests("GetItem") == 1
    assert world.server.https_url is not None
    assert world.server.https_url.startswith("https://")


def test_receipt_time_is_precise_and_on_the_probe_clock(world: World, mailbox: EwsMailbox):
    """The receipt stamp comes with milliseconds and, corrected, lies within a second of the true arrival."""
    probe_id, item_id = world.deliver()
    result = _search(mailbox, [probe_id])
    (sighting,) = result.sightings
    item = world.store.get(item_id)
    assert item is not None
    assert sighting.received_precise
    assert sighting.received_server == item.received.replace(microsecond=item.received.microsecond // 1000 * 1000)
    assert abs(sighting.received_local - item.delivered_at) < 1.0
    assert sighting.received_local <= sighting.first_seen_local
    assert sighting.message_id
    assert sighting.tag.startswith("MFP-")


@pytest.mark.parametrize("offset", [30.0, -30.0])
def test_a_skewed_server_clock_is_measured_and_corrected(world: World, mailbox: EwsMailbox, offset: float):
    """With the server clock 30 s off, the offset estimate is within a second and the arrival is corrected."""
    world.fault("clock_offset", seconds=offset)
    probe_id, item_id = world.deliver()
    result = _search(mailbox, [probe_id])
    assert result.ok, result.error
    assert result.clock_offset is not None
    assert abs(result.clock_offset - offset) < 1.0
    (sighting,) = result.sightings
    item = world.store.get(item_id)
    assert item is not None
    assert abs(sighting.received_server.timestamp() - item.delivered_at - offset) < 0.1
    assert abs(sighting.received_local - item.delivered_at) < 1.0


def test_forged_and_foreign_messages_are_neither_returned_nor_deleted(world: World, mailbox: EwsMailbox):
    """A probe-shaped message with a wrong HMAC, and a foreign one, are counted apart and never deleted."""
    good, good_item = world.deliver()
    forged, forged_item = world.deliver(key=OTHER_KEY)
    _, foreign_item = world.deliver(subject="MFP- newsletter about probes")
    result = _search(mailbox, [good, forged])
    assert [s.probe_id for s in result.sightings] == [good]
    assert (result.forged, result.foreign_skipped) == (1, 1)
    refs = [ItemRef(i) for i in (good_item, forged_item, foreign_item)]
    done = mailbox.cleanup(refs)
    assert done.ok
    assert [ref.key for ref in done.gone] == [good_item]
    assert (done.deleted, done.refused) == (1, 2)
    assert world.store.get(forged_item) is not None
    assert world.store.get(foreign_item) is not None
    assert world.store.get(forged_item).folder == "inbox"  # type: ignore[union-attr]


def test_cleanup_reads_and_verifies_ids_it_has_not_seen(world: World, mailbox: EwsMailbox):
    """Ids handed over without a search (say, after a restart) are deleted only when their tag verifies."""
    _, good_item = world.deliver()
    _, forged_item = world.deliver(key=OTHER_KEY)
    done = mailbox.cleanup([ItemRef(good_item), ItemRef(forged_item)])
    assert [ref.key for ref in done.gone] == [good_item]
    assert done.refused == 1
    assert world.store.get(forged_item) is not None


@pytest.mark.parametrize(("cleanup", "left"), [
    ("move_to_deleted_items", "deleteditems"), ("soft_delete", None), ("hard_delete", None), ("keep", "inbox"),
])
def test_each_cleanup_type(world: World, cleanup: Cleanup, left: str | None):
    """Cleanup deletes the configured way: moved to Deleted Items, soft or hard deleted, or kept."""
    box = world.mailbox(cleanup=cleanup)
    try:
        probe_id, item_id = world.deliver()
        (sighting,) = _search(box, [probe_id]).sightings
        done = box.cleanup([sighting.item])
        assert done.ok
        assert done.gone == (() if cleanup == "keep" else (sighting.item,))
        assert sighting.item.key == item_id
        folders = [i.folder for i in world.store.items(ADDRESS, ["inbox", "junkemail", "deleteditems"])]
        assert folders == ([] if left is None else [left])
    finally:
        box.close()


def test_a_busy_server_is_retried_after_its_back_off(world: World, mailbox: EwsMailbox):
    """ErrorServerBusy is retried after BackOffMilliseconds, and the search then succeeds."""
    probe_id, _ = world.deliver()
    world.fault("server_busy", back_off_ms=300)

    def lift_after_first_try() -> None:
        while world.stats.ews_requests("FindItem") < 1:
            time.sleep(0.01)
        world.faults.clear()

    lifter = threading.Thread(target=lift_after_first_try, daemon=True)
    lifter.start()
    result = _search(mailbox, [probe_id])
    lifter.join(5)
    assert result.ok, result.error
    assert [s.probe_id for s in result.sightings] == [probe_id]
    assert world.stats.ews_requests("FindItem") == 2


def test_a_server_busy_for_good_gives_up_after_a_few_tries(world: World, mailbox: EwsMailbox):
    """A server that stays busy is tried a bounded number of times, then reported throttled."""
    world.fault("server_busy", back_off_ms=50)
    result = _search(mailbox, ["p1"])
    assert not result.ok
    assert result.error_reason is MailboxReason.THROTTLED
    assert world.stats.ews_requests("FindItem") == 3


def test_a_wrong_password_is_unauthorized_at_once(world: World):
    """A wrong password fails the search as unauthorized after one try, never retried for an hour."""
    box = world.mailbox(password="wrong-Pa55word-xyz")
    try:
        result = _search(box, ["p1"])
    finally:
        box.close()
    assert not result.ok
    assert result.error_reason is MailboxReason.UNAUTHORIZED
    assert result.error is not None
    assert "wrong-Pa55word-xyz" not in result.error


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_both_auth_types_search(world: World, auth: EwsAuth):
    """Basic and NTLM authentication both reach the mailbox."""
    probe_id, _ = world.deliver()
    box = world.mailbox(auth=auth)
    try:
        result = _search(box, [probe_id])
    finally:
        box.close()
    assert result.ok, result.error
    assert [s.probe_id for s in result.sightings] == [probe_id]


def test_ntlm_with_a_wrong_password_is_unauthorized(world: World):
    """A failed NTLM handshake is reported unauthorized."""
    box = world.mailbox(auth="ntlm", password="wrong-Pa55word-xyz")
    try:
        result = _search(box, ["p1"])
    finally:
        box.close()
    assert result.error_reason is MailboxReason.UNAUTHORIZED


@pytest.mark.parametrize(("kind", "params", "reason"), [
    ("unauthorized", {}, MailboxReason.UNAUTHORIZED),
    ("server_error", {}, MailboxReason.SERVER_ERROR),
    ("unreachable", {}, MailboxReason.UNREACHABLE),
    ("slow", {"seconds": 3.0}, MailboxReason.TIMEOUT),
])
def test_lab_faults_are_classified(world: World, kind: str, params: dict[str, float], reason: MailboxReason):
    """Each EWS fault of the lab fails the search with its reason, without raising."""
    world.fault(kind, **params)
    box = world.mailbox(timeout=0.5)
    try:
        result = _search(box, ["p1"])
    finally:
        box.close()
    assert not result.ok
    assert result.error_reason is reason, result.error


def test_a_closed_port_is_unreachable(world: World):
    """Nothing listening is reported unreachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    box = world.mailbox(url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx")
    try:
        result = _search(box, ["p1"])
    finally:
        box.close()
    assert result.error_reason is MailboxReason.UNREACHABLE


def test_a_certificate_from_another_ca_is_refused(world: World, tmp_path: Path):
    """Verification is on: a server certificate the configured CA did not sign fails as tls."""
    other = LabCA(tmp_path / "other", common_name="someone else")
    box = world.mailbox(ca_file=other.ca_file)
    try:
        result = _search(box, ["p1"])
    finally:
        box.close()
    assert result.error_reason is MailboxReason.TLS


def test_the_password_never_appears_in_logs_or_errors(world: World, caplog: pytest.LogCaptureFixture):
    """Neither the right nor a wrong password shows up in any log line or error, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    probe_id, _ = world.deliver()
    right = world.mailbox(auth="ntlm")
    wrong = world.mailbox(password="wrong-Pa55word-xyz")
    try:
        results = [_search(right, [probe_id]), _search(wrong, ["p1"])]
        world.fault("server_error")
        results.append(_search(right, [probe_id]))
    finally:
        right.close()
        wrong.close()
    texts = [caplog.text, *(r.error or "" for r in results)]
    assert results[0].ok
    assert not results[2].ok
    for text in texts:
        assert PASSWORD not in text
        assert "wrong-Pa55word-xyz" not in text


def test_new_mail_is_pushed_to_the_watcher(world: World, mailbox: EwsMailbox):
    """A streaming subscription calls back when a message arrives."""
    heard = threading.Event()
    times: list[float] = []

    def on_new_mail(at: float) -> None:
        times.append(at)
        heard.set()

    watch = mailbox.watch(on_new_mail)
    try:
        for _ in range(500):
            if watch.connected:
                break
            time.sleep(0.01)
        assert watch.connected, watch.last_error
        delivered_at = time.time()
        world.deliver()
        assert heard.wait(10), watch.last_error
    finally:
        watch.stop()
    assert times[0] >= delivered_at


@pytest.mark.parametrize(("text", "expected", "precise"), [
    ("2026-11-28T09:00:01.123Z", datetime(2026, 11, 28, 9, 0, 1, 123000, tzinfo=UTC), True),
    ("2026-11-28T09:00:01Z", datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC), False),
    ("2026-11-28T10:00:01.1234567+01:00", datetime(2026, 11, 28, 9, 0, 1, 123456, tzinfo=UTC), True),
    ("2026-11-28T09:00:01", datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC), False),
])
def test_receipt_stamps_parse_with_and_without_milliseconds(text: str, expected: datetime, precise: bool):
    """Fractional-second and whole-second EWS stamps both parse to UTC."""
    assert parse_ews_datetime(text) == (expected, precise)


@pytest.mark.parametrize("text", [None, "", "yesterday", "2026-13-45T99:00:00Z"])
def test_unreadable_stamps_are_none(text: str | None):
    """An unreadable stamp is None, not an exception."""
    assert parse_ews_datetime(text) is None


def test_ews_mailbox_is_a_mailbox(mailbox: EwsMailbox):
    """EwsMailbox satisfies the mailbox interface the pipeline depends on."""
    box: Mailbox = mailbox
    assert box.search([], since=time.time()).ok


# -- delivery status reports: handed over raw, in the same FindItem and GetItem as the probes ---------------------

REPORT_SENDER = "mailflow.probe@contoso.com"


def _report(probe_key: bytes = KEY, *, delayed: bool = False) -> tuple[str, bytes]:
    """Return a probe id and an Exchange NDR (or delay notification) of its message, as if sent from this mailbox."""
    original = build_probe_message(key=probe_key, route="fourthcoffee-to-contoso", smart_host="co-edge-1",
                                   sender=ADDRESS, recipient=REPORT_SENDER)
    now = datetime.now(UTC)
    notice = Notice(status="4.4.7" if delayed else "5.1.1", recipient=REPORT_SENDER, sender=ADDRESS,
                    postmaster="postmaster@contoso.com", reporting_mta="CO-MBX-1.contoso.com", arrival=now, when=now)
    build = delay_notification if delayed else non_delivery_report
    return original.probe_id, build(original.raw, notice)


def test_probes_and_reports_come_from_one_find_item_and_one_get_item(world: World) -> None:
    """A probe sent here and the NDR and delay notification of two probes bouncing here: one FindItem, one GetItem;
    the reports come back raw (MIME content) for probe.dsn, the probe as a sighting."""
    probe_id, _ = world.deliver()
    bounced, ndr = _report()
    delayed, notice = _report(delayed=True)
    for raw in (ndr, notice):
        world.store.deliver(ADDRESS, raw)
    box = world.mailbox()
    try:
        result = box.search([probe_id], since=time.time() - 60, reports_for=[bounced, delayed])
    finally:
        box.close()
    assert result.ok, result.error
    assert [s.probe_id for s in result.sightings] == [probe_id]
    assert sorted(r.probe_id for r in result.reports) == sorted([bounced, delayed])
    assert (world.stats.ews_requests("FindItem"), world.stats.ews_requests("GetItem")) == (1, 1)
    actions = {r.probe_id: read_report(r.raw, key=KEY).report for r in result.reports}
    assert {p: (a.action if a else None) for p, a in actions.items()} == {
        bounced: DsnAction.FAILED, delayed: DsnAction.DELAYED}
    report = next(r for r in result.reports if r.probe_id == bounced)
    assert abs(report.received_local - time.time()) < 30


def test_a_report_is_neither_a_probe_nor_wanted_unless_asked_for(world: World, mailbox: EwsMailbox) -> None:
    """An NDR is never taken for the probe it names, and a search that asks for no reports returns none."""
    bounced, ndr = _report()
    world.store.deliver(ADDRESS, ndr)
    result = mailbox.search([bounced], since=time.time() - 60)
    assert (result.sightings, result.reports) == ([], [])
    assert world.stats.ews_requests("GetItem") == 0


def test_a_report_whose_subject_tag_is_forged_is_counted_and_not_fetched(world: World, mailbox: EwsMailbox) -> None:
    """A report under another key's tag is forged: counted, never fetched, never handed over."""
    bounced, ndr = _report(OTHER_KEY)
    world.store.deliver(ADDRESS, ndr)
    result = mailbox.search([], since=time.time() - 60, reports_for=[bounced])
    assert (result.reports, result.forged) == ([], 1)
    assert world.stats.ews_requests("GetItem") == 0


def test_verified_reports_are_cleaned_up_without_another_read(world: World, mailbox: EwsMailbox) -> None:
    """A report this mailbox handed over (its subject's tag verified) is deleted the configured way when asked."""
    bounced, ndr = _report()
    item = world.store.deliver(ADDRESS, ndr)
    [report] = mailbox.search([], since=time.time() - 60, reports_for=[bounced]).reports
    gets = world.stats.ews_requests("GetItem")
    cleaned = mailbox.cleanup([report.item])
    assert (cleaned.ok, cleaned.deleted) == (True, 1)
    assert world.stats.ews_requests("GetItem") == gets
    moved = world.store.items(ADDRESS, ["deleteditems"])
    assert [i.message_id for i in moved] == [item.message_id]
