"""Two daemons probe through the same smart hosts into the same mailboxes: each counts its own probes, only.

Two ``mailflow-probe run`` processes, each with its own state file, share one lab (its smart hosts and probe
mailboxes) for three probe intervals, once with the same signing key and once with different keys. What
identifies an instance's own probe is its ledger's probe id (a tag verifying is not enough when the key is
shared). Each daemon must count exactly its own probes as delivered (its /metrics and its ledger agree with
what the lab's mailboxes received of its probes), declare none lost, and never delete the other's messages:
one of the two keeps what it finds (``cleanup: keep``), so every message of its own must still be in the
Inbox at the end, while the other moves its own (and only its own) to Deleted Items.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.lab import Lab
from probe.message import parse_tag
from tests.daemon_harness import bound_port, fetch, scrape, start_process, value, wait_for

INTERVAL = 1.0
INTERVALS = 3
TIMEOUT = 10.0
PAIRS = 4  # the lab's 2 forests x 2 smart hosts


@dataclass
class Instance:
    """One daemon process: its name, config, state file, port and log."""

    name: str
    config: Path
    state: Path
    log: Path
    port: int = 0  # the port the daemon bound (it listens on port 0), read once it runs

    def ledger(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Return the rows of a query on the daemon's state file (read-only)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.state}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql, args).fetchall()

    def ids(self, state: str | None = None) -> set[str]:
        """Return the probe ids of the daemon's ledger (in one state, or all)."""
        if state is None:
            return {row[0] for row in self.ledger("SELECT probe_id FROM probes")}
        return {row[0] for row in self.ledger("SELECT probe_id FROM probes WHERE state = ?", state)}


def write_instance(lab: Lab, folder: Path, name: str, *, key: Path, cleanup: str) -> Instance:
    """Write one instance's config for the lab: its own state file, the given key file and cleanup."""
    path = lab.write_probe_config(folder / f"{name}.yaml", interval=INTERVAL, timeout=TIMEOUT, jitter=0)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    state = folder / name / "state.db"
    state.parent.mkdir(parents=True)
    config["state_file"], config["signing_key_file"] = str(state), str(key)
    for mailbox in config["mailboxes"].values():
        mailbox["cleanup"] = cleanup
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Instance(name, path, state, folder / f"{name}.log")


@contextlib.contextmanager
def running(instances: list[Instance]) -> Iterator[None]:
    """Run each instance as its own ``mailflow-probe run`` process on a port the kernel picks (its ``port`` once it
    listens); SIGTERM them all at the end."""
    processes = [start_process(i.config, i.log) for i in instances]
    try:
        for instance, process in zip(instances, processes, strict=True):
            instance.port = bound_port(process, instance.log)
            def ready(instance: Instance = instance, process: Any = process) -> bool:
                assert process.poll() is None, instance.log.read_text(errors="replace")[-3000:]
                with contextlib.suppress(OSError):
                    return bool(fetch(f"http://127.0.0.1:{instance.port}/-/ready"))
                return False
            wait_for(ready, timeout=60, what=f"{instance.name} ready")
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def lab_probe_ids(lab: Lab, folder: str) -> set[str]:
    """Return the probe ids of the tagged messages in one folder of every probe mailbox of the lab."""
    found = set()
    for address in lab.store.addresses():
        for item in lab.store.items(address, [folder]):
            tag = parse_tag(item.subject)
            if tag is not None:
                found.add(tag.probe_id)
    return found


def counted_delivered(instance: Instance) -> tuple[dict[Any, float], int]:
    """Return the daemon's /metrics and its ledger's count of delivered probes, read at one moment.

    The ledger is read before and after the scrape until both reads agree (no verdict between them).
    """
    for _ in range(50):
        before = len(instance.ids("delivered"))
        samples = scrape(instance.port)
        if len(instance.ids("delivered")) == before:
            return samples, before
    raise AssertionError(f"{instance.name}: the ledger never held still around a scrape")


def decided(instance: Instance, before: float) -> bool:
    """Say whether every probe the instance created before ``before`` has a verdict."""
    rows = instance.ledger("SELECT COUNT(*) FROM probes WHERE created_at < ? AND state IN ('submitting', "
                           "'in_flight')", before)
    return int(rows[0][0]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "different-keys"])
def test_two_daemons_on_the_same_mailboxes_count_only_their_own(tmp_path: Path, same_key: bool) -> None:
    """Over three intervals each daemon counts exactly its own probes delivered, none lost, and neither
    deletes the other's messages; with different keys each sees the other's as forged tags (never counted)."""
    with Lab.start(tmp_path / "lab") as lab:
        key_a = tmp_path / "a.key"
        key_b = key_a if same_key else tmp_path / "b.key"
        # One keeps what it finds, so the other's cleanup shows whether it ever touches a message not its own.
        mover, keeper = (("a", "b") if same_key else ("b", "a"))
        a = write_instance(lab, tmp_path, "a", key=key_a, cleanup="move_to_deleted_items" if mover == "a" else "keep")
        b = write_instance(lab, tmp_path, "b", key=key_b, cleanup="move_to_deleted_items" if mover == "b" else "keep")
        by_name = {"a": a, "b": b}
        with running([a, b]):
            start = time.time()
            time.sleep(INTERVAL * INTERVALS)
            window_end = time.time()
            wait_for(lambda: decided(a, window_end) and decided(b, window_end), timeout=TIMEOUT + 20,
                     what="every probe of the window decided")
            time.sleep(INTERVAL)  # one more round: the mover's cleanup of the last arrivals
            metrics = {i.name: counted_delivered(i) for i in (a, b)}
        inbox, deleted = lab_probe_ids(lab, "inbox"), lab_probe_ids(lab, "deleteditems")

    for instance in (a, b):
        samples, ledger_delivered = metrics[instance.name]
        window = {row[0] for row in instance.ledger("SELECT probe_id FROM probes WHERE created_at >= ? AND "
                                                    "created_at < ?", start, window_end)}
        states = dict(instance.ledger("SELECT state, COUNT(*) FROM probes GROUP BY state"))
        forged = value(samples, "mailflow_probe_forged_tags_total")
        print(f"{instance.name}: {len(window)} probes in the window, ledger at the end {states}, /metrics "
              f"delivered {value(samples, 'mailflow_probe_delivered_total'):g}, forged tags seen {forged:g}")
        assert len(window) >= PAIRS * (INTERVALS - 1), "too few probes in the window"
        assert window <= instance.ids("delivered"), f"{instance.name}: a probe of the window was not delivered"
        assert window <= inbox | deleted  # each of them did arrive, once, in a probe mailbox
        assert states.get("lost", 0) == 0
        assert value(samples, "mailflow_probe_lost_total") == 0
        # It counts exactly its own: /metrics says what its ledger says, not one of the other's more.
        assert value(samples, "mailflow_probe_delivered_total") == ledger_delivered
        assert not instance.ids() & (b if instance is a else a).ids()
        assert forged == 0 if same_key else forged > 0
    keeping, moving = by_name[keeper], by_name[mover]
    # The keeper's messages are all where they arrived: the mover never touched one of them.
    assert keeping.ids("delivered") <= inbox
    assert not keeping.ids() & deleted
    # The mover moved its own (it does clean up), and nothing in Deleted Items is not its own.
    assert moving.ids("delivered") & deleted
    assert deleted <= moving.ids()
