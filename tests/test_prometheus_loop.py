"""Prometheus in the loop: a real Prometheus scrapes the daemon on the lab and evaluates dashboards/alerts.yml.

The rule file's durations are meant for a 60 s probe interval, so the test loads a copy with time scaled
down, rewritten from the parsed YAML: every range window in an ``expr`` is divided by 45 (``[15m]`` becomes
``[20s]``, ``[30m]`` becomes ``[40s]``) and every ``for:`` becomes 2s; names, expressions otherwise,
labels and annotations stay exactly as they are. Prometheus (Debian's package) scrapes and evaluates
every second, listens on one ephemeral loopback port and keeps its TSDB in the test's temporary folder.

Prometheus hands new targets to its scrapers only every 5 s, so for its first seconds nothing is scraped
and MailflowProbeStale's ``absent(mailflow_probe_build_info)`` is true: with the real ``for: 5m`` that never
fires, with 2s it would. So Prometheus starts without rules, and the rules are loaded by a reload (SIGHUP)
once the daemon is scraped, as they would be in a Prometheus that has been running for a while.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.lab import Lab
from tests.daemon_harness import Samples, fetch, free_port, running_daemon, scrape, value, wait_for

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "dashboards" / "alerts.yml"
WINDOW_SCALE = 45
SHORT_FOR = "2s"
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FAULTY_ROUTE = "contoso-to-fourthcoffee"
FAULTY_HOST = "fourthcoffee-edge-1"
QUIET_SECONDS = 10.0  # case 2 watches this long after the first scrape; case 1 fires in about 4 s


def prometheus_binary() -> str:
    """Return Prometheus' path, or fail saying how to get it."""
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        pytest.fail("prometheus not found: run scripts/setup (it installs Debian's prometheus package)")
    return path


def _short_window(match: re.Match[str]) -> str:
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    return f"[{max(1, round(seconds / WINDOW_SCALE))}s]"


def shortened_rules(text: str) -> tuple[str, int, int]:
    """Return the rule file with windows divided by WINDOW_SCALE and every ``for:`` set to SHORT_FOR.

    Also return how many windows and ``for:`` durations were rewritten.
    """
    doc = yaml.safe_load(text)
    windows = fors = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"], count = re.subn(r"\[(\d+)(ms|s|m|h|d|w)\]", _short_window, rule["expr"])
            windows += count
            if "for" in rule:
                rule["for"], fors = SHORT_FOR, fors + 1
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), windows, fors



@dataclass
class Prometheus:
    """A running Prometheus on loopback."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]
    seen: list[str] = field(default_factory=list)

    def api(self, path: str, **params: str) -> Any:
        """Return the ``data`` of a GET on Prometheus' HTTP API."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = json.loads(fetch(f"{self.url}/api/v1/{path}{query}"))
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Return the active (pending or firing) alerts, and note each new state in ``seen``."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        for alert in alerts:
            note = f"{alert['labels']['alertname']}{{{alert['labels'].get('smart_host', '')}}} {alert['state']}"
            if note not in self.seen:
                self.seen.append(note)
        return alerts

    def ever(self, state: str) -> set[tuple[str, str, str]]:
        """Return (alertname, route, smart_host) of every alert Prometheus recorded in ``state`` so far."""
        result = self.api("query", query=f'max_over_time(ALERTS{{alertstate="{state}"}}[10m])')["result"]
        return {(r["metric"]["alertname"], r["metric"].get("route", ""), r["metric"].get("smart_host", ""))
                for r in result}

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


def write_prometheus_config(folder: Path, target_port: int, *, with_rules: bool) -> Path:
    """Write prometheus.yml scraping the daemon every second (and the shortened rules, if asked); return it."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mailflow-probe",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    if with_rules:
        text, windows, fors = shortened_rules(RULES.read_text(encoding="utf-8"))
        assert windows >= 5, "alerts.yml has fewer range windows than expected: is the rewrite still right?"
        assert fors >= 5, "alerts.yml has fewer for: durations than expected: is the rewrite still right?"
        rules = folder / "alerts.yml"
        rules.write_text(text, encoding="utf-8")
        config["rule_files"] = [str(rules)]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _alive(prometheus: Prometheus) -> None:
    if prometheus.process.poll() is not None:
        raise AssertionError(f"prometheus exited {prometheus.process.returncode}:\n{prometheus.log_tail()}")


def _ready(prometheus: Prometheus) -> bool:
    _alive(prometheus)
    try:
        return bool(fetch(f"{prometheus.url}/-/ready"))
    except (urllib.error.URLError, OSError):
        return False


def scraped(prometheus: Prometheus, pairs: int) -> bool:
    """Say whether Prometheus holds the daemon's success series for every pair."""
    _alive(prometheus)
    return len(prometheus.api("query", query="mailflow_probe_success")["result"]) == pairs


def rules_evaluated(prometheus: Prometheus) -> bool:
    """Say whether Prometheus has loaded the rule file and evaluated every rule in it at least once."""
    _alive(prometheus)
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    return bool(rules) and all(not r["lastEvaluation"].startswith("0001-") for r in rules)


def load_rules(prometheus: Prometheus, folder: Path, target_port: int) -> None:
    """Add the shortened rule file to the configuration and reload Prometheus with SIGHUP."""
    write_prometheus_config(folder, target_port, with_rules=True)
    prometheus.process.send_signal(signal.SIGHUP)
    try:
        wait_for(lambda: rules_evaluated(prometheus), timeout=15, what="the rules loaded and evaluated")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{prometheus.log_tail()}") from None


@contextmanager
def running_prometheus(folder: Path, target_port: int, *, pairs: int) -> Iterator[Prometheus]:
    """Run Prometheus on the daemon until it is scraped and the rules are in force; stop it afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    config = write_prometheus_config(folder, target_port, with_rules=False)
    address = f"127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen([prometheus_binary(), f"--config.file={config}",
                                    f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address={address}"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    prometheus = Prometheus(url=f"http://{address}", log=log, process=process)
    try:
        wait_for(lambda: _ready(prometheus), timeout=30, what="prometheus /-/ready")
        wait_for(lambda: scraped(prometheus, pairs), timeout=30, what="the daemon scraped by prometheus")
        load_rules(prometheus, folder, target_port)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def firing(alerts: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Return the alerts named ``name`` that are firing."""
    return [a for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] == name]


def every_pair_delivered(samples: Samples, pairs: list[tuple[str, str]]) -> bool:
    """Say whether /metrics counts a delivery through every (route, smart host)."""
    return all(value(samples, "mailflow_probe_delivered_total", route=r, smart_host=h) >= 1 for r, h in pairs)


def test_the_shortened_rules_keep_every_alert_and_expression() -> None:
    """The rewrite shortens only windows and for: durations; removing the windows leaves equal expressions."""
    original = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    short = yaml.safe_load(shortened_rules(RULES.read_text(encoding="utf-8"))[0])
    window = re.compile(r"\[\d+(ms|s|m|h|d|w)\]")
    for group, short_group in zip(original["groups"], short["groups"], strict=True):
        for rule, short_rule in zip(group["rules"], short_group["rules"], strict=True):
            assert {k: v for k, v in rule.items() if k not in ("expr", "for")} == \
                   {k: v for k, v in short_rule.items() if k not in ("expr", "for")}
            assert window.sub("[]", rule["expr"]) == window.sub("[]", short_rule["expr"])
            assert short_rule.get("for", SHORT_FOR) == SHORT_FOR
    dumped = yaml.safe_dump(short)
    assert "[20s]" in dumped
    assert "[15m]" not in dumped


@pytest.mark.slow
def test_a_failing_smart_host_fires_smart_host_failing_for_that_pair_only(lab: Lab, tmp_path: Path) -> None:
    """With auth_reject on one smart host, MailflowSmartHostFailing goes pending, then fires naming that pair."""
    lab.add_fault(target=f"smarthost/{FAULTY_HOST}", kind="auth_reject")
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2)
    with running_daemon(path) as (daemon, server):
        wait_for(lambda: value(scrape(server.port), "mailflow_probe_send_failures_total", smart_host=FAULTY_HOST,
                               reason="auth_failed") >= 1, timeout=30, what=f"{FAULTY_HOST} failing on auth")
        pairs = sum(len(r.smart_hosts) for r in daemon.config.routes)
        with running_prometheus(tmp_path / "prometheus", server.port, pairs=pairs) as prometheus:
            wait_for(lambda: bool(firing(prometheus.alerts(), "MailflowSmartHostFailing")), timeout=30,
                     what="MailflowSmartHostFailing firing", every=0.25)
            (alert,) = firing(prometheus.alerts(), "MailflowSmartHostFailing")
            pending, fired = prometheus.ever("pending"), prometheus.ever("firing")
            print("alert states seen:", "; ".join(prometheus.seen))  # shown with -s, for the closing note
    assert alert["labels"]["route"] == FAULTY_ROUTE
    assert alert["labels"]["smart_host"] == FAULTY_HOST
    assert alert["labels"]["severity"] == "warning"
    assert FAULTY_HOST in alert["annotations"]["summary"]
    assert ("MailflowSmartHostFailing", FAULTY_ROUTE, FAULTY_HOST) in pending
    assert fired == {("MailflowSmartHostFailing", FAULTY_ROUTE, FAULTY_HOST)}


@pytest.mark.slow
def test_with_no_fault_no_alert_fires(lab: Lab, tmp_path: Path) -> None:
    """With every smart host delivering, no rule of alerts.yml fires while Prometheus evaluates them."""
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2)
    with running_daemon(path) as (daemon, server):
        pairs = [(r.name, h.name) for r in daemon.config.routes for h in r.smart_hosts]
        wait_for(lambda: every_pair_delivered(scrape(server.port), pairs), timeout=30,
                 what="a delivery through every smart host")
        with running_prometheus(tmp_path / "prometheus", server.port, pairs=len(pairs)) as prometheus:
            end = time.monotonic() + QUIET_SECONDS
            while time.monotonic() < end:
                assert not [a for a in prometheus.alerts() if a["state"] == "firing"], prometheus.seen
                time.sleep(0.25)
            fired = prometheus.ever("firing")
            groups = prometheus.api("rules")["groups"]
            successes = prometheus.api("query", query="mailflow_probe_success")["result"]
            print("alert states seen:", "; ".join(prometheus.seen) or "none")
    assert fired == set()
    evaluated = [r for g in groups for r in g["rules"]]
    assert len(evaluated) >= 7
    assert all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001-") for r in evaluated), evaluated
    assert sorted(s["value"][1] for s in successes) == ["1"] * len(pairs)
