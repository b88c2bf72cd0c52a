"""Debian's Alertmanager for tests: started on a loopback port, notifying a webhook receiver in the test process.

Clustering is off (``--cluster.listen-address=``), so nothing listens beyond loopback or gossips. The receiver
is a small HTTP server on 127.0.0.1 that keeps every notification Alertmanager posts to it, as parsed JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_harness import fetch, free_port, wait_for

MAX_BODY = 1 << 20


def alertmanager_binary() -> str:
    """Return Alertmanager's path, or fail saying how to get it."""
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        pytest.fail("prometheus-alertmanager not found: run scripts/setup (it installs Debian's "
                    "prometheus-alertmanager package)")
    return path


@dataclass
class Webhook:
    """The notifications a webhook receiver got, in order."""

    url: str
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[dict[str, Any]]:
        """Return a copy of the notifications so far."""
        with self.lock:
            return list(self.notifications)


def _handler(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length", "0")), MAX_BODY)
            body = json.loads(self.rfile.read(length))
            with hook.lock:
                hook.notifications.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            """Keep the test's output quiet."""

    return Handler


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """Serve a webhook receiver on 127.0.0.1; yield what it receives."""
    hook = Webhook(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def write_config(folder: Path, hook: Webhook) -> Path:
    """Write an Alertmanager config sending every alert to ``hook``, grouped as docs/deploy.md advises."""
    config = {
        "route": {"receiver": "hook", "group_by": ["alertname", "route", "smart_host", "mailbox"],
                  "group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url, "send_resolved": False}]}],
    }
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def running_alertmanager(folder: Path, hook: Webhook) -> Iterator[str]:
    """Run Alertmanager on a loopback port, notifying ``hook``; yield its host:port; stop it afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    log = folder / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [alertmanager_binary(), f"--config.file={write_config(folder, hook)}",
             f"--storage.path={folder / 'data'}", f"--web.listen-address={address}", "--cluster.listen-address="],
            stdout=out, stderr=subprocess.STDOUT, cwd=folder)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"alertmanager exited {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            return bool(fetch(f"http://{address}/-/ready"))
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="alertmanager /-/ready")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
