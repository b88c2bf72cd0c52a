"""Crashes and restarts: kill -9 mid-submit, mid-search, mid-cleanup; broken, read-only and full state files.

Each daemon runs as its own process (``python -m probe run``) and logs to a file; a probe's verdict lines
are counted from that file: exactly one per probe, or two where the ledger allows a second (found after
lost or unknown), and every probe open before a crash is resolved after the restart.
"""

from __future__ import annotations

import contextlib
import functools
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from probe.lab import Lab
from probe.ledger import Ledger
from tests.daemon_harness import EVENT_WAIT, bound_port, ledger_made, start_process, states, still_running

OPEN: Final = ("submitting", "in_flight")
VERDICTS: Final = ("delivered", "send_failed", "lost", "late", "unknown")
ALLOWED_TWICE: Final = (["lost", "late"], ["unknown", "delivered"], ["unknown", "late"])
VERDICT_LINE: Final = re.compile(r"verdict=(\w+).*probe_id=(\w+)")


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, or fail saying ``what`` did not happen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def verdicts_by_probe(log: Path) -> dict[str, list[str]]:
    """Return each probe's verdict lines in the daemon log, in order."""
    found: dict[str, list[str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = VERDICT_LINE.search(line)
        if match and "msg=\"probe " in line:
            found.setdefault(match.group(2), []).append(match.group(1))
    return found


def decided(state_file: Path) -> dict[str, str]:
    """Return the probes with a verdict in the state file, and that verdict."""
    return {pid: state for pid, state in states(state_file).items() if state in VERDICTS}


def assert_counted_once(log: Path, probe_ids: dict[str, str], *, may_lack_line: set[str] | None = None) -> None:
    """Every probe id has one verdict line, or two in an order the ledger allows; none has none (except those
    in ``may_lack_line``: decided just before a kill -9, between the state file's commit and the log line)."""
    lines = verdicts_by_probe(log)
    for pid, state in probe_ids.items():
        got = lines.get(pid, [])
        if not got and pid in (may_lack_line or set()):
            continue
        assert len(got) == 1 or got in ALLOWED_TWICE, (pid, state, got)
    doubled = {pid: v for pid, v in lines.items() if len(v) > 1 and v not in ALLOWED_TWICE}
    assert not doubled


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM a daemon and return its exit code (kill it if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return -9
    return int(proc.returncode)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def config_for(lab: Lab, tmp_path: Path, *, timeout: float, state_file: Path | None = None) -> tuple[Path, Path]:
    """Write a config probing every pair each second; return it and its state file."""
    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=1, timeout=timeout, jitter=0.2)
    data = yaml.safe_load(path.read_text())
    if state_file is not None:
        data["state_file"] = str(state_file)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, Path(data["state_file"])


def sightings(state_file: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(state_file, timeout=10)
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT probe_id, cleaned FROM sightings")]
    finally:
        db.close()


def crash_then_restart(lab: Lab, tmp_path: Path, *, timeout: float, ready: Callable[[Path], bool],
                       fault_targets: list[tuple[str, dict[str, Any]]],
                       settled: Callable[[Path], bool] = lambda _: True) -> tuple[Path, Path, dict[str, str]]:
    """Put faults in force, start a daemon, kill -9 it once ``ready(state_file)``, clear the faults, restart
    it, and wait until every probe open at the kill is resolved; return the state file, log and those ids."""
    config, state_file = config_for(lab, tmp_path, timeout=timeout)
    for target, fault in fault_targets:
        lab.add_fault(target=target, **fault)
    log = tmp_path / "daemon.log"
    first = start_process(config, log)
    try:
        wait_for(lambda: still_running(first, log) and ledger_made(state_file) and ready(state_file),
                 timeout=EVENT_WAIT, what="the moment to crash")
        kill_9(first)
    finally:
        if first.poll() is None:
            kill_9(first)
    lab.clear_faults()
    open_at_kill = {pid for pid, state in states(state_file).items() if state in OPEN}
    second = start_process(config, log)
    try:
        wait_for(lambda: still_running(second, log)
                 and all(states(state_file)[pid] in VERDICTS for pid in open_at_kill) and settled(state_file),
                 timeout=2 * timeout + EVENT_WAIT, what="every probe open at the kill resolved after the restart")
    finally:
        assert stop(second) == 0
    return state_file, log, {pid: states(state_file)[pid] for pid in open_at_kill}


def all_hosts(lab: Lab, **fault: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(h.target, fault) for h in lab.smart_hosts]


@pytest.mark.slow
def test_kill_9_during_submission_then_restart_never_reports_those_probes_lost(lab: Lab, tmp_path: Path) -> None:
    """kill -9 while every smart host stalls in DATA: after the restart each probe caught mid-submission gets
    one verdict, never lost (the smart host never accepted it)."""
    def stalled(state_file: Path) -> bool:
        db = sqlite3.connect(state_file, timeout=10)
        try:
            old = db.execute("SELECT COUNT(*) FROM probes WHERE state = 'submitting' AND created_at < ?",
                             (time.time() - 1.5,)).fetchone()[0]
        finally:
            db.close()
        return bool(old >= 3)

    state_file, log, caught = crash_then_restart(
        lab, tmp_path, timeout=3, ready=stalled, fault_targets=all_hosts(lab, kind="slow", stage="data", seconds=30))
    final = states(state_file)
    assert len([pid for pid in caught if final[pid] == "unknown"]) >= 3
    assert not [pid for pid in caught if final[pid] == "lost"]
    assert_counted_once(log, caught)


def message_ids(state_file: Path) -> dict[str, str]:
    """Return each probe's Message-ID in the state file."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        return dict(db.execute("SELECT probe_id, message_id FROM probes").fetchall())
    finally:
        db.close()


@pytest.mark.slow
def test_kill_9_during_a_search_then_restart_delivers_each_probe_once(lab: Lab, tmp_path: Path) -> None:
    """kill -9 while the mailboxes answer slowly (a search in progress): the restarted daemon finds the
    probes already in the mailbox and counts each exactly once.

    Before the kill the smart hosts refuse new connections, so that the kill catches probes in flight
    rather than midway through a submission; one caught midway all the same (the scheduler may start one
    just before the kill) is delivered if the lab's smart host took it and unknown if not, never lost:
    the lab's own record of deliveries says which. The timeout is long, so that however slowly a loaded
    machine restarts the daemon, the probes in the mailbox are searched for before they could be unknown.
    """
    refusing: list[bool] = []

    def searching(state_file: Path) -> bool:
        now = list(states(state_file).values())
        if now.count("in_flight") < 3:  # each search now takes 30 s
            return False
        if not refusing:
            refusing.append(True)
            for host in lab.smart_hosts:
                lab.add_fault(target=host.target, kind="refuse_connections")
        return "submitting" not in now

    slow = [(f"ews/{forest}", {"kind": "slow", "seconds": 30}) for forest in lab.forests]
    state_file, log, caught = crash_then_restart(lab, tmp_path, timeout=60, ready=searching, fault_targets=slow)
    final, ids = states(state_file), message_ids(state_file)
    arrived = {record.message_id for record in lab.store.records()}
    in_mailbox = {pid for pid in caught if ids[pid] in arrived}
    assert len(in_mailbox) >= 3
    assert {final[pid] for pid in in_mailbox} <= {"delivered", "late"}
    assert {final[pid] for pid in set(caught) - in_mailbox} <= {"unknown"}
    assert_counted_once(log, caught)


@pytest.mark.slow
def test_kill_9_during_cleanup_then_restart_cleans_up_once_and_counts_nothing_twice(lab: Lab,
                                                                                    tmp_path: Path) -> None:
    """kill -9 after probes were counted and before their messages were deleted: the restarted daemon
    verifies and deletes them, the mailbox ends with no probe message, and no verdict is repeated.

    The mailboxes turn slow (2 s a request, so a cleanup lasts long enough to be caught) once each has been
    searched: the daemon's clock calibration and first searches run at full speed, and only sightings made
    after that, whose cleanup is slow, count as caught. So the timeout can be short (8 s): what it bounds is
    how long a probe the kill caught mid-submission (never delivered) waits to be unknown, twice the timeout."""
    before_slow: list[set[str]] = []  # the probes sighted before the mailboxes turned slow, once they have
    uncleaned: set[str] = set()

    def cleaning_remembered(state_file: Path) -> bool:
        found = sightings(state_file)
        if not before_slow:
            if delivered_to_every_mailbox(lab, state_file):
                before_slow.append({pid for pid, _ in found})
                for forest in lab.forests:
                    lab.add_fault(target=f"ews/{forest}", kind="slow", seconds=2)
            return False
        uncleaned.update(pid for pid, cleaned in found if cleaned == 0 and pid not in before_slow[0])
        return bool(uncleaned)

    def all_cleaned(state_file: Path) -> bool:
        return all(cleaned == 1 for _, cleaned in sightings(state_file))

    state_file, log, _ = crash_then_restart(lab, tmp_path, timeout=8, ready=cleaning_remembered,
                                            fault_targets=[], settled=all_cleaned)
    counted = {pid: states(state_file)[pid] for pid, _ in sightings(state_file)}
    assert uncleaned <= set(counted)
    assert set(counted.values()) <= {"delivered", "late"}
    for address in lab.store.addresses():
        left = [i for i in lab.store.items(address, ["inbox", "junkemail"]) if any(p in i.subject for p in counted)]
        assert not left
    assert_counted_once(log, counted, may_lack_line=uncleaned)


def delivered_to_every_mailbox(lab: Lab, state_file: Path) -> bool:
    """Say whether the state file holds a delivered probe in each of the lab's probe mailboxes."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        found = {row[0] for row in db.execute("SELECT DISTINCT mailbox FROM probes WHERE state = 'delivered'")}
    finally:
        db.close()
    return found >= {route.mailbox for route in lab.routes}


# -- state files that are broken, read-only or on a full disk -----------------------------------------------------


def run_once(config: Path, *, seconds: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the daemon until it exits by itself (it should, at start-up) and return its outcome."""
    return subprocess.run([sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address",
                           "127.0.0.1:0"], capture_output=True, text=True, timeout=seconds, check=False)


def filled_state_file(path: Path, probes: int = 400) -> bytes:
    """Write a real state file of ``probes`` decided probes (checkpointed, no WAL) and return its bytes."""
    ledger = Ledger(path)
    for n in range(probes):
        ledger.open_probe(probe_id=f"{n:016x}", route="r", smart_host="h", mailbox="m",
                          message_id=f"<{n}@x>", deadline=time.time() - 10)
    ledger.expire(unknown_after=0)
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated to half", "truncated to 100 bytes", "pages overwritten"])
def test_a_truncated_or_corrupt_state_file_stops_start_up_with_a_clear_error_and_is_kept(
        lab: Lab, tmp_path: Path, damage: str) -> None:
    """A state file cut short or with pages overwritten: exit 1 naming the file, no traceback, the file as
    it was (so it can be inspected or moved aside)."""
    config, state_file = config_for(lab, tmp_path, timeout=5)
    good = filled_state_file(state_file)
    if damage == "truncated to half":
        broken = good[: len(good) // 2]
    elif damage == "truncated to 100 bytes":
        broken = good[:100]
    else:
        broken = good[:4096] + bytes(range(256)) * ((len(good) - 4096) // 256)
    state_file.write_bytes(broken)
    proc = run_once(config)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(state_file) in proc.stderr
    assert state_file.read_bytes() == broken


def test_an_empty_state_file_or_a_stale_wal_beside_a_good_one_starts_cleanly(lab: Lab, tmp_path: Path) -> None:
    """A zero-byte state file is a new one; junk in the -wal file beside a good state file is ignored and the
    probes recorded before are kept."""
    config, state_file = config_for(lab, tmp_path, timeout=5)
    for prepare in ("empty", "stale wal"):
        if prepare == "empty":
            state_file.write_bytes(b"")
        else:
            state_file.unlink()
            filled_state_file(state_file, probes=10)
            Path(f"{state_file}-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(5000))
        log = tmp_path / f"{prepare}.log"
        proc = start_process(config, log)
        try:
            port = bound_port(proc, log)
            url = f"http://127.0.0.1:{port}/-/ready"
            wait_for(functools.partial(ready_at, proc, log, url), timeout=EVENT_WAIT, what="ready")
        finally:
            assert stop(proc) == 0
        if prepare == "stale wal":
            assert len(states(state_file)) >= 10


def ready_at(proc: subprocess.Popen[bytes], log: Path, url: str) -> bool:
    """Say whether the daemon, still running, answers 200 at ``url``."""
    return still_running(proc, log) and get_ok(url)


def get_ok(url: str) -> bool:
    """Say whether a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return int(resp.status) == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Disk:
    """A small filesystem for a state file: a mounted tmpfs, or a plain directory where mount is not allowed."""

    path: Path
    mounted: bool


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Disk]:
    """A 2 MiB tmpfs mounted for the test (the tests run as root in CI), else a plain directory."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    try:
        yield Disk(mount_point, mounted=done.returncode == 0)
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True, capture_output=True)


def test_a_state_file_in_a_read_only_directory_stops_start_up_with_a_clear_error(lab: Lab, tmp_path: Path,
                                                                                small_disk: Disk) -> None:
    """The state file's directory is on a read-only filesystem: the config check (validate's) stops start-up,
    exit 2, with file, line and field and the state file named; no traceback."""
    if not small_disk.mounted:
        pytest.skip("mount is not allowed here, and permissions do not stop root")
    remount(small_disk.path, "ro")
    config, state_file = config_for(lab, tmp_path, timeout=5, state_file=small_disk.path / "state.db")
    proc = run_once(config)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"state_file: cannot create {state_file}: {small_disk.path} is not writable" in proc.stderr


def start_logged_through_a_pipe(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the daemon with its output copied to ``log`` by this process (so a file size limit on the daemon
    does not also silence its log)."""
    proc = subprocess.Popen([sys.executable, "-m", "probe", "run", "-c", str(config), "--web.listen-address",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def copy() -> None:
        assert proc.stdout is not None
        with log.open("ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()

    threading.Thread(target=copy, daemon=True).start()
    return proc


def outage_then_recovery(lab: Lab, tmp_path: Path, disk: Path, *, break_it: Callable[[int], None],
                         mend_it: Callable[[int], None]) -> tuple[Path, Path]:
    """Run the daemon on ``disk``, break the disk for 8 s, mend it; return the state file and log after every
    probe is resolved. The daemon must stay up throughout."""
    config, state_file = config_for(lab, tmp_path, timeout=4, state_file=disk / "state.db")
    log = tmp_path / "daemon.log"
    proc = start_logged_through_a_pipe(config, log)
    try:
        port = bound_port(proc, log)
        wait_for(lambda: still_running(proc, log) and ledger_made(state_file)
                 and "delivered" in states(state_file).values(), timeout=EVENT_WAIT,
                 what="probes delivered before the outage")
        break_it(proc.pid)
        time.sleep(8)
        assert proc.poll() is None, "the daemon died when its state file could not be written"
        assert get_ok(f"http://127.0.0.1:{port}/metrics")
        mend_it(proc.pid)
        mark = time.time()
        wait_for(lambda: any(state == "delivered" for pid, state in states(state_file).items()
                             if created_after(state_file, pid, mark)), timeout=EVENT_WAIT, what="probing resumed")
        wait_for(lambda: not [s for s in states(state_file).values() if s in OPEN] or only_recent_open(state_file),
                 timeout=EVENT_WAIT, what="the probes of the outage resolved")
    finally:
        code = stop(proc)
    assert code == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    return state_file, log


def created_after(state_file: Path, probe_id: str, mark: float) -> bool:
    db = sqlite3.connect(state_file, timeout=10)
    try:
        row = db.execute("SELECT created_at FROM probes WHERE probe_id = ?", (probe_id,)).fetchone()
    finally:
        db.close()
    return row is not None and row[0] > mark


def only_recent_open(state_file: Path) -> bool:
    """Say whether every open probe is younger than its timeout (still legitimately in flight)."""
    db = sqlite3.connect(state_file, timeout=10)
    try:
        stale = db.execute("SELECT COUNT(*) FROM probes WHERE state IN ('submitting', 'in_flight') AND deadline"
                           " + 10 < ?", (time.time(),)).fetchone()[0]
    finally:
        db.close()
    return bool(stale == 0)


@pytest.mark.slow
def test_a_full_disk_is_reported_and_probing_resumes_when_space_is_freed(lab: Lab, tmp_path: Path,
                                                                        small_disk: Disk) -> None:
    """The filesystem fills up mid-run: the daemon stays up and logs that the disk is full; once space is
    freed it probes again, and no probe is counted twice."""
    if not small_disk.mounted:
        pytest.skip("mount is not allowed here: the file size limit test covers a state file that cannot grow")
    filler = small_disk.path / "filler"

    def fill(_pid: int) -> None:
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:  # unbuffered: close cannot fail
            while True:
                out.write(bytes(65536))

    state_file, log = outage_then_recovery(lab, tmp_path, small_disk.path, break_it=fill,
                                           mend_it=lambda _pid: filler.unlink())
    assert "disk is full" in log.read_text()
    assert_counted_once(log, decided(state_file))


@pytest.mark.slow
def test_a_state_file_that_hits_the_file_size_limit_is_reported_without_a_traceback_and_probing_resumes(
        lab: Lab, tmp_path: Path) -> None:
    """The daemon's file size limit cut to 4 KiB mid-run (writes fail with EFBIG): it stays up, every job
    reports that the state file cannot be written in one line (no traceback), and after the limit is lifted
    it probes again, counting no probe twice."""
    def limit(pid: int) -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # SIGXFSZ ignored: EFBIG

    def unlimit(pid: int) -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    disk = tmp_path / "disk"
    disk.mkdir()
    state_file, log = outage_then_recovery(lab, tmp_path, disk, break_it=limit, mend_it=unlimit)
    assert "state file cannot be written" in log.read_text()
    assert_counted_once(log, decided(state_file))
