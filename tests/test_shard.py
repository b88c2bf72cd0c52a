"""``run --shard K/N``: every (route, smart host) pair in exactly one shard, whatever the order of the config."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from probe.config import Config, ConnectorConfig, EwsConfig, MailboxConfig, RouteConfig, SmartHostConfig, load_config
from probe.lab import Lab
from probe.pipeline import targets
from probe.secret import Secret
from probe.shard import Shard, ShardError, shard_of
from probe.vocabulary import CONNECTOR_PAIR
from tests.daemon_harness import fetch

ROOT = Path(__file__).resolve().parent.parent


def big_config(routes: int = 8, hosts: int = 40) -> Config:
    """Return a config of ``routes`` routes of ``hosts`` smart hosts each, into 4 mailboxes."""
    mailboxes = {f"mb-{i}": MailboxConfig(name=f"mb-{i}", address=f"probe{i}@fourthcoffee.com", backend=EwsConfig(
        url="https://127.0.0.1/EWS/Exchange.asmx", username="svc", password=Secret("pw"))) for i in range(4)}
    built = tuple(RouteConfig(name=f"route-{r}", sender="probe@contoso.com", mailbox=f"mb-{r % 4}", smart_hosts=tuple(
        SmartHostConfig(name=f"edge-{h}", host="127.0.0.1") for h in range(hosts))) for r in range(routes))
    return Config(signing_key_file=Path("key"), state_file=Path("state.db"), mailboxes=mailboxes, routes=built)


def pairs_of(config: Config) -> set[tuple[str, str]]:
    return {(route.name, host.name) for route in config.routes for host in route.smart_hosts}


def shuffled(config: Config, seed: int) -> Config:
    """Return ``config`` with its routes and each route's smart hosts in another order."""
    rng = random.Random(seed)
    routes = [replace(r, smart_hosts=tuple(rng.sample(r.smart_hosts, len(r.smart_hosts)))) for r in config.routes]
    return replace(config, routes=tuple(rng.sample(routes, len(routes))))


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_every_pair_is_in_exactly_one_shard(count: int) -> None:
    """The shards of N partition the pairs: each pair in one shard, none left out, none twice."""
    config = big_config()
    shares = [pairs_of(Shard(k, count).share(config)) for k in range(1, count + 1)]
    assert sum(len(share) for share in shares) == len(pairs_of(config)) == 320
    assert set().union(*shares) == pairs_of(config)


def test_the_share_does_not_depend_on_the_order_of_the_config() -> None:
    """Reordering routes and smart hosts, or adding other pairs, leaves each shard's pairs where they were."""
    config = big_config()
    for k in range(1, 6):
        share = pairs_of(Shard(k, 5).share(config))
        for seed in range(3):
            assert pairs_of(Shard(k, 5).share(shuffled(config, seed))) == share
        bigger = big_config(routes=9, hosts=45)
        assert pairs_of(Shard(k, 5).share(bigger)) & pairs_of(config) == share


def test_shards_are_even_and_one_more_shard_moves_only_its_own_pairs() -> None:
    """At 320 pairs each of 5 shards has 64 +- 25; from 5 to 6 shards only the pairs of the new shard move."""
    config = big_config()
    pairs = sorted(pairs_of(config))
    five = {pair: shard_of(*pair, 5) for pair in pairs}
    sizes = Counter(five.values())
    assert all(39 <= sizes[k] <= 89 for k in range(1, 6)), sizes
    six = {pair: shard_of(*pair, 6) for pair in pairs}
    moved = [pair for pair in pairs if five[pair] != six[pair]]
    assert moved
    assert all(six[pair] == 6 for pair in moved)


def test_a_share_keeps_only_the_mailboxes_its_routes_send_to() -> None:
    """A route without a pair in the shard is left out, and so is a mailbox no kept route sends to."""
    config = big_config(routes=4, hosts=1)
    for k in range(1, 5):
        share = Shard(k, 4).share(config)
        assert {route.mailbox for route in share.routes} == set(share.mailboxes)
        assert all(route.smart_hosts for route in share.routes)


def with_connectors(config: Config) -> Config:
    """Return ``config`` with a connector probe (submit: ews, from the sender's own mailbox "contoso") on every
    other route, and NDRs read from mailbox "bounces"."""
    ews = EwsConfig(url="https://127.0.0.1/EWS/Exchange.asmx", username="svc", password=Secret("pw"))
    mailboxes = {**config.mailboxes, "contoso": MailboxConfig(name="contoso", address="probe@contoso.com", backend=ews),
                 "bounces": MailboxConfig(name="bounces", address="ndr@contoso.com", backend=ews)}
    routes = tuple(replace(route, connector=ConnectorConfig(submit="ews") if i % 2 == 0 else None,
                           bounces_mailbox="bounces") for i, route in enumerate(config.routes))
    return replace(config, mailboxes=mailboxes, routes=routes)


def all_pairs_of(config: Config) -> set[tuple[str, str]]:
    """Return every pair ``config`` probes, connector pairs included."""
    return {target.key for target in targets(config)}


@pytest.mark.parametrize("count", [2, 3, 5])
def test_a_route_with_a_connector_probe_falls_whole_to_one_shard(count: int) -> None:
    """The pairs of a route with a connector probe (its smart hosts and "@connector") are never split: which
    smart host carried a connector probe and the route's diagnosis read all of them; the other routes' pairs
    are shared out one by one; every pair is in exactly one shard."""
    config = with_connectors(big_config(routes=12, hosts=6))
    shares = [Shard(k, count).share(config) for k in range(1, count + 1)]
    pairs = [all_pairs_of(share) for share in shares]
    assert sum(map(len, pairs)) == len(all_pairs_of(config)) == 12 * 6 + 6
    assert set().union(*pairs) == all_pairs_of(config)
    whole = {route.name: route for route in config.routes if route.connector is not None}
    for share in shares:
        for route in share.routes:
            if route.name in whole:
                assert route == whole[route.name]
                assert Shard(shares.index(share) + 1, count).owns(route.name, CONNECTOR_PAIR)
    split = {r.name for share in shares for r in share.routes if r.name not in whole}
    assert sum(1 for share in shares for r in share.routes if r.name in split) > len(split)  # some are split


def test_a_share_keeps_the_mailboxes_its_routes_submit_from_and_read_ndrs_from() -> None:
    """A shard with a connector route (submit: ews) keeps the sender's own mailbox; every shard with a route
    keeps the route's bounces_mailbox; no other mailbox is kept."""
    config = with_connectors(big_config(routes=6, hosts=2))
    for k in range(1, 4):
        share = Shard(k, 3).share(config)
        expected = {route.mailbox for route in share.routes} | ({"bounces"} if share.routes else set())
        if any(route.connector is not None for route in share.routes):
            expected.add("contoso")
        assert set(share.mailboxes) == expected
        targets(share)  # every target's mailboxes are there


@pytest.mark.parametrize(("text", "message"), [
    ("2/5", None), (" 1/1 ", None), ("0/5", "K must be between 1 and N"), ("6/5", "K must be between 1 and N"),
    ("2-5", "write K/N"), ("2/", "write K/N"), ("a/b", "write K/N"), ("1/0", "K must be between 1 and N"),
])
def test_shard_values_parse_or_say_how_to_write_them(text: str, message: str | None) -> None:
    """K/N with 1 <= K <= N parses; anything else is refused with how to write it."""
    if message is None:
        assert str(Shard.parse(text)) == text.strip()
        return
    with pytest.raises(ShardError, match=message):
        Shard.parse(text)


def test_a_bad_shard_flag_is_a_usage_error() -> None:
    """``run --shard 6/5`` exits 2 with one line naming the flag and the rule, no traceback."""
    result = subprocess.run([sys.executable, "-m", "probe", "run", "-c", "config/example.yaml", "--shard", "6/5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "argument --shard: '6/5': K must be between 1 and N" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_sharded_daemons_probe_and_export_disjoint_pairs_that_cover_the_config(lab: Lab, tmp_path: Path) -> None:
    """Daemons on shard 1/2 and 2/2 of one config probe and export disjoint sets of pairs, together all of them,
    also after a reload."""
    from probe.daemon import start_daemon

    path = lab.write_probe_config(tmp_path / "probe.yaml", interval=600, timeout=5, jitter=0)
    seen: list[set[tuple[str, str]]] = []
    for k in (1, 2):
        daemon, server = start_daemon(path, listen_address="127.0.0.1:0", shard=Shard(k, 2))
        try:
            exported = {(line.split('route="')[1].split('"')[0], line.split('smart_host="')[1].split('"')[0])
                        for line in fetch(f"http://127.0.0.1:{server.port}/metrics").splitlines()
                        if line.startswith("mailflow_probe_sent_total{")}
            assert exported == pairs_of(daemon.config)
            assert daemon.reload()[0]
            assert pairs_of(daemon.config) == exported  # a reload keeps the shard's share
            seen.append(exported)
        finally:
            server.close()
            daemon.stop()
    everything = pairs_of(load_config(path))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == everything
