"""Delivery latency against the lab, over real sockets: the clock calibration and the receipt time it corrects.

These assert on measured values (how far the probe's figures are from the lab's own record), not on speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from probe.config import Config, RouteConfig, load_config
from probe.lab import Lab
from probe.mailbox.base import Sighting
from probe.mailbox.ews import EwsMailbox
from probe.message import build_probe_message
from probe.smtp import SubmitResult, submit

FOREST = "fourthcoffee"
ROUTE = "contoso-to-fourthcoffee"
SMART_HOST = "fourthcoffee-edge-1"
KEY = b"L" * 32
FIND_WITHIN = 15.0  # seconds to look for a delivered probe before the test gives up


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for the module: each test brings its own mailbox object, hence its own clock estimate."""
    with Lab.start(tmp_path_factory.mktemp("lab")) as started:
        yield started


@pytest.fixture
def lab(module_lab: Lab) -> Iterator[Lab]:
    module_lab.clear_faults()
    module_lab.stats.reset()
    yield module_lab
    module_lab.clear_faults()


@pytest.fixture
def config(module_lab: Lab) -> Config:
    return load_config(module_lab.config_path)


@pytest.fixture
def mailbox(config: Config) -> Iterator[EwsMailbox]:
    box = EwsMailbox(config.mailboxes[FOREST], key=KEY)
    yield box
    box.close()


def _route(config: Config) -> RouteConfig:
    return next(r for r in config.routes if r.name == ROUTE)


def _send(config: Config) -> tuple[str, str, SubmitResult]:
    """Submit one probe through the smart host; return its probe id, Message-ID and the submit result."""
    route = _route(config)
    host = next(h for h in route.smart_hosts if h.name == SMART_HOST)
    recipient = route.recipient or config.mailboxes[FOREST].address
    message = build_probe_message(key=KEY, route=ROUTE, smart_host=SMART_HOST, sender=route.sender,
                                  recipient=recipient)
    result = submit(host=host, sender=route.sender, recipient=recipient, message=message.raw)
    assert result.ok, result.error
    return message.probe_id, message.message_id, result


def _find(lab: Lab, mailbox: EwsMailbox, probe_id: str, message_id: str) -> Sighting:
    """Wait for the lab to deliver the probe, then find it with one search (so no polling narrows the clock)."""
    give_up = time.time() + FIND_WITHIN
    while not any(r.message_id == message_id for r in lab.store.records()):
        assert time.time() < give_up, f"the lab did not deliver {message_id} within {FIND_WITHIN} s"
        time.sleep(0.05)
    result = mailbox.search([probe_id], since=time.time() - 60)
    assert result.ok, result.error
    (sighting,) = result.sightings
    return sighting


@pytest.mark.parametrize("offset", [0.0, 30.0, -30.0])
def test_calibration_pins_the_server_clock_offset(lab: Lab, mailbox: EwsMailbox, offset: float) -> None:
    """After calibration the offset is within 0.1 s of the lab's clock_offset, with a handful of GetFolders."""
    if offset:
        lab.add_fault(target=f"ews/{FOREST}", kind="clock_offset", seconds=offset)
    estimate = mailbox.calibrate_clock(target_uncertainty=0.05, budget_seconds=5.0)
    assert estimate is not None
    assert estimate.low <= offset <= estimate.high
    assert abs(estimate.offset - offset) <= 0.1
    assert mailbox.clock_uncertainty is not None
    assert mailbox.clock_uncertainty <= 0.05
    requests = lab.stats.ews_requests("GetFolder", forest=FOREST)
    assert 1 <= requests <= 8
    assert mailbox.clock.resets == 0  # every response's Date, 401s included, follows the forest's clock


def test_a_calibrated_clock_costs_nothing_more(lab: Lab, mailbox: EwsMailbox) -> None:
    """A second calibration of the same mailbox object, and searches after it, send no timed requests."""
    first = mailbox.calibrate_clock()
    assert first is not None
    spent = lab.stats.ews_requests("GetFolder", forest=FOREST)
    for _ in range(3):
        assert mailbox.search(["none"], since=time.time() - 60).ok
        again = mailbox.calibrate_clock()
        assert again is not None
        assert again.uncertainty <= first.uncertainty
    assert lab.stats.ews_requests("GetFolder", forest=FOREST) == spent


def test_an_unreachable_server_ends_calibration_without_an_estimate(lab: Lab, mailbox: EwsMailbox) -> None:
    """With the EWS endpoint dropping every connection, calibration returns None at once and never raises."""
    lab.add_fault(target=f"ews/{FOREST}", kind="unreachable")
    assert mailbox.calibrate_clock(budget_seconds=2.0) is None
    assert mailbox.clock_uncertainty is None


@pytest.mark.parametrize(("delay", "offset"), [(2.0, 0.0), (2.0, -30.0), (0.0, 30.0)])
def test_latency_matches_the_labs_record(lab: Lab, config: Config, mailbox: EwsMailbox, delay: float,
                                         offset: float) -> None:
    """A probe held back by the smart host for ``delay`` s is reported within 0.25 s of it, clock skew or not."""
    if offset:
        lab.add_fault(target=f"ews/{FOREST}", kind="clock_offset", seconds=offset)
    if delay:
        lab.add_fault(target=f"smarthost/{SMART_HOST}", kind="delay_delivery", seconds=delay)
    probe_id, message_id, sent = _send(config)
    assert mailbox.calibrate_clock() is not None  # while the smart host holds the probe back
    sighting = _find(lab, mailbox, probe_id, message_id)
    (record,) = [r for r in lab.store.records() if r.message_id == message_id]
    assert sent.accepted_at is not None
    assert record.accepted_at is not None
    measured = sighting.received_local - sent.accepted_at
    truth = record.delivered_at - record.accepted_at
    assert abs(measured - delay) <= 0.25
    assert abs(measured - truth) <= 0.1
    assert abs(sighting.received_local - record.delivered_at) <= 0.1  # the lab and the probe share one clock
    assert sighting.received_local <= sighting.first_seen_local
    assert sighting.received_uncertainty <= 0.1

