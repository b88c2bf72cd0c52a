"""``mailflow-probe run``: scheduled probes through every smart host, confirmed per mailbox, as metrics.

Threads: APScheduler runs one send job per (route, smart host) on a bounded pool, plus the expiry
and housekeeping jobs; each mailbox has one watcher thread that searches when a notification
arrives, when a deadline passes, and at its poll interval. A slow smart host or mailbox holds up
only its own job or thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from probe.config import Config, ConfigError, MailboxConfig, load_config, load_config_with_warnings
from probe.diagnosis import DiagnosisTracker, RouteDiagnosis, last_decisive
from probe.http_server import MAX_CONNECTIONS
from probe.ledger import Decision, Ledger, LedgerError
from probe.local_faults import explain, local_fault
from probe.logs import Throttle, configure_logging, log_decision
from probe.mailbox.backends import MailboxFactory, open_mailbox
from probe.mailbox.base import Mailbox, SearchResult, Watch
from probe.metrics import ProbeMetrics
from probe.pipeline import Target, carriers, confirm, expire, send_probe, targets
from probe.runtime import limit_malloc_arenas, raise_open_files_limit
from probe.shard import Shard
from probe.signing import SigningKeyError, load_or_create_key
from probe.smtp import SubmitResult
from probe.vocabulary import CONNECTOR_PAIR, LocalResource, UnknownReason, Verdict

log = logging.getLogger("probe.daemon")

SEND_WORKERS = 32
EXPIRE_SECONDS = 1.0
STREAMING_FALLBACK_POLL = 30.0
RETENTION_SECONDS = 7 * 86400
SHUTDOWN_GRACE = 5.0
CALIBRATE_ABOVE = 0.1  # seconds of clock offset uncertainty that call for a calibration
CALIBRATE_EVERY = 300.0  # at most this often per mailbox
LOG_EVERY = 60.0  # seconds between two lines of the same repeating news (a local fault, forged tags)


class _Observer:
    """Turn pipeline events into metrics and log lines, for pairs still configured."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._throttle = Throttle(LOG_EVERY)
        self._forged_seen: dict[str, int] = {}

    def on_submit(self, target: Target, result: SubmitResult) -> None:
        """Count a submission and time its stages."""
        if self._daemon.has_pair(*target.key):
            self._daemon.metrics.observe_submit(*target.key, result)

    def on_search(self, mailbox: str, result: SearchResult) -> None:
        """Record a mailbox's health (a search the host itself failed is a local fault, not the mailbox's)."""
        if mailbox in self._daemon.config.mailboxes:
            self._daemon.metrics.observe_search(mailbox, result)
        if result.forged:
            self._forged(mailbox, result.forged)
        if result.local is not None:
            self._local_line(result.local, f"searching mailbox {mailbox}", result.error)
        elif not result.ok:
            log.warning("mailbox search failed", extra={"mailbox": mailbox, "reason": str(result.error_reason),
                                                        "error": result.error})

    def on_local_fault(self, resource: LocalResource, what: str) -> None:
        """Count a failure of the probe's own host and log what ran out (at most a line a minute)."""
        self._daemon.metrics.observe_local(resource)
        self._local_line(resource, what, None)

    def _local_line(self, resource: LocalResource, what: str, error: str | None) -> None:
        held = self._throttle.admit(f"local:{resource}")
        if held is not None:
            log.error(f"{explain(resource)}: not a smart host's or a mailbox's fault; probes it hits end unknown",
                      extra={"resource": str(resource), "reason": str(UnknownReason.LOCAL), "while": what,
                             "error": error, "repeats_held_back": held})

    def _forged(self, mailbox: str, count: int) -> None:
        self._forged_seen[mailbox] = self._forged_seen.get(mailbox, 0) + count
        if self._throttle.admit(f"forged:{mailbox}") is not None:
            log.warning("messages with a forged probe tag in the mailbox: not counted, not deleted (another "
                        "mailflow-probe instance with a different signing key writing to this mailbox looks the "
                        "same: give instances that share a mailbox one key, docs/deploy.md)",
                        extra={"mailbox": mailbox, "forged": self._forged_seen.pop(mailbox)})

    def on_delayed(self, probe_id: str, report: dict[str, Any]) -> None:
        """Log a delay notification of a probe (a warning; the verdict is still to come)."""
        log.warning("delivery delayed: a delay notification came back; still waiting for the probe",
                    extra={"probe_id": probe_id, "status_code": report.get("status"),
                           "reporting_mta": report.get("reporting_mta"), "diagnostic": report.get("diagnostic"),
                           "will_retry_until": report.get("will_retry_until")})

    def on_decision(self, decision: Decision) -> None:
        """Count a verdict and log its line; for a route with a connector probe, which smart host carried it and
        any change of the route's diagnosis."""
        log_decision(log, decision)
        if not self._daemon.has_pair(decision.route, decision.smart_host):
            return
        self._daemon.metrics.observe_decision(decision)
        arrived = decision.verdict in (Verdict.DELIVERED, Verdict.LATE)
        if decision.smart_host == CONNECTOR_PAIR and arrived and decision.carried_by:
            self._daemon.metrics.observe_carried(decision.route, decision.carried_by)
        self._daemon.diagnose(decision)


@dataclass
class _MailboxWatcher:
    """One mailbox's searcher thread and its notification stream."""

    name: str
    config: MailboxConfig
    mailbox: Mailbox
    wake: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    stream: Watch | None = None
    next_calibration: float = 0.0
    notified: threading.Event = field(default_factory=threading.Event)  # new mail since the last search began
    wake_at: float = 0.0  # when the thread next searches unless woken (time.time())
    last_search: float = float("-inf")  # when the last search began (time.monotonic())


class _SendPool(ThreadPoolExecutor):  # type: ignore[misc]
    """The send jobs' pool; it notes each run's scheduled time before the run can start.

    (APScheduler dispatches its job-submitted events only after the whole batch is submitted, so a run
    could start before its event, and its lag be measured from the run before: a whole interval.)
    """

    def __init__(self, workers: int, scheduled: dict[str, datetime],
                 on_local_fault: Callable[[LocalResource, str], None]) -> None:
        super().__init__(workers)
        self._scheduled_times = scheduled
        self._on_local_fault = on_local_fault

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        if run_times:
            self._scheduled_times[job.id] = run_times[-1]
        try:
            super()._do_submit_job(job, run_times)
        except RuntimeError as exc:
            # The run is queued already; only a new worker thread could not start. It runs on a worker
            # that exists (the pool's done-callback balances the count the scheduler keeps).
            resource = local_fault(exc)
            if resource is None:
                raise
            self._on_local_fault(resource, f"starting a worker for {job.id}")


class Daemon:
    """The probing daemon: config, ledger, scheduler, watchers, metrics."""

    def __init__(self, config: Config, *, mailbox_factory: MailboxFactory | None = None,
                 config_path: Path | None = None, shard: Shard | None = None) -> None:
        self.shard = shard
        self.config_path = config_path or config.source
        self.config = config = self._share(config)
        self.metrics = ProbeMetrics(config)
        self.ledger = Ledger(config.state_file)
        self.key = load_or_create_key(config.signing_key_file)
        self._mailbox_factory = mailbox_factory or (lambda cfg, key: open_mailbox(cfg, key=key))
        self._observer = _Observer(self)
        self._lock = threading.RLock()
        self._pairs: dict[tuple[str, str], Target] = {}
        self._watchers: dict[str, _MailboxWatcher] = {}
        self._scheduled: dict[str, datetime] = {}
        self._diagnoses = DiagnosisTracker()
        self._ready = threading.Event()
        self.scheduler = BackgroundScheduler(
            executors={"default": _SendPool(SEND_WORKERS, self._scheduled, self._observer.on_local_fault),
                       "house": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve what a previous run left half-done, schedule every pair, start every watcher, and begin."""
        self._seed_diagnoses()
        for decision in self.ledger.recover_interrupted():
            self._observer.on_decision(decision)
        # Jobs are added before the scheduler starts, so none falls due while thousands are still being added.
        self._apply(self.config, first=True)
        self.scheduler.add_job(self._expire, IntervalTrigger(seconds=EXPIRE_SECONDS), id="expire",
                               executor="house")
        self.scheduler.add_job(self._housekeeping, IntervalTrigger(seconds=5), id="housekeeping",
                               executor="house", next_run_time=datetime.now())
        self.scheduler.start()
        self.metrics.set_reload(True, time.time())
        self._ready.set()
        log.info("started", extra={"pairs": len(self._pairs), "mailboxes": len(self._watchers),
                                   "state_file": str(self.config.state_file)})

    def stop(self, timeout: float = SHUTDOWN_GRACE) -> bool:
        """Stop scheduling and watching; wait up to ``timeout`` for running work. True when all stopped."""
        self._ready.clear()
        self.scheduler.shutdown(wait=False)
        for watcher in list(self._watchers.values()):
            self._stop_watcher(watcher, join=False)
        end = time.monotonic() + timeout
        for watcher in list(self._watchers.values()):
            if watcher.thread is not None:
                watcher.thread.join(max(0.0, end - time.monotonic()))
        stragglers = [t for t in threading.enumerate() if t.name.startswith(("ThreadPoolExecutor", "mailbox-"))
                      and t.is_alive()]
        while stragglers and time.monotonic() < end:
            time.sleep(0.05)
            stragglers = [t for t in stragglers if t.is_alive()]
        for watcher in self._watchers.values():
            watcher.mailbox.close()
        if not stragglers:
            self.ledger.close()
        log.info("stopped", extra={"clean": not stragglers})
        return not stragglers

    def ready(self) -> bool:
        """Say whether the daemon is probing."""
        return self._ready.is_set()

    def observe_local_fault(self, resource: LocalResource, what: str) -> None:
        """Count and log a failure of this host met outside the probes (the web listener's)."""
        self._observer.on_local_fault(resource, what)

    def has_pair(self, route: str, smart_host: str) -> bool:
        """Say whether (route, smart host) is in the running configuration."""
        return (route, smart_host) in self._pairs

    # -- diagnosis across both kinds of probe -------------------------------------------------------

    def _seed_diagnoses(self) -> None:
        """Start from each pair's last decisive verdict in the state file (of routes with a connector probe)."""
        for route in self.config.routes:
            if route.connector is None:
                continue
            for host in (*(h.name for h in route.smart_hosts), CONNECTOR_PAIR):
                row = last_decisive(self.ledger.history(route.name, host, limit=10))
                if row is not None:
                    carried = (row.get("detail") or {}).get("carried_by")
                    self._diagnoses.note(route.name, host, str(row["state"]), carried)

    def diagnose(self, decision: Decision) -> None:
        """Fold a verdict into its route's diagnosis; log the diagnosis when it changes."""
        target = self._pairs.get((decision.route, decision.smart_host))
        route = None if target is None else target.route
        if route is None or route.connector is None:
            return
        changed = self._diagnoses.update(route.name, [h.name for h in route.smart_hosts], decision.smart_host,
                                         str(decision.verdict), decision.carried_by)
        if changed is not None:
            _log_diagnosis(changed)

    # -- reload ------------------------------------------------------------------------------------

    def reload(self) -> tuple[bool, str]:
        """Load the config file again; apply it if valid, else keep the running one and say why."""
        path = self.config_path
        if path is None:
            return False, "no configuration file to reload from"
        try:
            new = self._share(load_config(path))
        except ConfigError as exc:
            self.metrics.set_reload(False, None)
            log.error("reload refused: the running configuration is kept", extra={"error": exc.describe()})
            return False, exc.describe()
        with self._lock:
            self._apply(new, first=False)
            self.config = new
            self.metrics.apply_config(new)
            self._diagnoses.forget(r.name for r in new.routes if r.connector is not None)
        self.metrics.set_reload(True, time.time())
        log.info("reloaded", extra={"pairs": len(self._pairs), "mailboxes": len(self._watchers)})
        return True, f"reloaded: {len(self._pairs)} pairs, {len(self._watchers)} mailboxes"

    def _share(self, config: Config) -> Config:
        """Return this instance's share of ``config`` (all of it without --shard)."""
        if self.shard is None:
            return config
        share = self.shard.share(config)
        pairs = len(targets(share))  # connector pairs too
        facts = {"shard": str(self.shard), "pairs": pairs, "of_pairs": len(targets(config)),
                 "mailboxes": len(share.mailboxes)}
        if pairs:
            log.info("this instance probes its shard of the pairs", extra=facts)
        else:
            log.warning("this instance's shard has no pair: it probes nothing (fewer shards would do)", extra=facts)
        return share

    def _apply(self, config: Config, *, first: bool) -> None:
        """Bring watchers and send jobs in line with ``config``: the (slow) watchers first, then the jobs."""
        self._apply_mailboxes(config)
        old_pairs, new_pairs = self._pairs, {t.key: t for t in targets(config)}
        for key in set(old_pairs) - set(new_pairs):
            self.scheduler.remove_job(_job_id(key))
        self._pairs = new_pairs
        for key, target in new_pairs.items():
            old = old_pairs.get(key)
            if old is None or old != target:
                self._schedule(target, replace=old is not None, spread=first or old is None)

    def _schedule(self, target: Target, *, replace: bool, spread: bool) -> None:
        route = target.route
        first_run = datetime.now() + timedelta(seconds=random.uniform(0, route.interval) if spread else 0)
        self.scheduler.add_job(
            self._send, IntervalTrigger(seconds=route.interval, jitter=route.jitter or None),
            args=(target.key,), id=_job_id(target.key), replace_existing=replace, next_run_time=first_run,
        )

    def _apply_mailboxes(self, config: Config) -> None:
        for name in set(self._watchers) - set(config.mailboxes):
            self._stop_watcher(self._watchers.pop(name), join=True)
        for name, mconfig in config.mailboxes.items():
            current = self._watchers.get(name)
            if current is not None and current.config == mconfig:
                continue
            if current is not None:
                self._stop_watcher(current, join=True)
            self._watchers[name] = self._start_watcher(name, mconfig)

    # -- jobs --------------------------------------------------------------------------------------

    def _on_missed(self, event: JobExecutionEvent) -> None:
        log.warning("a scheduled probe was missed", extra={"job": event.job_id})

    def _lag(self, job_id: str) -> None:
        scheduled = self._scheduled.get(job_id)
        if scheduled is not None:
            self.metrics.observe_lag(max(0.0, time.time() - scheduled.timestamp()))

    def _send(self, key: tuple[str, str]) -> None:
        self._lag(_job_id(key))
        target = self._pairs.get(key)
        if target is None:
            return
        try:
            send_probe(target, key=self.key, ledger=self.ledger, observer=self._observer)
        except LedgerError as exc:
            self._ledger_failed(exc, "probe not sent: the state file cannot be written")
        except Exception as exc:  # a local fault outside the submission (building, recording), or a bug
            self._job_failed(exc, f"sending through {target.via}")
        for name in (target.mailbox.name, target.bounces):  # the probe waits on both: to arrive, or its NDR
            watcher = self._watchers.get(name) if name is not None else None
            if watcher is not None and time.time() + target.route.timeout < watcher.wake_at:
                watcher.wake.set()  # its next deadline is sooner now

    def _expire(self) -> None:
        try:
            expire(self.ledger, observer=self._observer, unknown_after=self._longest_timeout())
        except LedgerError as exc:
            self._ledger_failed(exc, "verdicts not decided: the state file cannot be written")

    def _housekeeping(self) -> None:
        try:
            counts = self.ledger.open_counts()
            for key in self._pairs:
                self.metrics.set_in_flight(key[0], key[1], counts.get(key, 0))
            self.ledger.prune(older_than=time.time() - RETENTION_SECONDS)
        except LedgerError as exc:
            self._ledger_failed(exc, "housekeeping skipped: the state file cannot be written")

    # -- mailbox watchers ---------------------------------------------------------------------------

    def _start_watcher(self, name: str, mconfig: MailboxConfig) -> _MailboxWatcher:
        watcher = _MailboxWatcher(name=name, config=mconfig, mailbox=self._mailbox_factory(mconfig, self.key))
        if mconfig.watch == "streaming":
            watcher.stream = watcher.mailbox.watch(lambda _at: _notify(watcher))
        watcher.thread = threading.Thread(target=self._watch_loop, args=(watcher,), name=f"mailbox-{name}",
                                          daemon=True)
        watcher.thread.start()
        return watcher

    def _stop_watcher(self, watcher: _MailboxWatcher, *, join: bool) -> None:
        watcher.stopping.set()
        watcher.wake.set()
        if watcher.stream is not None:
            watcher.stream.stop(timeout=1.0 if join else 0.1)
        if join and watcher.thread is not None:
            watcher.thread.join(SHUTDOWN_GRACE)
            watcher.mailbox.close()

    def _watch_loop(self, watcher: _MailboxWatcher) -> None:
        while not watcher.stopping.is_set():
            self._calibrate(watcher)
            wait = self._next_wait(watcher)
            watcher.wake_at = time.time() + wait
            woken = watcher.wake.wait(wait)
            watcher.wake.clear()
            if woken and not watcher.notified.is_set():
                continue  # a send or a stop: work out the next deadline again
            if woken:  # new mail: searches start at most once per poll_interval, so one search covers the lot
                watcher.stopping.wait(watcher.last_search + watcher.config.poll_interval - time.monotonic())
            if watcher.stopping.is_set():
                return
            watcher.notified.clear()
            watcher.last_search = time.monotonic()
            self._search(watcher)

    def _calibrate(self, watcher: _MailboxWatcher) -> None:
        """Narrow the mailbox server's clock offset when it has grown vague, at most every few minutes."""
        now = time.monotonic()
        if now < watcher.next_calibration:
            return
        uncertainty = watcher.mailbox.clock_uncertainty
        if uncertainty is None or uncertainty > CALIBRATE_ABOVE:
            watcher.mailbox.calibrate_clock()
            watcher.next_calibration = now + CALIBRATE_EVERY

    def _next_wait(self, watcher: _MailboxWatcher) -> float:
        streaming_up = watcher.stream is not None and watcher.stream.connected
        self.metrics.set_watcher(watcher.name, watcher.config.watch, streaming_up or watcher.config.watch == "polling")
        poll = watcher.config.poll_interval
        if streaming_up:
            poll = max(poll, STREAMING_FALLBACK_POLL)
        now = time.time()
        deadline = self.ledger.next_deadline(watcher.name, after=now)
        until_deadline = poll if deadline is None else deadline - now + 0.05
        return max(0.01, min(poll, until_deadline))

    def _longest_timeout(self) -> float:
        """Return the longest route timeout: how long an unobservable probe waits, and the late window."""
        return max((r.timeout for r in self.config.routes), default=300.0)

    def _search(self, watcher: _MailboxWatcher) -> None:
        late_window = self._longest_timeout() * 2
        try:
            confirm(watcher.name, watcher.mailbox, key=self.key, ledger=self.ledger, observer=self._observer,
                    late_window=late_window, cleanup=watcher.config.cleanup != "keep", carriers=carriers(self.config))
        except LedgerError as exc:
            self._ledger_failed(exc, "search results not recorded: the state file cannot be written")
        except Exception as exc:  # a bug must not kill the watcher thread; it is logged with its traceback
            self._job_failed(exc, f"searching mailbox {watcher.name}")
            time.sleep(1.0)

    def _ledger_failed(self, exc: LedgerError, message: str) -> None:
        if exc.resource is not None:
            self._observer.on_local_fault(exc.resource, message)
        else:
            log.error(message, extra={"error": str(exc)})

    def _job_failed(self, exc: Exception, what: str) -> None:
        resource = local_fault(exc)
        if resource is not None:
            self._observer.on_local_fault(resource, what)
        else:
            log.exception("unexpected error (a bug: please report it)", extra={"while": what})

def _log_diagnosis(found: RouteDiagnosis) -> None:
    fields = {"route": found.route, "diagnosis": None if found.diagnosis is None else str(found.diagnosis),
              "failing_smart_hosts": list(found.failing), "carried_by": found.carried_by}
    if found.diagnosis is None:
        log.info("route diagnosis cleared: the connector and its smart hosts agree again", extra=fields)
    else:
        log.warning(f"route diagnosis: {found.text}", extra=fields)


def _notify(watcher: _MailboxWatcher) -> None:
    watcher.notified.set()
    watcher.wake.set()


def _job_id(key: tuple[str, str]) -> str:
    return f"send:{key[0]}:{key[1]}"


# -- the command ----------------------------------------------------------------------------------


class _WebSource:
    """What the web server reads from the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def config(self) -> Config:
        """Return the running configuration."""
        return self._daemon.config

    def history(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the recent verdicts of one pair."""
        return self._daemon.ledger.history(route, smart_host, limit=limit)

    def waiting(self, route: str, smart_host: str, limit: int) -> list[dict[str, Any]]:
        """Return the probes of one pair awaiting a verdict."""
        return self._daemon.ledger.waiting(route, smart_host, limit=limit)

    def ready(self) -> bool:
        """Say whether the daemon is probing."""
        return self._daemon.ready()

    def reload(self) -> tuple[bool, str]:
        """Reload the configuration."""
        return self._daemon.reload()


@dataclass(frozen=True, kw_only=True)
class WebOptions:
    """The listener's flags: ``--web.config.file``, ``--web.enable-lifecycle``, ``--web.max-connections``."""

    config_file: str | None = None
    lifecycle: bool = False
    max_connections: int | None = None  # None: 512, or half the open-files limit when that is lower


def connection_cap(asked: int | None) -> int:
    """Return the web listener's connection cap: as asked, else 512 or half the soft open-files limit."""
    if asked is not None:
        return asked
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft // 2))


def start_daemon(config_path: Path, *, listen_address: str, web_config_file: str | None = None,
                 mailbox_factory: MailboxFactory | None = None, web: WebOptions | None = None,
                 shard: Shard | None = None) -> tuple[Daemon, Any]:
    """Load the config, start the daemon (on ``shard``'s share of the pairs, if given) and its web server; return
    both (errors raise ConfigError etc.)."""
    from probe.http_server import Limits
    from probe.web import serve
    from probe.webconfig import load_web_config

    web = web or WebOptions(config_file=web_config_file)
    loaded = load_config_with_warnings(config_path)
    for warning in loaded.warnings:
        log.warning(f"config: {warning}")
    web_config = load_web_config(Path(web.config_file)) if web.config_file else None
    daemon = Daemon(loaded.config, mailbox_factory=mailbox_factory, config_path=config_path, shard=shard)
    server = serve(listen_address, source=_WebSource(daemon), metrics=daemon.metrics, web_config=web_config,
                   lifecycle=web.lifecycle, limits=Limits(max_connections=connection_cap(web.max_connections)),
                   on_local_fault=daemon.observe_local_fault)
    daemon.start()
    return daemon, server


def run_until_signalled(daemon: Daemon, server: Any, *, stop: threading.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (reload on SIGHUP); stop within 10 s; return 0."""
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=daemon.reload, daemon=True).start())
    while not stop.wait(0.5):
        pass
    log.info("shutting down", extra={"in_flight": len(daemon.ledger.open_probes())})
    server.close()
    clean = daemon.stop()
    logging.shutdown()
    if not clean:
        # A submission or search still running would hold the exit up to its network timeout; what it was
        # doing is in the state file already and is resolved after the next start.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``mailflow-probe run``."""
    limit_malloc_arenas()  # before the first thread
    configure_logging(args.log_format, args.log_level)
    soft, hard = raise_open_files_limit()
    web = WebOptions(config_file=args.web_config_file, lifecycle=args.web_enable_lifecycle,
                     max_connections=args.web_max_connections)
    log.info("limits", extra={"open_files": soft, "open_files_hard": hard,
                              "web_max_connections": connection_cap(web.max_connections)})
    try:
        daemon, server = start_daemon(Path(args.config_file), listen_address=args.listen_address, web=web,
                                      shard=args.shard)
    except ConfigError as exc:
        print(f"mailflow-probe run: {exc.describe()}", file=sys.stderr)
        return 2
    except (LedgerError, SigningKeyError, OSError, ValueError) as exc:
        print(f"mailflow-probe run: {exc}", file=sys.stderr)
        return 1
    return run_until_signalled(daemon, server)
