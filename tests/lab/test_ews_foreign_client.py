"""The lab's EWS endpoint, driven by an EWS client this project did not write: ews-javascript-api 0.15.3 on Node.

``tests/node/ews_client.js`` uses the library as its users do (Basic, or NTLM through @ewsjs/xhr, over
HTTPS verified against the lab CA) and reports what it saw as JSON; these tests compare that with the
lab's store. The Node packages come from ``npm ci`` in tests/node (the README's test command runs it).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ews_schema import MAILBOX, PASSWORD, StandaloneEws, message, standalone_ews

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "ews_client.js"
TAG = "TAG-JS"
USERS = {"basic": "svc-mailflow@fourthcoffee.test", "ntlm": "FOURTHCOFFEE\\svc-mailflow"}
LINE_WAIT = 60.0  # seconds the client may take between two lines of output


def _node() -> str:
    """Return the node binary, or fail saying how to get what the client needs."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js 18 or later (Debian 12: apt-get install nodejs npm), "
                    "then run `npm ci --prefix tests/node`")
    if not (NODE_DIR / "node_modules" / "ews-javascript-api").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (the README's test "
                    "command does)")
    return node


@dataclass
class ClientRun:
    """One run of the Node client: what it asked the test to deliver, and what it reported."""

    delivered: dict[str, str] = field(default_factory=dict)  # subject -> item id
    result: dict[str, Any] = field(default_factory=dict)


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _wait_for_stream(env: StandaloneEws) -> None:
    give_up = time.monotonic() + LINE_WAIT
    while env.server.subscriptions.open_streams() == 0:
        assert time.monotonic() < give_up, "the Node client's notification stream never opened"
        time.sleep(0.02)


def _converse(process: subprocess.Popen[str], env: StandaloneEws) -> ClientRun:
    """Answer the client's delivery requests until it reports its result."""
    run = ClientRun()
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
    assert process.stdin is not None
    while True:
        try:
            line = lines.get(timeout=LINE_WAIT)
        except queue.Empty:
            pytest.fail(f"the Node client said nothing for {LINE_WAIT:.0f} s")
        if line is None:
            pytest.fail("the Node client ended without a result")
        said = json.loads(line)
        if "want" in said:
            if said.get("once") == "stream-open":
                _wait_for_stream(env)
            subject = said["subject"]
            stored = env.store.deliver(MAILBOX, message(subject, message_id=f"<{len(run.delivered)}-js@probe>"))
            run.delivered[subject] = stored.item_id
            process.stdin.write("delivered\n")
            process.stdin.flush()
            continue
        assert "error" not in said, said["error"]
        run.result = said["result"]
        return run


def _seed(env: StandaloneEws) -> list[str]:
    """Deliver five tagged messages and an unrelated one to Inbox; return the tagged ones' Message-IDs."""
    ids = []
    for n in range(5):
        raw = message(f"probe {TAG} {n}", message_id=f"<js-{n}@probe>").replace(
            f"To: {MAILBOX}".encode(), f"To: Mailflow Probe <{MAILBOX}>".encode())
        ids.append(env.store.deliver(MAILBOX, raw).message_id)
    env.store.deliver(MAILBOX, message("unrelated", message_id="<other-js@probe>"))
    return ids


def _run_client(node: str, ews: StandaloneEws, auth: str) -> ClientRun:
    environment = {**os.environ, "EWS_URL": str(ews.server.https_url), "EWS_USERNAME": USERS[auth],
                   "EWS_PASSWORD": PASSWORD, "EWS_AUTH": auth, "EWS_MAILBOX": MAILBOX, "EWS_TAG": TAG,
                   "NODE_EXTRA_CA_CERTS": str(ews.ca_file)}
    process = subprocess.Popen([node, str(SCRIPT)], cwd=NODE_DIR, env=environment, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return _converse(process, ews)
    finally:
        process.kill()
        process.communicate(timeout=10)


@pytest.fixture(scope="module", params=["basic", "ntlm"])
def client_run(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClientRun, StandaloneEws]]:
    """Seed a mailbox and run the Node client once against the lab over HTTPS, with Basic or with NTLM."""
    node = _node()
    with standalone_ews(tmp_path_factory.mktemp(f"ews-{request.param}")) as ews:
        _seed(ews)
        yield _run_client(node, ews, str(request.param)), ews
        assert ews.schema_problems() == []


def test_inbox_binds_with_its_counts(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """Folder.Bind(Inbox) reads the Inbox's name, TotalCount and UnreadCount (every message is unread)."""
    run, _ = client_run
    inbox = run.result["inbox"]
    assert inbox["displayName"] == "Inbox"
    assert inbox["totalCount"] == 6
    assert inbox["unreadCount"] == 6
    assert inbox["childFolderCount"] == 0


def test_finditems_filters_sorts_and_pages(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """FindItems with a subject filter, oldest first, two at a time: three pages, every tagged message once."""
    run, _ = client_run
    pages = run.result["pages"]
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [p["moreAvailable"] for p in pages] == [True, True, False]
    assert {p["totalCount"] for p in pages} == {5}
    subjects = [i["subject"] for p in pages for i in p["items"]]
    assert subjects == [f"probe {TAG} {n}" for n in range(5)]
    stamps = [i["received"] for p in pages for i in p["items"]]
    assert stamps == sorted(stamps)


def test_bind_loads_the_first_class_properties(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """EmailMessage.Bind with FirstClassProperties and MimeContent gives recipients, sender, dates and body."""
    run, env = client_run
    loaded = run.result["loaded"]
    [stored] = [i for i in env.store.items(MAILBOX, ["inbox", "deleteditems"]) if i.subject == f"probe {TAG} 0"]
    assert loaded["subject"] == stored.subject
    assert loaded["internetMessageId"] == "<js-0@probe>"
    assert loaded["toRecipients"] == [{"name": "Mailflow Probe", "address": MAILBOX, "routingType": "SMTP"}]
    assert loaded["from"] == {"name": "Probe", "address": "probe@contoso.test", "routingType": "SMTP"}
    assert loaded["sender"] == loaded["from"]
    assert loaded["dateTimeSent"] == "2026-11-28T09:00:00.000Z"
    assert loaded["dateTimeCreated"][:19] == stored.received.strftime("%Y-%m-%dT%H:%M:%S")
    assert (loaded["bodyType"], loaded["body"].strip()) == ("Text", "probe body")
    assert loaded["mimeCharacterSet"] == "UTF-8"
    assert loaded["conversationId"]
    assert (loaded["importance"], loaded["isRead"]) == ("Normal", False)
    assert loaded["isDeliveryReceiptRequested"] is False
    assert loaded["isReadReceiptRequested"] is False
    assert {"Message-ID", "Subject", "Received"} <= set(loaded["headers"])


def test_findfolders_lists_the_mailbox_folders(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """FindFolders under the message folder root lists a mailbox's default folders, with their classes."""
    run, _ = client_run
    folders = {f["displayName"]: f for f in run.result["folders"]}
    assert {"Calendar", "Contacts", "Deleted Items", "Drafts", "Inbox", "Junk Email", "Notes", "Outbox",
            "Sent Items", "Tasks", "Sync Issues"} <= set(folders)
    assert folders["Calendar"]["folderClass"] == "IPF.Appointment"
    assert folders["Inbox"]["totalCount"] == 6


def test_convertid_goes_to_each_format_and_back(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """ConvertId turns an item's EwsId into EntryId, HexEntryId and EwsLegacyId, and each back into the EwsId."""
    run, _ = client_run
    original = run.result["pages"][0]["items"][0]["id"]
    converted = run.result["converted"]
    for fmt, seen in converted.items():
        assert seen["back"] == original, fmt
        assert seen["mailbox"] == MAILBOX
        assert seen["format"] == fmt
    entry = base64.b64decode(converted["EntryId"]["id"])
    assert len(entry) == 70
    assert converted["HexEntryId"]["id"] == entry.hex().upper()
    assert converted["EwsLegacyId"]["id"] not in (original, converted["EntryId"]["id"])


def test_pull_subscription_gets_the_new_mail_then_unsubscribes(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """A pull subscription's GetEvents reports NewMail for the delivered message; after Unsubscribe it is gone."""
    run, _ = client_run
    pull = run.result["pull"]
    assert pull["events"] == [{"type": "NewMail", "itemId": run.delivered[f"pull {TAG}"]}]
    assert pull["afterUnsubscribe"] == "ErrorSubscriptionNotFound"


def test_streaming_subscription_receives_new_mail(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """A streaming subscription's connection receives NewMail for a message delivered while it is open."""
    run, _ = client_run
    assert {"type": "NewMail", "itemId": run.delivered[f"streaming {TAG}"]} in run.result["streaming"]["events"]


def test_move_and_hard_delete(client_run: tuple[ClientRun, StandaloneEws]) -> None:
    """MoveItems puts a message in Deleted Items under a new id; HardDelete removes one for good."""
    run, env = client_run
    moved = run.result["moved"]
    assert env.store.get(moved["movedFrom"]) is None
    [in_trash] = env.store.items(MAILBOX, ["deleteditems"])
    assert moved["movedTo"] == in_trash.item_id
    assert env.store.get(moved["hardDeleted"]) is None
    assert env.store.items(MAILBOX, ["recoverableitemsdeletions"]) == []
    assert moved["deletedLookup"] == "ErrorItemNotFound"
