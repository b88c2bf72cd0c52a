"""The lab's mailboxes over Microsoft Graph: per forest, a tenant with one app registration and its Graph endpoint.

Started when the lab runs with ``mailbox_backend="graph"``. Each forest is a tenant (its id and the app's
client id derived from the forest's domain, so they stay the same across runs); the app proves itself with a
client secret or its certificate (a self-signed RSA one, as admins upload); the endpoint serves the mailbox
store that the smart hosts deliver into.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from probe.lab.ca import LabCA
from probe.lab.faults import FaultRegistry
from probe.lab.graph import AppRegistration, GraphServer, Tenant
from probe.lab.graph.tokens import app_certificate, pem_of
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.secret import Secret

GRAPH_HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class GraphApp:
    """What the probe needs to reach one forest's mailboxes over the lab's Graph: where, and as which app."""

    url: str  # both the authority and the Graph endpoint
    tenant_id: str
    client_id: str
    secret: Secret
    certificate_pem: str  # the app's certificate and private key


def tenant_id_of(domain: str) -> str:
    """Return a forest's tenant id: stable for its domain."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"tenant.{domain}"))


def client_id_of(domain: str) -> str:
    """Return the client id of a forest's mailflow-probe app registration."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"mailflow-probe.{domain}"))


class GraphWing:
    """Every forest's Graph endpoint and its tenant."""

    def __init__(self, *, store: MailboxStore, faults: FaultRegistry, stats: LabStats, ca: LabCA,
                 forests: Mapping[str, tuple[str, Secret]], clock: Callable[[str], float]) -> None:
        self._store, self._faults, self._stats, self._ca, self._clock = store, faults, stats, ca, clock
        self._forests = dict(forests)  # name -> (domain, client secret)
        self._servers: list[GraphServer] = []
        self.apps: dict[str, GraphApp] = {}
        self.tenants: dict[str, Tenant] = {}

    def start(self, *, fixed_port: Callable[[int], int] | None = None) -> None:
        """Start each forest's endpoint (on its fixed port when asked); raise OSError when one cannot listen."""
        for index, (name, (domain, secret)) in enumerate(self._forests.items()):
            cert, key = app_certificate(f"mailflow-probe {domain}")
            app = AppRegistration(client_id=client_id_of(domain), secret=secret, certificate=cert,
                                  certificate_key=key)
            tenant = Tenant(tenant_id=tenant_id_of(domain), apps={app.client_id: app})
            context = self._ca.issue(f"graph-{name}", [GRAPH_HOST, "localhost", f"graph.{domain}"]).server_context()
            server = GraphServer(name, tenant=tenant, store=self._store, faults=self._faults, stats=self._stats,
                                 ssl_context=context, clock=lambda n=name: self._clock(n),  # type: ignore[misc]
                                 host=GRAPH_HOST, port=fixed_port(index) if fixed_port else 0)
            self._servers.append(server)
            server.start()
            self.tenants[name] = tenant
            self.apps[name] = GraphApp(url=server.url, tenant_id=tenant.tenant_id, client_id=app.client_id,
                                       secret=secret, certificate_pem=pem_of(cert, key))

    def stop(self) -> None:
        """Stop every endpoint (safe to call twice)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()
