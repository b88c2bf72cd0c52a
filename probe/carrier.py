"""Which smart host carried a connector probe: read from the Received chain the target mailbox holds.

The source forest's Send connector chose the smart host; the probe learns which one from the hop whose
receiving host is one of the route's smart hosts, matched by address (``by HOST (IP)``, Exchange's form, or an
address literal) or by name (the configured host or server_name, or the smart host's name as the first label
of the receiving host: ``fc-edge-1`` is ``FC-EDGE-1.fourthcoffee.com``). The oldest such hop is where the
message entered the target forest. Nothing here touches the network: a host configured by name is matched by
name only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from probe.config import SmartHostConfig
from probe.mailbox.received import Hop

_BY_ADDRESS, _BY_HOST_NAME, _BY_LABEL = 3, 2, 1  # how strongly a hop names a smart host


def _name(text: str | None) -> str:
    return (text or "").strip().strip("[]").rstrip(".").lower()


def _address(text: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(_name(text).removeprefix("ipv6:")))
    except ValueError:
        return None


def match_strength(hop: Hop, host: SmartHostConfig) -> int:
    """Return how strongly ``hop``'s receiving host is ``host``: by address 3, by host name 2, by label 1, else 0."""
    configured = _address(host.host)
    if configured is not None and configured in (hop.by_address, _address(hop.by_host)):
        return _BY_ADDRESS
    receiver = _name(hop.by_host)
    if not receiver:
        return 0
    if receiver in {_name(host.host), _name(host.server_name)} - {""}:
        return _BY_HOST_NAME
    if receiver == host.name.lower() or receiver.partition(".")[0] == host.name.lower():
        return _BY_LABEL
    return 0


def carried_by(hops: Sequence[Hop], smart_hosts: Sequence[SmartHostConfig]) -> str | None:
    """Return the name of the smart host that received the message (the oldest hop that names one), or None."""
    for hop in hops:
        best, chosen = 0, None
        for host in smart_hosts:
            strength = match_strength(hop, host)
            if strength > best:
                best, chosen = strength, host.name
        if chosen is not None:
            return chosen
    return None
