"""What the Received chain of a delivered probe says about its hops: the slowest one, for a gauge.

The confirm step keeps each probe's hops (probe.mailbox.received, oldest first, each with the delay since the
hop before it) in the ledger's detail; this reads them back. A hop's delay is the time between two servers'
stamps, each on its own clock: a skewed clock shows as a negative or inflated delay, as in Exchange's own
message header analysers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

UNKNOWN_HOST = "unknown"


def slowest_hop(hops: Iterable[Mapping[str, Any]]) -> tuple[str, float] | None:
    """Return the receiving host and delay of the hop with the longest delay, or None when no hop has one."""
    slowest: tuple[str, float] | None = None
    for hop in hops:
        delay = hop.get("delay") if isinstance(hop, Mapping) else None
        if not isinstance(delay, int | float) or isinstance(delay, bool) or math.isnan(delay):
            continue
        if slowest is None or delay > slowest[1]:
            host = hop.get("by_host")
            slowest = (str(host) if host else UNKNOWN_HOST, float(delay))
    return slowest
