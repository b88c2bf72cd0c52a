"""One instance's share of a large route list: ``run --shard K/N`` probes the pairs that fall to shard K of N.

Each (route, smart host) pair falls to exactly one of N shards, by rendezvous (highest random weight) hashing
of its route and smart host names: the pair goes to the shard whose SHA-256 of (route, smart host, shard)
is highest. The share depends on the names only, so reordering the config, adding or removing other pairs,
or reloading never moves a pair; going from N to N+1 shards moves only the pairs the new shard takes (about
1/(N+1) of them), each from the shard that had it. Every instance reads the same config file; each keeps
the routes with a pair of its share (only those smart hosts) and the mailboxes they send to, read from or
submit from.

A route with a connector probe falls whole to the shard of its connector pair (route, "@connector"): which
smart host carried a connector probe, and the diagnosis across both kinds of probe, are read against all of
the route's smart hosts, so its pairs are never split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Final

from probe.config import Config, RouteConfig
from probe.vocabulary import CONNECTOR_PAIR

_FORM: Final = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")


class ShardError(ValueError):
    """A ``--shard`` value that is not K/N with 1 <= K <= N; the message says how to write it."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Return the shard ``K/N`` names, or raise ShardError."""
        match = _FORM.fullmatch(text.strip())
        if match is None:
            raise ShardError(f"{text!r}: write K/N, this instance's shard K of N (for example 2/5)")
        index, count = int(match.group(1)), int(match.group(2))
        if not 1 <= index <= count:
            raise ShardError(f"{text!r}: K must be between 1 and N (shards are numbered 1 to {max(count, 1)})")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, route: str, smart_host: str) -> bool:
        """Say whether the pair (route, smart host) falls to this shard."""
        return shard_of(route, smart_host, self.count) == self.index

    def share(self, config: Config) -> Config:
        """Return ``config`` with only this shard's pairs, and the mailboxes its routes send to, read their NDRs
        from or submit their connector probes from (``submit: ews``: the sender's own mailbox)."""
        routes = [route for route in map(self._share_of, config.routes) if route is not None]
        used: set[str | None] = {route.mailbox for route in routes}
        for route in routes:
            used.add(config.bounces_mailbox_of(route))
            sender = config.sender_mailbox(route) if route.connector is not None else None
            used.add(sender.name if sender is not None else None)
        mailboxes = {name: mailbox for name, mailbox in config.mailboxes.items() if name in used}
        return replace(config, routes=tuple(routes), mailboxes=mailboxes)

    def _share_of(self, route: RouteConfig) -> RouteConfig | None:
        """Return the part of ``route`` in this shard (all of it or none, with a connector probe), or None."""
        if route.connector is not None:
            return route if self.owns(route.name, CONNECTOR_PAIR) else None
        hosts = tuple(host for host in route.smart_hosts if self.owns(route.name, host.name))
        return replace(route, smart_hosts=hosts) if hosts else None


def shard_of(route: str, smart_host: str, count: int) -> int:
    """Return the shard (1 to ``count``) the pair falls to: the one with the highest weight."""
    def weight(shard: int) -> bytes:
        return hashlib.sha256(f"{route}\x00{smart_host}\x00{shard}".encode()).digest()

    return max(range(1, count + 1), key=weight)
