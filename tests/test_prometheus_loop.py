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

import functools
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from exchangelib.protocol import close_connections

from probe.daemon import Daemon, start_daemon
from probe.lab import Lab
from tests.alertmanager import Webhook, running_alertmanager, webhook_receiver
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


def write_prometheus_config(folder: Path, target_port: int, *, with_rules: bool, more_targets: Sequence[int] = (),
                            alertmanager: str | None = None) -> Path:
    """Write prometheus.yml scraping the daemon (and ``more_targets``) every second, with the shortened rules and
    an Alertmanager if asked; return it."""
    targets = [f"127.0.0.1:{port}" for port in (target_port, *more_targets)]
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mailflow-probe", "static_configs": [{"targets": targets}]}],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
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


def scraped(prometheus: Prometheus, pairs: int, *, since: float = 0.0) -> bool:
    """Say whether Prometheus holds the daemon's success series for every pair, each scraped at ``since`` or
    later (a Unix time)."""
    _alive(prometheus)
    result = prometheus.api("query", query="timestamp(mailflow_probe_success)")["result"]
    return len(result) == pairs and all(float(r["value"][1]) >= since for r in result)


def rules_evaluated(prometheus: Prometheus) -> bool:
    """Say whether Prometheus has loaded the rule file and evaluated every rule in it at least once."""
    _alive(prometheus)
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    return bool(rules) and all(not r["lastEvaluation"].startswith("0001-") for r in rules)


def load_rules(prometheus: Prometheus, folder: Path, target_port: int, **more: Any) -> None:
    """Add the shortened rule file to the configuration and reload Prometheus with SIGHUP."""
    write_prometheus_config(folder, target_port, with_rules=True, **more)
    prometheus.process.send_signal(signal.SIGHUP)
    try:
        wait_for(lambda: rules_evaluated(prometheus), timeout=15, what="the rules loaded and evaluated")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{prometheus.log_tail()}") from None


@contextmanager
def running_prometheus(folder: Path, target_port: int, *, pairs: int, meanwhile: Callable[[], object] = lambda: None,
                       **more: Any) -> Iterator[Prometheus]:
    """Run Prometheus on the daemon until it is scraped and the rules are in force; stop it afterwards.

    ``meanwhile`` runs once Prometheus answers, before its first scrape (which comes about 5 s after it starts):
    the test's wait for the daemon's state, which the rules then see, as every pair is scraped again after it.
    ``more``: ``more_targets`` (other daemons' ports; ``pairs`` counts the pairs of all of them) and
    ``alertmanager`` (host:port to send alerts to), as write_prometheus_config takes them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = write_prometheus_config(folder, target_port, with_rules=False, **more)
    address = f"127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen([prometheus_binary(), f"--config.file={config}",
                                    f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address={address}",
                                    # Firing alerts go to Alertmanager every second, not every minute: the first
                                    # send may come before Prometheus has found its Alertmanager.
                                    "--rules.alert.resend-delay=1s"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    prometheus = Prometheus(url=f"http://{address}", log=log, process=process)
    try:
        wait_for(lambda: _ready(prometheus), timeout=30, what="prometheus /-/ready")
        meanwhile()
        since = time.time()
        wait_for(lambda: scraped(prometheus, pairs, since=since), timeout=30, what="the daemon scraped by prometheus")
        load_rules(prometheus, folder, target_port, **more)
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


def failing_alone(port: int) -> bool:
    """Say whether the daemon on ``port`` counts FAULTY_HOST's AUTH failure while every other pair's success is 1
    (the state MailflowSmartHostFailing must fire on, for that pair only)."""
    samples = scrape(port)
    others = [v for (n, labels), v in samples.items() if n == "mailflow_probe_success"
              and dict(labels)["smart_host"] != FAULTY_HOST]
    return (value(samples, "mailflow_probe_send_failures_total", smart_host=FAULTY_HOST, reason="auth_failed") >= 1
            and bool(others) and all(v == 1 for v in others))


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
        pairs = sum(len(r.smart_hosts) for r in daemon.config.routes)
        failing = functools.partial(wait_for, lambda: failing_alone(server.port), timeout=30,
                                    what=f"{FAULTY_HOST} failing on auth, every other smart host delivering")
        with running_prometheus(tmp_path / "prometheus", server.port, pairs=pairs, meanwhile=failing) as prometheus:
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
        delivered = functools.partial(wait_for, lambda: every_pair_delivered(scrape(server.port), pairs), timeout=30,
                                      what="a delivery through every smart host")
        with running_prometheus(tmp_path / "prometheus", server.port, pairs=len(pairs),
                                meanwhile=delivered) as prometheus:
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


NOTIFICATIONS = '{__name__=~"prometheus_notifications.*"}'


@contextmanager
def running_daemons(*paths: Path) -> Iterator[list[tuple[Daemon, Any]]]:
    """Start a daemon (and its web server, on an ephemeral port) per config, in this process; stop them all at
    once afterwards: Daemon.stop waits for every probe and mailbox thread of the process, so stopped one after
    the other, the first would wait out its grace period (5 s) for the threads of the other, still running."""
    started: list[tuple[Daemon, Any]] = []
    try:
        for path in paths:
            started.append(start_daemon(path, listen_address="127.0.0.1:0"))
        yield started
    finally:
        for _, server in started:
            server.close()
        with ThreadPoolExecutor(max_workers=max(1, len(started)), thread_name_prefix="stopping") as pool:
            list(pool.map(lambda pair: pair[0].stop(), started))
        close_connections()


def second_instance_config(path: Path, folder: Path) -> Path:
    """Return a copy of a daemon config for a second instance: its own state file, the same signing key."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    config["state_file"] = str(folder / "state.db")
    copy = folder / "probe.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return copy


def notified(hook: Webhook, alertname: str) -> list[dict[str, Any]]:
    """Return the firing notifications Alertmanager sent the webhook for ``alertname``."""
    return [n for n in hook.received() if n["groupLabels"].get("alertname") == alertname and n["status"] == "firing"]


@pytest.mark.slow
def test_two_instances_and_a_failing_smart_host_make_one_alertmanager_notification(lab: Lab, tmp_path: Path) -> None:
    """Two probe instances on the same routes, auth_reject on one smart host: Alertmanager (Debian's) notifies
    the webhook once, with one MailflowSmartHostFailing alert carrying route, smart_host, severity and the
    runbook URL, and sends nothing more for it while nothing changes."""
    lab.add_fault(target=f"smarthost/{FAULTY_HOST}", kind="auth_reject")
    first = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=5, jitter=0.2)
    second = second_instance_config(first, tmp_path / "second")
    with webhook_receiver() as hook, running_alertmanager(tmp_path / "alertmanager", hook) as alertmanager, \
            running_daemons(first, second) as ((daemon, server), (_, other)):
        def both_failing() -> None:
            for port in (server.port, other.port):
                wait_for(functools.partial(failing_alone, port), timeout=30,
                         what=f"{FAULTY_HOST} failing on auth, every other delivering, by the instance on {port}")

        pairs = sum(len(r.smart_hosts) for r in daemon.config.routes)
        with running_prometheus(tmp_path / "prometheus", server.port, pairs=2 * pairs, more_targets=[other.port],
                                alertmanager=alertmanager, meanwhile=both_failing) as prometheus:
            try:
                wait_for(lambda: bool(notified(hook, "MailflowSmartHostFailing")), timeout=45,
                         what="a MailflowSmartHostFailing notification at the webhook", every=0.25)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nprometheus alerts: {prometheus.alerts()}\nalertmanager alerts: "
                                     f"{fetch(f'http://{alertmanager}/api/v2/alerts')}\nprometheus' alertmanagers: "
                                     f"{prometheus.api('alertmanagers')}; notifications: "
                                     f"{prometheus.api('query', query=NOTIFICATIONS)}") from None
            time.sleep(QUIET_SECONDS)  # long enough for a second notification (group_interval 2s) to come
            notifications = notified(hook, "MailflowSmartHostFailing")
            print("notifications:", json.dumps(hook.received(), indent=1)[:3000])
    assert len(notifications) == 1, notifications
    alerts = notifications[0]["alerts"]
    assert len(alerts) == 1, f"one alert per probe instance, not one for the pair: {alerts}"
    (alert,) = alerts
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "MailflowSmartHostFailing", "route": FAULTY_ROUTE,
                               "smart_host": FAULTY_HOST, "severity": "warning"}
    assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#mailflowsmarthostfailing")
    assert alert["annotations"]["runbook_url"].startswith("https://")
    assert FAULTY_HOST in alert["annotations"]["summary"]
