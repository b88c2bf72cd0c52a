"""The Graph backend against the lab's Graph endpoint: MSAL tokens, the documented query rules, throttling, cleanup."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from probe.check import CheckOptions, run_check
from probe.config import GraphConfig, MailboxConfig, load_config
from probe.dsn import DsnAction, read_report
from probe.lab import Lab
from probe.lab.ndr import Notice, delay_notification, non_delivery_report
from probe.mailbox.graph import GraphMailbox
from probe.message import build_probe_message
from probe.secret import Secret
from probe.vocabulary import MailboxFolder, MailboxReason, Verdict

MAILBOX = "mailflow.probe@fourthcoffee.test"
ROUTE = "contoso-to-fourthcoffee"
KEY = b"g" * 32


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.start(tmp_path_factory.mktemp("graph") / "lab", mailbox_backend="graph") as started:
        yield started


@pytest.fixture(autouse=True)
def no_faults(lab: Lab) -> Iterator[None]:
    lab.clear_faults()
    yield
    lab.clear_faults()


def app(lab: Lab) -> Any:
    graph = lab.forests["fourthcoffee"].graph
    assert graph is not None
    return graph


def graph_config(lab: Lab, **changes: Any) -> MailboxConfig:
    """Return the lab's Graph mailbox config of fourthcoffee with the ``graph:`` keys changed as asked."""
    a = app(lab)
    graph = GraphConfig(tenant_id=a.tenant_id, client_id=a.client_id, client_secret=a.secret, authority=a.url,
                        endpoint=a.url, instance_discovery=False, ca_file=lab.ca_file, timeout=5.0)
    return MailboxConfig(name="fourthcoffee", address=MAILBOX, backend=dataclasses.replace(graph, **changes))


def deliver_probe(lab: Lab, *, key: bytes = KEY, folder: str = "inbox") -> str:
    message = build_probe_message(key=key, route=ROUTE, smart_host="fourthcoffee-edge-1",
                                  sender="mailflow.probe@contoso.test", recipient=MAILBOX)
    lab.store.deliver(MAILBOX, message.raw, folder=folder, accepted_at=time.time())
    return message.probe_id


def call(lab: Lab, path: str, *, token: str | None = None, method: str = "GET",
         body: object = None) -> tuple[int, dict[str, str], Any]:
    """Call the lab's Graph endpoint directly; return (status, headers, decoded JSON)."""
    request = urllib.request.Request(app(lab).url + path, method=method,  # noqa: S310 - the lab's https URL
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, context=lab.ca.client_context(), timeout=10) as reply:  # noqa: S310
            return reply.status, dict(reply.headers), json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def token_for(lab: Lab, *, scope: str | None = None) -> str:
    a = app(lab)
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": a.client_id,
                                   "client_secret": a.secret.reveal(), "scope": scope or f"{a.url}/.default"})
    request = urllib.request.Request(f"{a.url}/{a.tenant_id}/oauth2/v2.0/token", data=form.encode())  # noqa: S310
    with urllib.request.urlopen(request, context=lab.ca.client_context(), timeout=10) as reply:  # noqa: S310
        token: str = json.loads(reply.read())["access_token"]
        return token


def search_until(mailbox: GraphMailbox, ids: set[str], *, timeout: float = 10.0) -> set[str]:
    end, seen = time.monotonic() + timeout, set[str]()
    while time.monotonic() < end and seen != ids:
        result = mailbox.search(ids)
        assert result.ok, result.error
        seen = {s.probe_id for s in result.sightings}
        time.sleep(0.05)
    return seen


def test_a_client_secret_and_a_certificate_both_get_tokens_and_find_a_probe(lab: Lab, tmp_path: Path) -> None:
    """MSAL reads the lab authority's metadata, gets a token by client secret and by certificate assertion, and the
    probe is found with its whole-second receivedDateTime and its Received hops."""
    probe_id = deliver_probe(lab)
    pem = tmp_path / "app.pem"
    pem.write_text(app(lab).certificate_pem)
    for config in (graph_config(lab), graph_config(lab, client_secret=None, certificate_file=pem)):
        mailbox = GraphMailbox(config, key=KEY)
        try:
            assert search_until(mailbox, {probe_id}) == {probe_id}
            sighting = mailbox.search({probe_id}).sightings[0]
        finally:
            mailbox.close()
        assert not sighting.received_precise
        assert sighting.received_server.microsecond == 0


def test_the_token_is_cached_and_renewed_before_it_expires(lab: Lab) -> None:
    """Ten searches take one token; with tokens that live 302 s (MSAL renews 5 minutes ahead), the next search
    renews it first, and no request is ever refused for an expired token."""
    tenant = lab._parts.graph.tenants["fourthcoffee"]  # type: ignore[union-attr]
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        before = lab.stats.graph_requests("token", forest="fourthcoffee")
        for _ in range(10):
            assert mailbox.search(set()).ok
        assert lab.stats.graph_requests("token", forest="fourthcoffee") - before == 1
        tenant.token_lifetime = 302.0
        try:
            mailbox._tokens.drop()
            assert mailbox.search(set()).ok
            time.sleep(2.5)
            assert mailbox.search(set()).ok
        finally:
            tenant.token_lifetime = 3599.0
        assert lab.stats.graph_requests("token", forest="fourthcoffee") - before == 3
    finally:
        mailbox.close()


def test_tokens_are_checked_for_audience_and_expiry(lab: Lab) -> None:
    """The endpoint refuses no token, a token for another resource, and an expired one, as Graph does (401)."""
    tenant = lab._parts.graph.tenants["fourthcoffee"]  # type: ignore[union-attr]
    good = token_for(lab)
    claims = jwt.decode(good, options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, tenant.key, algorithm="RS256",
                         headers={"kid": tenant.kid})
    elsewhere = jwt.encode({**claims, "aud": "https://graph.microsoft.com"}, tenant.key, algorithm="RS256",
                           headers={"kid": tenant.kid})
    path = f"/v1.0/users/{MAILBOX}/mailFolders/inbox"
    assert call(lab, path, token=good)[0] == 200
    for token, text in ((None, "empty"), (expired, "expired"), (elsewhere, "audience")):
        status, _headers, body = call(lab, path, token=token)
        assert status == 401
        assert body["error"]["code"] == "InvalidAuthenticationToken"
        assert text in body["error"]["message"]


def test_the_documented_query_rules_are_enforced(lab: Lab) -> None:
    """$orderby on a property the $filter does not name first is InefficientFilter; a filter the mail API cannot
    run and an unknown $select are refused; every response has a Date; receivedDateTime has whole seconds."""
    deliver_probe(lab)
    token = token_for(lab)
    base = f"/v1.0/users/{MAILBOX}/mailFolders/inbox/messages?"
    stamp = "2020-01-01T00:00:00Z"
    cases = {
        urllib.parse.urlencode({"$filter": f"receivedDateTime ge {stamp}", "$orderby": "subject"}):
            (400, "InefficientFilter"),
        urllib.parse.urlencode({"$orderby": "subject"}): (400, "InefficientFilter"),
        urllib.parse.urlencode({"$filter": "subject eq 'x'"}): (400, "BadRequest"),
        urllib.parse.urlencode({"$select": "subject,bogus"}): (400, "RequestBroker--ParseUri"),
        urllib.parse.urlencode({"$filter": f"receivedDateTime ge {stamp}", "$orderby": "receivedDateTime desc",
                                "$select": "receivedDateTime,subject", "$top": "1"}): (200, None),
    }
    for query, (status, code) in cases.items():
        got, headers, body = call(lab, base + query, token=token)
        assert got == status, (query, body)
        assert email.utils.parsedate_to_datetime(headers["Date"]).timestamp() > 0
        if code is not None:
            assert body["error"]["code"] == code
        else:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["value"][0]["receivedDateTime"])
            assert "@odata.nextLink" in body


def test_a_search_is_one_request_per_folder_and_cleanup_twenty_to_a_batch(lab: Lab) -> None:
    """Forty-one probes in flight: a search is one listMessages per folder; cleanup sends them in 3 batches of at
    most 20, and they land in Deleted Items."""
    ids = {deliver_probe(lab) for _ in range(41)}
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        search_until(mailbox, ids)
        lists, batches = lab.stats.graph_requests("listMessages"), lab.stats.graph_requests("$batch")
        result = mailbox.search(ids)
        assert lab.stats.graph_requests("listMessages") - lists == 2
        moves = lab.stats.graph_requests("batched move")
        cleaned = mailbox.cleanup([s.item for s in result.sightings])
        assert (cleaned.ok, cleaned.deleted) == (True, 41)
        assert lab.stats.graph_requests("$batch") - batches == 3
        assert lab.stats.graph_requests("batched move") - moves == 41
        assert mailbox.search(ids).sightings == []
    finally:
        mailbox.close()
    trashed = {i.subject for i in lab.store.items(MAILBOX, ["deleteditems"])}
    assert sum(1 for s in trashed if "MFP-" in s) >= 41


@pytest.mark.parametrize(("mode", "folder"), [("soft_delete", "recoverableitemsdeletions"), ("hard_delete", None)])
def test_soft_and_hard_delete_and_a_forged_reference_refused(lab: Lab, mode: str, folder: str | None) -> None:
    """soft_delete is DELETE (to Recoverable Items), hard_delete is permanentDelete; a message whose tag does not
    verify under the probe's key is read first and left where it is."""
    probe_id = deliver_probe(lab)
    forged_id = deliver_probe(lab, key=b"x" * 32)
    mailbox = GraphMailbox(dataclasses.replace(graph_config(lab), cleanup=mode), key=KEY)  # type: ignore[arg-type]
    other = GraphMailbox(graph_config(lab), key=b"x" * 32)
    try:
        ref = mailbox.search({probe_id}).sightings[0].item
        forged_ref = other.search({forged_id}).sightings[0].item
        result = mailbox.cleanup([ref, forged_ref])
    finally:
        mailbox.close()
        other.close()
    assert (result.ok, result.deleted, result.refused) == (True, 1, 1)
    remaining = {i.item_id for i in lab.store.items(MAILBOX, ["inbox"])}
    assert forged_ref.key.replace("-", "/").replace("_", "+") in remaining
    if folder is not None:
        assert any(probe_id in i.subject for i in lab.store.items(MAILBOX, [folder]))


def test_retry_after_is_honoured_then_the_search_succeeds(lab: Lab) -> None:
    """429 with Retry-After: 1 for a little over a second: the search waits it out and succeeds."""
    lab.add_fault(target="graph/fourthcoffee", kind="server_busy", back_off_ms=1000)
    threading.Timer(1.3, lambda: lab.clear_faults("graph/fourthcoffee")).start()
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        started = time.monotonic()
        result = mailbox.search(set(), deadline=time.time() + 10)
        took = time.monotonic() - started
    finally:
        mailbox.close()
    assert result.ok, result.error
    assert took >= 1.0


@pytest.mark.parametrize(("kind", "params", "reason"), [
    ("unauthorized", {}, MailboxReason.UNAUTHORIZED),
    ("server_error", {}, MailboxReason.SERVER_ERROR),
    ("server_busy", {"back_off_ms": 100}, MailboxReason.THROTTLED),
    ("unreachable", {}, MailboxReason.UNREACHABLE),
])
def test_each_mailbox_fault_gives_its_reason(lab: Lab, kind: str, params: dict[str, object],
                                             reason: MailboxReason) -> None:
    """A search through each fault of graph/FOREST fails with the reason EWS gives for the same fault."""
    lab.add_fault(target="graph/fourthcoffee", kind=kind, **params)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        result = mailbox.search({"0" * 16}, deadline=time.time() + 4)
    finally:
        mailbox.close()
    assert (result.ok, result.error_reason) == (False, reason), result.error


@pytest.mark.parametrize("offset", [30.0, -30.0])
def test_the_clock_offset_is_read_from_the_date_header(lab: Lab, offset: float) -> None:
    """With the mailbox server's clock 30 s off, timed requests find the offset to well within a second."""
    lab.add_fault(target="graph/fourthcoffee", kind="clock_offset", seconds=offset)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        estimate = mailbox.calibrate_clock()
    finally:
        mailbox.close()
    assert estimate is not None
    assert abs(estimate.offset - offset) <= estimate.uncertainty + 0.05
    assert estimate.uncertainty < 0.25


def test_forged_and_foreign_mail_is_neither_counted_nor_deleted(lab: Lab, tmp_path: Path) -> None:
    """A message shaped like a probe but signed with another key, and an ordinary one with MFP- in its subject,
    survive a whole check; the check's own probes are delivered and moved to Deleted Items."""
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
    inbox = {i.message_id for i in lab.store.items(MAILBOX, ["inbox", "junkemail"])}
    deleted = {i.message_id for i in lab.store.items(MAILBOX, ["deleteditems"])}
    assert {forged.message_id, "<lunch@fourthcoffee.test>"} <= inbox
    assert {d.message_id for d in outcome.decisions} <= deleted


def test_secrets_and_tokens_never_reach_the_logs_or_errors(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG (MSAL's and urllib3's loggers included), a search and a refused one leave neither the client secret
    nor an access token in the log or the error."""
    caplog.set_level(logging.DEBUG)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        assert mailbox.search(set()).ok
        token = mailbox._tokens.token()
        lab.add_fault(target="graph/fourthcoffee", kind="unauthorized")
        failed = mailbox.search(set(), deadline=time.time() + 3)
    finally:
        mailbox.close()
    secret = app(lab).secret.reveal()
    shown = caplog.text + (failed.error or "")
    assert failed.error_reason == MailboxReason.UNAUTHORIZED
    assert secret not in shown
    assert token not in shown
    assert token.split(".")[2] not in shown
    assert base64.b64encode(secret.encode()).decode() not in shown


def test_a_wrong_client_secret_is_unauthorized(lab: Lab) -> None:
    """The authority's invalid_client (AADSTS7000215) is reason unauthorized."""
    mailbox = GraphMailbox(graph_config(lab, client_secret=Secret("not-the-secret")), key=KEY)
    try:
        result = mailbox.search(set())
    finally:
        mailbox.close()
    assert (result.ok, result.error_reason) == (False, MailboxReason.UNAUTHORIZED)
    assert "invalid_client" in (result.error or "")


def test_pages_are_followed_by_next_link(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ten messages a page, twenty-five probes in Inbox are found by following @odata.nextLink: a listing per
    ten messages of each folder."""
    import probe.mailbox.graph as graph_module

    monkeypatch.setattr(graph_module, "PAGE_SIZE", 10)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        assert mailbox.cleanup([s.item for s in mailbox.search(set()).sightings]).ok
        ids = {deliver_probe(lab) for _ in range(25)}
        held = [len(lab.store.items(MAILBOX, [folder])) for folder in ("inbox", "junkemail")]
        before = lab.stats.graph_requests("listMessages")
        found = {s.probe_id for s in mailbox.search(ids).sightings}
        pages = lab.stats.graph_requests("listMessages") - before
        assert mailbox.cleanup([s.item for s in mailbox.search(ids).sightings]).deleted == 25
    finally:
        mailbox.close()
    assert found == ids
    assert held[0] >= 25
    assert pages == sum(max(1, -(-count // 10)) for count in held)


# -- delivery status reports: found by the same listings as the probes, their content handed over raw ----------

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


def test_reports_come_from_the_probes_listings_and_one_read_of_their_content(lab: Lab) -> None:
    """A probe sent here and the NDR and delay notification of two probes bouncing here: one listing per folder
    finds all three (the message class comes with them), each report's MIME content is read once ($value; the
    next search reads none again); probe.dsn reads them as failed and delayed; the probe is a sighting and no
    report is."""
    probe_id = deliver_probe(lab)
    bounced, ndr = _report()
    delayed, notice = _report(delayed=True)
    for raw in (ndr, notice):
        lab.store.deliver(MAILBOX, raw)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        lists, reads = lab.stats.graph_requests("listMessages"), lab.stats.graph_requests("getMessageContent")
        result = mailbox.search({probe_id}, reports_for={bounced, delayed})
        first = (lab.stats.graph_requests("listMessages") - lists,
                 lab.stats.graph_requests("getMessageContent") - reads)
        again = mailbox.search({probe_id}, reports_for={bounced, delayed})
        second = (lab.stats.graph_requests("listMessages") - lists,
                  lab.stats.graph_requests("getMessageContent") - reads)
    finally:
        mailbox.close()
    assert result.ok, result.error
    assert (first, second) == ((2, 2), (4, 2))
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
    """An NDR is never taken for the probe it names, and a search that asks for no reports reads no content."""
    bounced, ndr = _report()
    lab.store.deliver(MAILBOX, ndr)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        reads = lab.stats.graph_requests("getMessageContent")
        result = mailbox.search({bounced})
    finally:
        mailbox.close()
    assert result.ok, result.error
    assert (result.sightings, result.reports) == ([], [])
    assert lab.stats.graph_requests("getMessageContent") == reads


def test_a_report_whose_subject_tag_is_forged_is_counted_and_not_read(lab: Lab) -> None:
    """A report under another key's tag is forged: counted once, its content never read, never handed over."""
    bounced, ndr = _report(b"o" * 32)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        before = mailbox.search(set()).forged
        lab.store.deliver(MAILBOX, ndr)
        reads = lab.stats.graph_requests("getMessageContent")
        result = mailbox.search(set(), reports_for={bounced})
    finally:
        mailbox.close()
    assert (result.reports, result.forged - before) == ([], 1)
    assert lab.stats.graph_requests("getMessageContent") == reads


def test_verified_reports_are_cleaned_up_without_another_read(lab: Lab) -> None:
    """A report this mailbox handed over (its subject's tag verified) is moved to Deleted Items when asked, in a
    batch that reads nothing first."""
    bounced, ndr = _report()
    item = lab.store.deliver(MAILBOX, ndr)
    mailbox = GraphMailbox(graph_config(lab), key=KEY)
    try:
        [report] = mailbox.search(set(), reports_for={bounced}).reports
        gets = lab.stats.graph_requests("batched getMessage")
        cleaned = mailbox.cleanup([report.item])
    finally:
        mailbox.close()
    assert (cleaned.ok, cleaned.deleted) == (True, 1)
    assert lab.stats.graph_requests("batched getMessage") == gets
    assert item.message_id in {i.message_id for i in lab.store.items(MAILBOX, ["deleteditems"])}


def test_the_message_class_and_mime_content_are_served_as_graph_documents_them(lab: Lab) -> None:
    """The lab's endpoint: $expand of the message class (String 0x001A) shows it as String 0x1a, an NDR's
    REPORT.IPM.Note.NDR; another $expand is refused; $value answers the MIME content as text/plain."""
    _bounced, ndr = _report()
    item = lab.store.deliver(MAILBOX, ndr)
    token = token_for(lab)
    rest = item.item_id.replace("/", "-").replace("+", "_")
    expand = urllib.parse.quote("singleValueExtendedProperties($filter=id eq 'String 0x001A')")
    status, _headers, body = call(lab, f"/v1.0/users/{MAILBOX}/messages/{rest}?$select=subject&$expand={expand}",
                                  token=token)
    assert status == 200
    assert body["singleValueExtendedProperties"] == [{"id": "String 0x1a", "value": "REPORT.IPM.Note.NDR"}]
    status, _headers, body = call(lab, f"/v1.0/users/{MAILBOX}/messages/{rest}?$expand=attachments", token=token)
    assert (status, body["error"]["code"]) == (400, "BadRequest")
    request = urllib.request.Request(f"{app(lab).url}/v1.0/users/{MAILBOX}/messages/{rest}/$value",  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=lab.ca.client_context(), timeout=10) as reply:  # noqa: S310
        assert reply.headers.get_content_type() == "text/plain"
        assert reply.read() == item.raw
