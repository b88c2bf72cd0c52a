"""``mailflow-probe check`` against the lab: one probe per smart host, the right verdict for every fault."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.check import CheckOptions, run_check
from probe.cli import main as cli_main
from probe.config import Config, load_config
from probe.ledger import Decision
from probe.message import build_probe_message
from probe.vocabulary import Verdict

ROUTE = "contoso-to-fourthcoffee"
EDGE_1 = "fourthcoffee-edge-1"
EDGE_2 = "fourthcoffee-edge-2"
MAILBOX = "mailflow.probe@fourthcoffee.test"


pytestmark = pytest.mark.usefixtures("fresh_exchangelib")  # a new connection pool per test


def write_config(lab: Any, tmp_path: Path, *, timeout: float = 10.0, smtp_timeout: float | None = None,
                 routes: list[str] | None = None, name: str = "probe.yaml") -> Path:
    """Write a config for the lab, with the smart hosts' network timeout changed where asked."""
    path: Path = lab.write_probe_config(tmp_path / name, interval=60, timeout=timeout, jitter=1, routes=routes)
    if smtp_timeout is not None:
        data = yaml.safe_load(path.read_text())
        for route in data["routes"]:
            for host in route["smart_hosts"]:
                host["timeout"] = f"{int(smtp_timeout * 1000)}ms"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check(config: Config, **options: Any) -> dict[str, Decision]:
    outcome = run_check(config, CheckOptions(poll_seconds=0.25, **options))
    return {d.smart_host: d for d in outcome.decisions}


def one_route(lab: Any, tmp_path: Path, **kwargs: Any) -> Config:
    return load_config(write_config(lab, tmp_path, routes=[ROUTE], **kwargs))


def test_check_on_the_labs_own_config_delivers_through_every_smart_host(lab: Any) -> None:
    """The lab's ready probe.yaml: every smart host of both directions delivered, and beside them one connector
    row per route (verdict, latency, and the smart host the Send connector chose); exit 0, no diagnosis."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["check", "--config.file", str(lab.config_path), "--timeout", "20s"])
    table = out.getvalue()
    assert code == 0, table
    lines = table.splitlines()
    assert lines[0].split() == ["ROUTE", "SMART", "HOST", "VERDICT", "LATENCY", "CARRIED", "BY", "STAGE/REASON",
                                "SMTP", "REPLY"]
    hosts = [h.name for h in lab.smart_hosts]
    for name in hosts:
        assert any(name in line and "delivered" in line for line in lines), table
    for route, first in ((ROUTE, EDGE_1), ("fourthcoffee-to-contoso", "contoso-edge-1")):
        (row,) = [line.split() for line in lines if line.startswith(f"{route} ") and "@connector" in line]
        assert row[2:3] == ["delivered"]
        assert row[3].endswith("s")  # its latency
        assert row[4] == first  # carried by the connector's first smart host
    assert f"{len(hosts) + 2} probes: {len(hosts) + 2} delivered" in table
    assert "diagnosis" not in table


def test_json_output_has_the_contract_fields(lab: Any, tmp_path: Path) -> None:
    """--format json: a list of objects with route, smart_host, verdict, stage, reason, smtp_code, latency, id."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["check", "-c", str(write_config(lab, tmp_path, routes=[ROUTE])), "--format", "json"])
    items = json.loads(out.getvalue())
    assert code == 0
    assert {i["smart_host"] for i in items} == {EDGE_1, EDGE_2}
    for item in items:
        assert {"route", "smart_host", "verdict", "stage", "reason", "smtp_code", "latency_seconds",
                "message_id"} <= set(item)
        assert item["verdict"] == "delivered"
        assert item["smtp_code"] == 250
        assert item["latency_seconds"] >= 0


@pytest.mark.parametrize(
    ("fault", "stage", "reason", "code"),
    [
        ({"kind": "no_starttls"}, "starttls", "tls_unavailable", None),
        ({"kind": "untrusted_cert"}, "starttls", "tls_certificate", None),
        ({"kind": "expired_cert"}, "starttls", "tls_certificate", None),
        ({"kind": "auth_reject"}, "auth", "auth_failed", 535),
        ({"kind": "tempfail", "stage": "rcpt", "code": 451}, "rcpt", "tempfail", 451),
        ({"kind": "reject", "stage": "data", "code": 554}, "data", "rejected", 554),
        ({"kind": "refuse_connections"}, "connect", "refused", None),
        ({"kind": "slow", "stage": "data", "seconds": 3}, "data", "timeout", None),
    ],
    ids=lambda v: v["kind"] if isinstance(v, dict) else None,
)
def test_a_smart_host_fault_gives_its_verdict_and_the_other_smart_host_still_delivers(
        lab: Any, tmp_path: Path, fault: dict[str, Any], stage: str, reason: str, code: int | None) -> None:
    """Each smart-host fault: send_failed with DESIGN.md's stage and reason; the route's other host delivers."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", **fault)
    result = check(one_route(lab, tmp_path, smtp_timeout=1.5))
    failed, other = result[EDGE_1], result[EDGE_2]
    assert (failed.verdict, failed.stage, failed.reason) == (Verdict.SEND_FAILED, stage, reason)
    if code is not None:
        assert failed.smtp_code == code
    assert other.verdict is Verdict.DELIVERED


def test_a_host_without_starttls_is_never_sent_credentials(lab: Any, tmp_path: Path) -> None:
    """no_starttls: send_failed at starttls, and the lab saw no AUTH command at all from the probe."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="no_starttls")
    result = check(one_route(lab, tmp_path))
    assert result[EDGE_1].reason == "tls_unavailable"
    assert lab.stats.smarthost(EDGE_1, "auth_attempts") == 0
    assert lab.stats.smarthost(EDGE_2, "auth_attempts") >= 1


def test_a_dropped_message_is_lost(lab: Any, tmp_path: Path) -> None:
    """drop: accepted with 250, never delivered, the mailbox searched after the deadline: lost."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="drop")
    result = check(one_route(lab, tmp_path, timeout=2.0))
    assert result[EDGE_1].verdict is Verdict.LOST
    assert result[EDGE_2].verdict is Verdict.DELIVERED


def test_a_message_filed_as_junk_is_delivered(lab: Any, tmp_path: Path) -> None:
    """to_junk: found in Junk Email by the same search, delivered."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="to_junk")
    result = check(one_route(lab, tmp_path))
    assert result[EDGE_1].verdict is Verdict.DELIVERED
    assert result[EDGE_2].verdict is Verdict.DELIVERED


def test_a_duplicated_message_counts_once(lab: Any, tmp_path: Path) -> None:
    """duplicate: two copies land; one verdict, and both copies are cleaned up."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="duplicate")
    config = one_route(lab, tmp_path)
    outcome = run_check(config, CheckOptions(poll_seconds=0.25))
    assert [d.verdict for d in outcome.decisions if d.smart_host == EDGE_1] == [Verdict.DELIVERED]
    assert lab.store.count(MAILBOX) == 0 or all(
        i.folder == "deleteditems" for i in lab.store.items(MAILBOX, ["deleteditems"]))
    assert lab.store.items(MAILBOX, ["inbox", "junkemail"]) == []


@pytest.mark.parametrize("kind", ["unauthorized", "unreachable"])
def test_a_mailbox_unobservable_for_the_whole_window_gives_unknown_never_lost(lab: Any, tmp_path: Path,
                                                                               kind: str) -> None:
    """EWS unauthorized or unreachable throughout: every accepted probe is unknown, exit code 3."""
    lab.add_fault(target="ews/fourthcoffee", kind=kind)
    path = write_config(lab, tmp_path, routes=[ROUTE], timeout=2.0)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["check", "-c", str(path), "--format", "json"])
    verdicts = {i["smart_host"]: i["verdict"] for i in json.loads(out.getvalue())}
    assert verdicts == {EDGE_1: "unknown", EDGE_2: "unknown"}
    assert code == 3


def test_a_busy_mailbox_is_retried_and_the_probes_delivered(lab: Any, tmp_path: Path) -> None:
    """server_busy with a short back-off: the search retries as told and both probes are delivered."""
    lab.add_fault(target="ews/fourthcoffee", kind="server_busy", back_off_ms=100)
    config = one_route(lab, tmp_path, timeout=6.0)
    clear_at = time.monotonic() + 1.0

    def clear_soon() -> None:
        while time.monotonic() < clear_at:
            time.sleep(0.05)
        lab.clear_faults("ews/fourthcoffee")

    import threading
    threading.Thread(target=clear_soon, daemon=True).start()
    result = check(config)
    assert {d.verdict for d in result.values()} == {Verdict.DELIVERED}
    assert lab.stats.ews_requests(forest="fourthcoffee") > 2


def test_one_search_per_mailbox_per_poll_covers_twenty_probes(lab: Any, tmp_path: Path) -> None:
    """20 probes in flight to one mailbox: the lab sees one FindItem per poll, not one per probe."""
    path = write_config(lab, tmp_path, routes=[ROUTE])
    data = yaml.safe_load(path.read_text())
    template = data["routes"][0]["smart_hosts"][0]
    data["routes"][0]["smart_hosts"] = [{**template, "name": f"edge-{i:02d}"} for i in range(20)]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lab.stats.reset()
    outcome = run_check(load_config(path), CheckOptions(poll_seconds=0.5))
    assert len(outcome.decisions) == 20
    assert {d.verdict for d in outcome.decisions} == {Verdict.DELIVERED}
    find_items = lab.stats.ews_requests("FindItem", forest="fourthcoffee")
    get_items = lab.stats.ews_requests("GetItem", forest="fourthcoffee")
    assert 1 <= find_items <= 4, find_items  # one per poll; the probes arrive within a poll or two
    assert get_items <= find_items + 2  # one GetItem per search that matched, plus cleanup's own reads


def test_a_forged_probe_is_neither_counted_nor_deleted_and_foreign_mail_is_left_alone(lab: Any,
                                                                                     tmp_path: Path) -> None:
    """A message with a probe's shape but the wrong HMAC, and an ordinary message, survive every cleanup."""
    forged = build_probe_message(key=b"k" * 32, route=ROUTE, smart_host=EDGE_1,
                                 sender="mailflow.probe@contoso.test", recipient=MAILBOX)
    foreign = (b"From: someone@fourthcoffee.test\r\nTo: " + MAILBOX.encode() + b"\r\nSubject: lunch MFP-?\r\n"
               b"Message-ID: <lunch@fourthcoffee.test>\r\n\r\nSandwiches.\r\n")
    lab.store.deliver(MAILBOX, forged.raw)
    lab.store.deliver(MAILBOX, foreign)
    outcome = run_check(one_route(lab, tmp_path), CheckOptions(poll_seconds=0.25))
    assert {d.verdict for d in outcome.decisions} == {Verdict.DELIVERED}
    assert len(outcome.decisions) == 2
    left = {i.message_id for i in lab.store.items(MAILBOX, ["inbox", "junkemail"])}
    assert left == {forged.message_id, "<lunch@fourthcoffee.test>"}


def test_delay_beyond_the_timeout_is_lost_then_late_when_it_lands(lab: Any, tmp_path: Path) -> None:
    """delay_delivery past the timeout: lost at the deadline (its mailbox and its bounces mailbox searched since);
    the same probe found later is late."""
    from probe.ledger import Ledger
    from probe.mailbox.ews import EwsMailbox
    from probe.pipeline import NullObserver, confirm, expire, send_probe, targets
    from probe.signing import load_or_create_key

    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="delay_delivery", seconds=3)
    config = one_route(lab, tmp_path, timeout=1.0)
    key = load_or_create_key(config.signing_key_file)
    ledger = Ledger(":memory:")
    target = next(t for t in targets(config) if t.via == EDGE_1)
    assert target.bounces is not None
    mailbox = EwsMailbox(config.mailboxes[target.mailbox.name], key=key)
    bounces = EwsMailbox(config.mailboxes[target.bounces], key=key)
    try:
        assert send_probe(target, key=key, ledger=ledger, observer=NullObserver()) is None
        time.sleep(1.1)
        confirm(target.mailbox.name, mailbox, key=key, ledger=ledger, observer=NullObserver(), late_window=60)
        assert expire(ledger, observer=NullObserver(), unknown_after=60) == []  # NDRs not looked for yet
        confirm(target.bounces, bounces, key=key, ledger=ledger, observer=NullObserver(), late_window=60)
        assert [d.verdict for d in expire(ledger, observer=NullObserver(), unknown_after=60)] == [Verdict.LOST]
        time.sleep(2.5)
        late = confirm(target.mailbox.name, mailbox, key=key, ledger=ledger, observer=NullObserver(), late_window=60)
    finally:
        mailbox.close()
        bounces.close()
    assert [d.verdict for d in late] == [Verdict.LATE]
    assert late[0].latency is not None
    assert late[0].latency == pytest.approx(3.0, abs=0.5)


def test_usage_and_config_errors_exit_2_without_a_traceback(lab: Any, tmp_path: Path) -> None:
    """An unknown route, a bad --timeout, a missing file, an unusable signing key: exit 2 and one clear line."""
    path = str(write_config(lab, tmp_path))
    empty_key = write_config(lab, tmp_path, name="empty-key.yaml")
    data = yaml.safe_load(empty_key.read_text())
    data["signing_key_file"] = str(tmp_path / "empty.key")
    (tmp_path / "empty.key").write_bytes(b"")
    empty_key.write_text(yaml.safe_dump(data))
    cases = [
        ["check", "-c", path, "--route", "no-such-route"],
        ["check", "-c", path, "--timeout", "soon"],
        ["check", "-c", str(tmp_path / "missing.yaml")],
        ["check", "-c", str(empty_key)],
    ]
    for argv in cases:
        proc = subprocess.run([sys.executable, "-m", "probe", *argv], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip(), argv


def test_nagios_format_reports_critical_with_perfdata(lab: Any, tmp_path: Path) -> None:
    """--format nagios: one line, CRITICAL (2) when a smart host fails, latency perfdata for the one that works."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="auth_reject")
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(["check", "-c", str(write_config(lab, tmp_path, routes=[ROUTE])), "--format", "nagios"])
    line = out.getvalue()
    assert code == 2
    assert line.startswith("MAILFLOW CRITICAL - ")
    assert f"'{ROUTE}/{EDGE_2}'=" in line
    assert "auth/auth_failed" in line


@pytest.mark.slow
def test_no_password_appears_in_any_output_of_a_check(lab: Any, tmp_path: Path) -> None:
    """Table, JSON, nagios and --debug (with transcripts) output of a check hold none of the lab's passwords."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="auth_reject")
    path = write_config(lab, tmp_path, routes=[ROUTE])
    outputs = []
    for fmt in ("text", "json", "nagios"):
        proc = subprocess.run([sys.executable, "-m", "probe", "check", "-c", str(path), "--format", fmt, "--debug"],
                              capture_output=True, text=True, timeout=120, check=False)
        outputs.append(proc.stdout + proc.stderr)
    everything = "\n".join(outputs)
    assert "C: AUTH" in everything  # the debug transcript is there...
    for secret in lab_passwords(lab):
        assert secret not in everything  # ...without a single password


def lab_passwords(lab: Any) -> list[str]:
    described = json.loads(Path(lab.json_path).read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if "password" in key and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(described)
    assert found
    return found


def test_latency_under_a_two_second_delay_is_reported_within_a_quarter_second(lab: Any, tmp_path: Path) -> None:
    """delay_delivery 2 s: the reported latency is 2 s to within 0.25 s (the lab's own record agrees)."""
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="delay_delivery", seconds=2)
    result = check(one_route(lab, tmp_path))
    latency = result[EDGE_1].latency
    assert latency is not None
    assert latency == pytest.approx(2.0, abs=0.25)
    record = next(r for r in lab.store.records() if r.message_id == result[EDGE_1].message_id)
    assert record.accepted_at is not None
    assert latency == pytest.approx(record.delivered_at - record.accepted_at, abs=0.25)


@pytest.mark.parametrize("offset", [30, -30])
def test_latency_stays_true_when_the_mailbox_servers_clock_is_off(lab: Any, tmp_path: Path, offset: int) -> None:
    """EWS clock_offset of +-30 s: the measured offset corrects the receipt time; latency within 1 s of 2 s."""
    lab.add_fault(target="ews/fourthcoffee", kind="clock_offset", seconds=offset)
    lab.add_fault(target=f"smarthost/{EDGE_1}", kind="delay_delivery", seconds=2)
    result = check(one_route(lab, tmp_path))
    assert result[EDGE_1].verdict is Verdict.DELIVERED
    assert result[EDGE_1].latency == pytest.approx(2.0, abs=1.0)
    assert result[EDGE_2].latency == pytest.approx(0.0, abs=1.0)
