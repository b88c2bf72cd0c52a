"""The daemon's status page and debug view as headless Chromium renders them, against the lab.

One smart host (fourthcoffee-edge-1) rejects the probe's credentials; its sibling delivers. Chromium
dumps the rendered DOM, and the tests assert on its text; screenshots go to artifacts/status-page.png
and artifacts/status-debug.png.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lxml.html
import pytest

from probe.daemon import Daemon
from probe.lab import Lab
from probe.web_pages import debug_link
from tests.daemon_harness import fetch, running_daemon, scrape, value, wait_for

pytestmark = [pytest.mark.chromium, pytest.mark.slow]  # a browser and a daemon start once for the module

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
ROUTE = "contoso-to-fourthcoffee"
FAILING = "fourthcoffee-edge-1"
DELIVERING = "fourthcoffee-edge-2"
CHROMIUM_TIMEOUT = 60.0
# Keep Chromium off every network but loopback: no updates, sync, metrics, safe browsing or QUIC.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
                  "--disable-client-side-phishing-detection", "--safebrowsing-disable-auto-update",
                  "--no-pings", "--no-default-browser-check", "--hide-scrollbars")


@dataclass
class Site:
    """A running daemon on the lab, seen through Chromium."""

    lab: Lab
    daemon: Daemon
    port: int
    profile: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def chromium() -> str:
    """Return Chromium's path, or fail saying how to get it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.fail("chromium not found: run scripts/setup (it installs Debian's chromium package)")
    return path


def run_chromium(site: Site, *args: str) -> str:
    """Run headless Chromium with ``args`` and return its standard output."""
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={site.profile}", *args],
                            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def rendered(site: Site, path: str) -> Any:
    """Return the DOM Chromium renders for ``path``, parsed by lxml."""
    dom = run_chromium(site, "--dump-dom", site.url(path))
    assert "<html" in dom, f"chromium dumped no DOM for {path}: {dom[:500]!r}"
    return lxml.html.fromstring(dom)


def screenshot(site: Site, path: str, name: str) -> Path:
    """Save Chromium's 1400x1000 picture of ``path`` as artifacts/``name`` and return the file."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    run_chromium(site, f"--screenshot={target}", "--window-size=1400,1000", site.url(path))
    return target


def pair_ready(port: int) -> bool:
    """Say whether /metrics shows the delivering pair delivered and the failing pair failed on auth."""
    samples = scrape(port)
    return (value(samples, "mailflow_probe_delivered_total", route=ROUTE, smart_host=DELIVERING) >= 1
            and value(samples, "mailflow_probe_success", route=ROUTE, smart_host=DELIVERING) == 1
            and value(samples, "mailflow_probe_success", route=ROUTE, smart_host=FAILING) == 0
            and value(samples, "mailflow_probe_send_failures_total", route=ROUTE, smart_host=FAILING,
                      reason="auth_failed") >= 1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Yield the daemon probing the lab every second, one smart host rejecting AUTH, both pairs decided."""
    chromium()
    tmp = tmp_path_factory.mktemp("status-page")
    with Lab.start(tmp / "lab") as lab:
        path = lab.write_probe_config(tmp / "probe.yaml", interval=1, timeout=5, jitter=0.2)
        lab.add_fault(target=f"smarthost/{FAILING}", kind="auth_reject")
        with running_daemon(path) as (daemon, server):
            wait_for(lambda: pair_ready(server.port), timeout=30,
                     what=f"{DELIVERING} delivered and {FAILING} failed with auth_failed")
            yield Site(lab=lab, daemon=daemon, port=server.port, profile=tmp / "chromium-profile")


@pytest.fixture(scope="module")
def status(site: Site) -> Any:
    """Return the status page as Chromium renders it (once for the module)."""
    return rendered(site, "/")


def text(element: Any) -> str:
    """Return an element's rendered text with runs of white space made one space."""
    return " ".join(str(element.text_content()).split())


def pair_cells(page: Any, route: str, smart_host: str) -> dict[str, str]:
    """Return the status table row of a pair as {column heading: cell text}."""
    heading = next(h for h in page.iter("h2") if text(h) == route)
    table = heading.getnext()
    while table is not None and table.tag != "table":
        table = table.getnext()
    assert table is not None, f"no table follows the heading of route {route}"
    rows = table.findall(".//tr")
    columns = [text(th) for th in rows[0].findall("th")]
    for row in rows[1:]:
        cells = row.findall("td")
        if (cells[0].text or "").strip() == smart_host:  # the name, before the <br> and the address
            return dict(zip(columns, (text(td) for td in cells), strict=True))
    raise AssertionError(f"no row for smart host {smart_host} in route {route}")


def lab_passwords(lab: Lab) -> set[str]:
    """Return every password lab.json lists (SMTP and EWS, per forest and per smart host)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "password" and isinstance(item, str):
                    found.add(item)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(lab.json_path.read_text(encoding="utf-8")))
    found.add(lab.smart_host(FAILING).password.reveal())
    return found


def encoded_forms(lab: Lab, password: str) -> set[str]:
    """Return the password and the base64 forms AUTH PLAIN and AUTH LOGIN would carry it in."""
    user = lab.smart_host(FAILING).username
    forms = {password, base64.b64encode(password.encode()).decode(),
             base64.b64encode(f"\0{user}\0{password}".encode()).decode()}
    return {f for f in forms if len(f) >= 6}


def test_a_delivered_pair_shows_its_verdict_and_latency(site: Site, status: Any) -> None:
    """A delivering smart host's row reads "delivered" with a latency in seconds and the 250 it got.

    Every pair but the failing one delivers; on a loaded machine one of them may have just ended as lost, so
    the page must show at least one delivered pair, and every delivered row must read right.
    """
    rows = {(route.name, host.name): pair_cells(status, route.name, host.name)
            for route in site.daemon.config.routes for host in route.smart_hosts if host.name != FAILING}
    delivered = {pair: cells for pair, cells in rows.items() if cells["last verdict"] == "delivered"}
    assert delivered, f"no pair shows delivered: {rows}"
    for cells in delivered.values():
        assert re.fullmatch(r"\d+\.\d{3} s", cells["latency"]), cells
        assert cells["stage / reason"] == "", cells
        assert cells["SMTP code"] == "250", cells
        assert "✓" in cells["recent (oldest → newest)"], cells


def test_a_failed_pair_shows_send_failed_at_auth_with_auth_failed(status: Any) -> None:
    """The smart host that rejects AUTH reads send_failed, stage auth, reason auth_failed, code 535."""
    cells = pair_cells(status, ROUTE, FAILING)
    assert cells["last verdict"] == "send_failed", cells
    assert cells["latency"] == "", cells
    assert cells["stage / reason"] == "auth / auth_failed", cells
    assert cells["SMTP code"] == "535", cells
    assert "✓" not in cells["recent (oldest → newest)"], cells


def test_every_pair_of_the_page_links_to_its_debug_view(site: Site, status: Any) -> None:
    """Each configured pair has a row, and its debug link names the route and the smart host."""
    links = {a.get("href") for a in status.iter("a") if text(a) == "debug"}
    for route in site.daemon.config.routes:
        for host in route.smart_hosts:
            pair_cells(status, route.name, host.name)
            assert debug_link(route.name, host.name) in links


def test_the_debug_view_shows_the_redacted_transcript_and_no_password(site: Site) -> None:
    """The failed pair's debug view shows its SMTP transcript with AUTH as <secret>, and no lab password."""
    path = debug_link(ROUTE, FAILING)
    page = rendered(site, path)
    pre = [text(p) for p in page.iter("pre")]
    transcript = next(p for p in pre if "STARTTLS" in p)
    assert re.search(r"C: AUTH \S+ <secret> S: 535 ", transcript), transcript
    config = next(p for p in pre if "smart_host:" in p)
    assert "password: <secret>" in config
    raw = fetch(site.url(path)) + text(page) + str(lxml.html.tostring(page, encoding="unicode"))
    passwords = lab_passwords(site.lab)
    assert passwords
    for password in passwords:
        for form in encoded_forms(site.lab, password):
            assert form not in raw


def test_screenshots_of_the_status_page_and_the_debug_view_are_saved(site: Site) -> None:
    """Chromium saves 1400x1000 PNG pictures of the status page and the failed pair's debug view."""
    for path, name in (("/", "status-page.png"), (debug_link(ROUTE, FAILING), "status-debug.png")):
        picture = screenshot(site, path, name)
        data = picture.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1400, 1000), name
        assert len(data) > 20_000, f"{name} is {len(data)} bytes: a blank page?"
