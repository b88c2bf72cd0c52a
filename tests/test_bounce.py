"""The ``bounced`` verdict end to end: the lab's Exchange NDRs through ``check`` and the daemon (DESIGN.md).

One smart host of the route contoso -> fourthcoffee bounces (status 5.1.1, 5.7.1, 5.4.1, 5.3.4 in turn) while
its sibling delivers; the NDR comes back to the route's sender, Contoso's probe mailbox, which the probe reads
in the same search as the probes sent to it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from probe.check import CheckOptions, run_check
from probe.config import Config, load_config
from probe.lab import Lab
from probe.lab.ndr import Notice, non_delivery_report
from probe.ledger import Ledger
from probe.message import build_probe_message, make_tag
from probe.signing import load_or_create_key
from tests.daemon_harness import EVENT_WAIT, Samples, fetch, running_daemon, scrape, value, wait_for
from tests.test_metrics import samples as metric_samples

ROUTE: Final = "contoso-to-fourthcoffee"
BOUNCING: Final = "fourthcoffee-edge-1"
SIBLING: Final = "fourthcoffee-edge-2"
SENDER_BOX: Final = "mailflow.probe@contoso.test"
NDR_SECONDS: Final = 1.0
CASES: Final = (("5.1.1", "recipient"), ("5.7.1", "policy"), ("5.4.1", "routing"), ("5.3.4", "size"))

pytestmark = pytest.mark.usefixtures("fresh_exchangelib")


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.start(tmp_path_factory.mktemp("bounce"), tarpit_seconds=0.5) as started:
        yield started


@pytest.fixture
def lab(module_lab: Lab) -> Iterator[Lab]:
    module_lab.clear_faults()
    yield module_lab
    module_lab.clear_faults()


def config_at(lab: Lab, path: Path, *, interval: float, timeout: float) -> Path:
    """Write a probe config of the one route; its sender's mailbox (Contoso's) is its bounces mailbox."""
    lab.write_probe_config(path, interval=interval, timeout=timeout, jitter=0, poll_interval=0.5, routes=[ROUTE])
    text = path.read_text().replace(str(lab.state_dir / "state.db"), str(path.with_suffix(".db")))
    path.write_text(text)
    return path


def bounce(lab: Lab, status: str, seconds: float = NDR_SECONDS) -> None:
    lab.add_fault(target=f"smarthost/{BOUNCING}", kind="bounce", status=status, seconds=seconds)


def in_folders(lab: Lab, address: str, folders: tuple[str, ...]) -> list[str]:
    return [item.subject for item in lab.store.items(address, list(folders))]


@pytest.mark.parametrize(("status", "reason"), CASES, ids=[c[0] for c in CASES])
def test_check_says_bounced_with_code_reason_mta_and_diagnostic_while_the_sibling_delivers(
        lab: Lab, tmp_path: Path, status: str, reason: str) -> None:
    """check: the bouncing host's probe is bounced with the NDR's status and reason class, reporting MTA and
    diagnostic, as soon as the NDR is in (long before the timeout); the sibling's is delivered; the NDR is cleaned
    up from the sender's mailbox like a probe."""
    config = load_config(config_at(lab, tmp_path / "probe.yaml", interval=60, timeout=30))
    bounce(lab, status)
    started = time.monotonic()
    outcome = run_check(config, CheckOptions(poll_seconds=0.3))
    elapsed = time.monotonic() - started
    by_host = {d.smart_host: d for d in outcome.decisions}
    bounced, sibling = by_host[BOUNCING], by_host[SIBLING]
    assert (str(bounced.verdict), bounced.reason, bounced.status_code) == ("bounced", reason, status)
    assert bounced.reporting_mta in ("FOURTHCOFFEE-MBX-1.fourthcoffee.test", f"{BOUNCING}.fourthcoffee.test")
    assert bounced.diagnostic is not None
    assert f" {status} " in bounced.diagnostic
    assert str(sibling.verdict) == "delivered"
    assert elapsed < 30  # it did not wait for the deadline
    assert not [s for s in in_folders(lab, SENDER_BOX, ("inbox", "junkemail")) if s.startswith("Undeliverable")]
    assert [s for s in in_folders(lab, SENDER_BOX, ("deleteditems",)) if s.startswith("Undeliverable")]


def test_check_json_and_debug_carry_the_bounce_and_how_to_track_it(lab: Lab, tmp_path: Path) -> None:
    """check --format json --debug exits 1, adds status_code, reporting_mta and diagnostic, and shows the smart
    host's queue id, the Message-ID and the Get-MessageTrackingLog command with the server its 250 named."""
    path = config_at(lab, tmp_path / "probe.yaml", interval=60, timeout=30)
    bounce(lab, "5.1.1")
    proc = subprocess.run([sys.executable, "-m", "probe", "check", "--config.file", str(path), "--format", "json",
                           "--debug"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    items = {item["smart_host"]: item for item in json.loads(proc.stdout)}
    item = items[BOUNCING]
    assert (item["verdict"], item["reason"], item["status_code"]) == ("bounced", "recipient", "5.1.1")
    assert item["reporting_mta"] == "FOURTHCOFFEE-MBX-1.fourthcoffee.test"
    assert item["diagnostic"] == "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
    assert items[SIBLING]["status_code"] is None
    tracking = item["debug"]["tracking"]
    assert tracking["mta"] == "exchange"
    assert tracking["queue_id"] == item["debug"]["queue_id"]
    assert tracking["queue_id"].isdigit()
    assert tracking["server"] == f"{BOUNCING}.fourthcoffee.test"
    [command] = tracking["commands"]
    assert command.startswith(f"Get-MessageTrackingLog -MessageId '{item['message_id']}' -Start '")
    assert command.endswith(f"' -Server '{BOUNCING}.fourthcoffee.test'")
    assert item["debug"]["bounce"]["status"] == "5.1.1"


def test_the_daemon_says_bounced_for_each_status_and_never_lost_and_the_sibling_stays_delivered(
        lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon, one bounce status after the other on one smart host: each probe bounced with its code and reason
    (bounced_total{reason} moves, success 0, never lost: the NDR wins over the later deadline), logged at warn;
    the sibling stays delivered (success 1)."""
    path = config_at(lab, tmp_path / "probe.yaml", interval=2, timeout=15)
    caplog.set_level(logging.WARNING, logger="probe.daemon")
    with running_daemon(path) as (daemon, server):
        for status, reason in CASES:
            bounce(lab, status, seconds=0.5)
            wait_for(lambda s=status: any(  # type: ignore[misc]
                row["state"] == "bounced" and row["detail"]["bounce"]["status"] == s
                for row in daemon.ledger.history(ROUTE, BOUNCING, limit=50)), timeout=40,
                what=f"a probe bounced with {status}")
            samples = scrape(server.port)
            assert value(samples, "mailflow_probe_bounced_total", route=ROUTE, smart_host=BOUNCING,
                         reason=reason) >= 1, reason
        lab.clear_faults()
        samples = scrape(server.port)
    assert value(samples, "mailflow_probe_lost_total", route=ROUTE, smart_host=BOUNCING) == 0
    assert value(samples, "mailflow_probe_delivered_total", route=ROUTE, smart_host=SIBLING) >= 3
    assert value(samples, "mailflow_probe_success", route=ROUTE, smart_host=SIBLING) == 1
    assert sum(value(samples, "mailflow_probe_bounced_total", route=ROUTE, smart_host=SIBLING, reason=r)
               for _, r in CASES) == 0
    lines = [r for r in caplog.records if getattr(r, "verdict", None) == "bounced"]
    assert lines
    assert {getattr(r, "status_code", None) for r in lines} >= {s for s, _ in CASES}
    assert all(r.levelno == logging.WARNING and getattr(r, "reporting_mta", None) for r in lines)


def test_an_ndr_after_the_timeout_is_lost_then_bounced_counted_once_each(
        lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An NDR that comes back after the deadline: the probe is lost (counted once), then bounced (counted once);
    lost_total and bounced_total match the ledger's probes exactly.

    A probe is lost only once a search that started after its deadline worked, else unknown 1.5 s later: the
    bounces mailbox's first search (a cold EWS connection) took longer than that under load, and that probe read
    unknown, then bounced. The test waits for the event it is about (two probes logged lost, then bounced) and
    counts unknown ones as what they are.
    """
    path = config_at(lab, tmp_path / "probe.yaml", interval=3, timeout=1.5)
    config = load_config(path)
    caplog.set_level(logging.INFO, logger="probe.daemon")
    bounce(lab, "5.4.1", seconds=4.0)
    with running_daemon(path) as (daemon, _server):
        wait_for(lambda: len(logged(caplog, "lost") & {r["probe_id"] for r in daemon.ledger.history(
            ROUTE, BOUNCING, limit=50) if r["state"] == "bounced"}) >= 2, timeout=EVENT_WAIT,
            what="two probes lost, then bounced")
        lab.clear_faults()
    final = metric_samples(daemon.metrics)  # the daemon stopped: nothing moves any more
    lost_total = value(final, "mailflow_probe_lost_total", route=ROUTE, smart_host=BOUNCING)
    unknown_total = value(final, "mailflow_probe_unknown_total", route=ROUTE, smart_host=BOUNCING)
    bounced_total = value(final, "mailflow_probe_bounced_total", route=ROUTE, smart_host=BOUNCING, reason="routing")
    ledger = Ledger(config.state_file)
    try:
        rows = ledger.history(ROUTE, BOUNCING, limit=100)
    finally:
        ledger.close()
    lost, unknown = logged(caplog, "lost"), logged(caplog, "unknown")
    bounced = [r for r in rows if r["state"] == "bounced"]
    lost_first = [r for r in bounced if r["probe_id"] in lost]
    still_lost = [r for r in rows if r["state"] == "lost"]
    assert len(lost_first) >= 2
    assert all(r["detail"]["bounce"]["decided_at"] > r["decided_at"] for r in bounced)  # each NDR after its deadline
    assert {r["probe_id"] for r in bounced} <= lost | unknown  # each was decided at its deadline first
    assert not lost & unknown
    assert lost_total == len(lost_first) + len(still_lost) == len(lost)
    assert unknown_total == len(unknown)
    assert bounced_total == len(bounced)


def logged(caplog: pytest.LogCaptureFixture, verdict: str) -> set[str]:
    """Return the probe ids the daemon logged with ``verdict``."""
    return {str(getattr(r, "probe_id", "")) for r in caplog.records if getattr(r, "verdict", None) == verdict}


def test_forged_ndrs_change_nothing_and_are_never_deleted(lab: Lab, tmp_path: Path) -> None:
    """NDRs in the sender's mailbox that name a probe in flight without a verifying returned tag, that are signed
    under another key, or that carry no tag: the probe stays lost (its smart host drops it), nothing bounces, each
    forged one is counted in forged_tags_total, and none is ever deleted."""
    forged, samples, row = run_with_forged_ndrs(lab, tmp_path / "probe.yaml")
    assert row["state"] == "lost"
    assert "bounce" not in row["detail"]
    left = {item.message_id for item in lab.store.items(SENDER_BOX, ["inbox", "junkemail"])}
    assert forged <= left
    assert value(samples, "mailflow_probe_forged_tags_total", mailbox="contoso") >= 2
    assert sum(value(samples, "mailflow_probe_bounced_total", route=ROUTE, smart_host=BOUNCING, reason=r)
               for _, r in CASES) == 0


def run_with_forged_ndrs(lab: Lab, path: Path) -> tuple[set[str], Samples, dict[str, Any]]:
    """Run the daemon (a probe every 3 s, a 4 s timeout) with the bouncing host dropping its probes, and forged NDRs
    naming one of them in flight (forge_ndrs); return the forged NDRs' Message-IDs, the metrics scraped 2 s after
    that probe was decided, and its ledger row."""
    path = config_at(lab, path, interval=3, timeout=4)
    config = load_config(path)
    key = load_or_create_key(config.signing_key_file)
    lab.add_fault(target=f"smarthost/{BOUNCING}", kind="drop")
    with running_daemon(path) as (daemon, server):
        wait_for(lambda: bool([p for p in daemon.ledger.open_probes("fourthcoffee") if p.smart_host == BOUNCING
                               and p.accepted_at is not None]), timeout=30, what="a dropped probe in flight")
        victim = next(p for p in daemon.ledger.open_probes("fourthcoffee") if p.smart_host == BOUNCING)
        forged = forge_ndrs(lab, config, key, victim.probe_id)
        wait_for(lambda: (daemon.ledger.probe(victim.probe_id) or {}).get("state") not in ("in_flight", None),
                 timeout=30, what="the victim decided")
        time.sleep(2.0)  # more searches and cleanups of the sender's mailbox
        samples = scrape(server.port)
    return forged, samples, daemon_probe(config, victim.probe_id)


def forge_ndrs(lab: Lab, config: Config, key: bytes, probe_id: str) -> set[str]:
    """Deliver three forged NDRs into the sender's mailbox; return their Message-IDs."""
    route = config.routes[0]
    recipient = config.recipient_of(route)
    notice = Notice(status="5.1.1", recipient=recipient, sender=route.sender, postmaster="postmaster@fourthcoffee.test",
                    reporting_mta="FOURTHCOFFEE-MBX-1.fourthcoffee.test", arrival=now(), when=now())
    elsewhere = build_probe_message(key=b"Z" * 32, route=ROUTE, smart_host=BOUNCING, sender=route.sender,
                                    recipient=recipient)
    head, blank, rest = non_delivery_report(elsewhere.raw, notice).partition(b"\r\n\r\n")
    # the report's own headers name the probe in flight; the original it returns is signed under another key
    genuine_subject = head.replace(elsewhere.tag.text.encode(), make_tag(key, probe_id).text.encode()) + blank + rest
    untagged = (f"From: <{route.sender}>\r\nTo: <{recipient}>\r\nSubject: MFP lunch\r\nMessage-ID: <l@x>\r\n\r\n"
                "hi\r\n").encode()
    ids = set()
    for raw in (genuine_subject, non_delivery_report(elsewhere.raw, notice), non_delivery_report(untagged, notice)):
        ids.add(lab.store.deliver(SENDER_BOX, raw).message_id)
    return ids


def daemon_probe(config: Config, probe_id: str) -> dict[str, Any]:
    ledger = Ledger(config.state_file)
    try:
        row = ledger.probe(probe_id)
    finally:
        ledger.close()
    assert row is not None
    return row


def now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_a_delay_notification_is_a_warning_in_check_debug_and_on_the_status_page(lab: Lab, tmp_path: Path) -> None:
    """An Exchange queue's "Delivery delayed:" notification: the probe is still delivered (exit 0), check --debug
    and the daemon's status page warn of the delay, with its status and the server that reported it."""
    path = config_at(lab, tmp_path / "probe.yaml", interval=2, timeout=15)
    lab.add_fault(target=f"smarthost/{BOUNCING}", kind="delay_delivery", seconds=3, notify_after=0.5)
    proc = subprocess.run([sys.executable, "-m", "probe", "check", "--config.file", str(path), "--debug"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = next(line for line in proc.stdout.splitlines() if "warning: delivery delayed" in line)
    assert f"(4.4.7, 1 notice(s)) reported by {BOUNCING}.fourthcoffee.test: 400 4.4.7 Message delayed" in warning
    with running_daemon(path) as (_daemon, server):
        wait_for(lambda: "delivery delayed: 4.4.7 reported by" in fetch(f"http://127.0.0.1:{server.port}/"),
                 timeout=30, what="the delay warning on the status page")
        wait_for(lambda: value(scrape(server.port), "mailflow_probe_delivered_total", route=ROUTE,
                               smart_host=BOUNCING) >= 1, timeout=30, what="the delayed probe delivered")
        samples = scrape(server.port)
    assert sum(value(samples, "mailflow_probe_bounced_total", route=ROUTE, smart_host=BOUNCING, reason=r)
               for _, r in CASES) == 0


def test_the_slowest_hop_is_exported_with_the_server_that_held_the_message(lab: Lab, tmp_path: Path) -> None:
    """A message held 2 s between the edge and the mailbox server: slowest_hop_seconds names the mailbox server
    (the hop's receiving host) with about 2 s; the sibling's slowest hop is short."""
    path = config_at(lab, tmp_path / "probe.yaml", interval=2, timeout=15)
    lab.add_fault(target=f"smarthost/{BOUNCING}", kind="delay_delivery", seconds=2)
    mailbox_server = "FOURTHCOFFEE-MBX-1.fourthcoffee.test"
    with running_daemon(path) as (_daemon, server):
        wait_for(lambda: value(scrape(server.port), "mailflow_probe_delivered_total", route=ROUTE,
                               smart_host=BOUNCING) >= 2, timeout=40, what="two delayed probes delivered")
        samples = scrape(server.port)
    held = value(samples, "mailflow_probe_slowest_hop_seconds", route=ROUTE, smart_host=BOUNCING, hop=mailbox_server)
    quick = value(samples, "mailflow_probe_slowest_hop_seconds", route=ROUTE, smart_host=SIBLING, hop=mailbox_server)
    assert 1.0 <= held <= 3.0  # Received dates are whole seconds
    assert 0.0 <= quick <= 1.0
    series = [labels for name, labels in samples if name == "mailflow_probe_slowest_hop_seconds"
              and ("smart_host", BOUNCING) in labels]
    assert series == [frozenset({("route", ROUTE), ("smart_host", BOUNCING), ("hop", mailbox_server)})]  # one
