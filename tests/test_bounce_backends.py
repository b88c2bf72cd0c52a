"""The ``bounced`` verdict over IMAP and Graph: the lab's Exchange NDRs read from a Dovecot or a Graph mailbox.

As tests/test_bounce.py does over EWS: one smart host of the route contoso -> fourthcoffee bounces while its
sibling delivers; the lab's transport (probe/lab/ndr.py) sends the NDR back to the route's sender, Contoso's
probe mailbox, here served over IMAP (a private Dovecot, fed by LMTP) or Microsoft Graph; the probe reads it
in the same search as the probes sent there. Forged NDRs are counted and never deleted, whatever the backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from probe.check import CheckOptions, run_check
from probe.config import ImapConfig, MailboxConfig, load_config
from probe.lab import Lab
from probe.mailbox.imap import ImapMailbox
from probe.signing import load_or_create_key
from tests.daemon_harness import running_daemon, scrape, value, wait_for
from tests.test_bounce import BOUNCING, CASES, ROUTE, SENDER_BOX, SIBLING, bounce, config_at, daemon_probe, forge_ndrs

BACKENDS: Final = ("imap", "graph")

pytestmark = [pytest.mark.postfix, pytest.mark.slow]  # the imap lab runs Debian's Dovecot


@pytest.fixture(scope="module", params=BACKENDS)
def module_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    backend = str(request.param)
    with Lab.start(tmp_path_factory.mktemp(f"bounce-{backend}"), tarpit_seconds=0.5,
                   mailbox_backend=backend) as started:  # type: ignore[arg-type]
        yield started


@pytest.fixture
def lab(module_lab: Lab) -> Iterator[Lab]:
    module_lab.clear_faults()
    yield module_lab
    module_lab.clear_faults()


def sender_mail(lab: Lab) -> tuple[dict[str, str], dict[str, str]]:
    """Return the sender's mailbox's mail (Message-ID: subject): in Inbox and Junk, and in the cleanup folder."""
    if lab.mailbox_backend == "graph":
        return ({i.message_id: i.subject for i in lab.store.items(SENDER_BOX, ["inbox", "junkemail"])},
                {i.message_id: i.subject for i in lab.store.items(SENDER_BOX, ["deleteditems"])})
    forest = lab.forests["contoso"]
    config = MailboxConfig(name="contoso", address=SENDER_BOX, backend=ImapConfig(
        host="127.0.0.1", port=forest.imap_port, username=SENDER_BOX, password=forest.imap_password,
        ca_file=lab.ca_file, timeout=5.0))
    mailbox = ImapMailbox(config, key=b"r" * 32)  # only to list: it never deletes what it cannot verify
    try:
        folders = mailbox._connections.resolved()
        assert folders.trash is not None
        found = []
        for names in ([f.imap_name for f in folders.searched], [folders.trash]):
            mail: dict[str, str] = {}
            for name in names:
                client = mailbox._connections.selected(name)[0]
                client.noop()
                envelopes = [d[b"ENVELOPE"] for d in client.fetch(client.search(["UNDELETED"]), ["ENVELOPE"]).values()]
                mail |= {e.message_id.decode().strip(): (e.subject or b"").decode() for e in envelopes}
            found.append(mail)
    finally:
        mailbox.close()
    return found[0], found[1]


@pytest.mark.parametrize(("status", "reason"), CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_check_says_bounced_with_the_ndrs_status_and_cleans_the_ndr_up(lab: Lab, tmp_path: Path, status: str,
                                                                        reason: str) -> None:
    """check over IMAP or Graph: the bouncing host's probe is bounced with the NDR's status code and reason class,
    reporting MTA and diagnostic, long before the timeout; the sibling's is delivered; the NDR leaves the sender's
    Inbox for the cleanup folder, as a probe does."""
    config = load_config(config_at(lab, tmp_path / "probe.yaml", interval=60, timeout=30))
    assert {type(m.backend).__name__ for m in config.mailboxes.values()} == {
        "ImapConfig" if lab.mailbox_backend == "imap" else "GraphConfig"}
    bounce(lab, status)
    started = time.monotonic()
    outcome = run_check(config, CheckOptions(poll_seconds=0.3))
    elapsed = time.monotonic() - started
    by_host = {d.smart_host: d for d in outcome.decisions}
    bounced, sibling = by_host[BOUNCING], by_host[SIBLING]
    assert (str(bounced.verdict), bounced.reason, bounced.status_code) == ("bounced", reason, status)
    assert bounced.reporting_mta in ("FOURTHCOFFEE-MBX-1.fourthcoffee.test", f"{BOUNCING}.fourthcoffee.test")
    assert f" {status} " in (bounced.diagnostic or "")
    assert str(sibling.verdict) == "delivered"
    assert elapsed < 30  # it did not wait for the deadline
    left, cleaned = sender_mail(lab)
    assert not [s for s in left.values() if s.startswith("Undeliverable") and bounced.probe_id in s]
    assert [s for s in cleaned.values() if s.startswith("Undeliverable") and bounced.probe_id in s]


def test_forged_ndrs_change_nothing_and_are_never_deleted(lab: Lab, tmp_path: Path) -> None:
    """The daemon over IMAP or Graph: NDRs in the sender's mailbox that name a probe in flight without a verifying
    returned tag, that are signed under another key, or that carry no tag: the probe stays lost (its smart host
    drops it), nothing bounces, the forged ones are counted in forged_tags_total, and none is ever deleted."""
    path = config_at(lab, tmp_path / "probe.yaml", interval=3, timeout=4)
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
    row = daemon_probe(config, victim.probe_id)
    assert row["state"] == "lost"
    assert "bounce" not in row["detail"]
    left, cleaned = sender_mail(lab)
    assert forged <= left.keys()
    assert not forged & cleaned.keys()
    assert value(samples, "mailflow_probe_forged_tags_total", mailbox="contoso") >= 2
    assert sum(value(samples, "mailflow_probe_bounced_total", route=ROUTE, smart_host=BOUNCING, reason=r)
               for _, r in CASES) == 0
