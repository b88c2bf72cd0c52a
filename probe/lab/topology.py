"""The lab as a whole: forests with smart hosts, mailboxes and EWS endpoints, started as one context manager.

    with Lab.start(tmp_path) as lab:
        host = lab.smart_host("fourthcoffee-edge-1")
        ...

It writes ``lab.json`` (where everything is) and ``probe.yaml`` (a ready probe configuration) into its
state directory, with each password in a 0600 file under ``secrets/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import yaml

from probe.lab.admin import AdminServer
from probe.lab.ca import LabCA
from probe.lab.dovecot import DovecotError
from probe.lab.ews.server import EwsServer
from probe.lab.exchange import TARPIT_SECONDS
from probe.lab.faults import EwsFault, Fault, FaultError, FaultRegistry, parse_fault
from probe.lab.graph_wing import GraphApp, GraphWing
from probe.lab.imap_wing import ImapWing
from probe.lab.smarthost import MAX_FORESTS, LabSmartHost, SmartHostFleet, smart_host_address
from probe.lab.stats import LabStats
from probe.lab.store import MailboxStore
from probe.lab.submission import SubmissionPort, SubmissionServers
from probe.lab.transport import (
    MailboxNotices,
    NoticeSink,
    RecordedNotices,
    SendConnector,
    SourceTransport,
    TransportTiming,
)
from probe.secret import Secret

FIXED_SMTP_PORT: Final = 2525  # every smart host, each on its own loopback address
FIXED_SUBMISSION_PORT: Final = 2587  # every forest's client submission port, on its transport's own address
FIXED_EWS_HTTPS_PORT: Final = 8443  # forest i (in order) gets 8443 + i on 127.0.0.1
FIXED_EWS_HTTP_PORT: Final = 8090  # forest i gets 8090 + i on 127.0.0.1
FIXED_ADMIN_PORT: Final = 9426
FIXED_IMAPS_PORT: Final = 8993  # forest i gets 8993 + i (IMAPS) and 8143 + i (IMAP with STARTTLS)
FIXED_IMAP_STARTTLS_PORT: Final = 8143
FIXED_GRAPH_PORT: Final = 8463  # forest i gets 8463 + i
EWS_HOST: Final = "127.0.0.1"
EWS_PATH: Final = "/EWS/Exchange.asmx"
_FOREST_NAME: Final = re.compile(r"^[a-z][a-z0-9]{0,30}$")

EwsAuth = Literal["ntlm", "basic"]
ConnectorSubmit = Literal["ews", "smtp"]


def transport_address(forest_index: int) -> str:
    """Return the loopback address of a forest's own server (its transport and submission port), 0-based."""
    if not 0 <= forest_index < MAX_FORESTS:
        raise ValueError(f"a lab holds at most {MAX_FORESTS} forests")
    return f"127.15.{forest_index}.1"
MailboxBackend = Literal["ews", "imap", "graph"]
MAILBOX_BACKENDS: Final = ("ews", "imap", "graph")


class LabError(Exception):
    """The lab cannot be built or started as asked; the message says why."""


@dataclass(kw_only=True)
class LabForest:
    """One forest of the lab: its domain, smart hosts, probe mailboxes and EWS endpoint."""

    name: str
    domain: str
    smart_hosts: list[LabSmartHost]
    mailboxes: list[str]
    ews_username: str
    ews_password: Secret
    smtp_username: str
    smtp_password: Secret
    imap_password: Secret = field(default_factory=lambda: _password("Pässwörd-"))  # not ASCII: UTF-8 SASL
    ews_url: str = ""  # https; set when the lab has started its EWS endpoint
    ews_http_url: str = ""
    server_address: str = ""  # its own server's loopback address (transport, submission port)
    submission_port: int = 0  # set when the lab has started its submission port
    imap_port: int = 0  # IMAPS; set when the lab serves its mailboxes over IMAP
    imap_starttls_port: int = 0
    graph_secret: Secret = field(default_factory=lambda: _password(""))  # the Graph app's client secret
    graph: GraphApp | None = None  # set when the lab serves its mailboxes over Graph

    @property
    def fqdn(self) -> str:
        """Return its own server's name, e.g. ``mail.contoso.test`` (EWS, submission, the transport)."""
        return f"mail.{self.domain}"

    @property
    def ews_upn(self) -> str:
        """Return the EWS account's UPN form, e.g. ``svc-mailflow@fourthcoffee.test``."""
        return f"svc-mailflow@{self.domain}"

    @property
    def mailbox_names(self) -> list[str]:
        """Return the probe config's key for each mailbox: ``fourthcoffee``, ``fourthcoffee-2``..."""
        return [self.name if i == 0 else f"{self.name}-{i + 1}" for i in range(len(self.mailboxes))]


@dataclass(frozen=True, kw_only=True)
class LabRoute:
    """A direction of mail flow between two forests of the lab, as probe.yaml names it."""

    name: str
    sender: str
    source: str
    forest: str
    mailbox: str  # the probe config's mailbox key
    recipient: str


def _password(prefix: str = "") -> Secret:
    return Secret(prefix + secrets.token_urlsafe(18))


def _plan_forest(index: int, name: str, *, smart_hosts: int, mailboxes: int, port: int,
                 smtp_password: str | None = None) -> LabForest:
    domain = f"{name}.test"
    smtp_username = f"smtp-relay@{domain}"
    smtp_password_secret = Secret(smtp_password) if smtp_password is not None else _password()
    hosts = [
        LabSmartHost(name=f"{name}-edge-{n + 1}", forest=name, domain=domain,
                     host=smart_host_address(index, n), port=port, username=smtp_username,
                     password=smtp_password_secret)
        for n in range(smart_hosts)
    ]
    boxes = [f"mailflow.probe{'' if i == 0 else i + 1}@{domain}" for i in range(mailboxes)]
    return LabForest(name=name, domain=domain, smart_hosts=hosts, mailboxes=boxes,
                     ews_username=f"{name.upper()}\\svc-mailflow", ews_password=_password(),
                     smtp_username=smtp_username, smtp_password=smtp_password_secret,
                     server_address=transport_address(index))


def _check_request(forests: Sequence[str], smart_hosts: int, mailboxes: int, ews_auth: str,
                   mailbox_backend: str) -> None:
    if not forests or len(forests) > MAX_FORESTS:
        raise LabError(f"a lab has 1 to {MAX_FORESTS} forests")
    for name in forests:
        if not _FOREST_NAME.match(name):
            raise LabError(f"forest name {name!r}: use a lowercase letter then letters or digits")
    if len(set(forests)) != len(forests):
        raise LabError("forest names must be distinct")
    if smart_hosts < 1 or mailboxes < 1:
        raise LabError("each forest needs at least one smart host and one mailbox")
    if ews_auth not in ("ntlm", "basic"):
        raise LabError("ews_auth is ntlm or basic")
    if mailbox_backend not in MAILBOX_BACKENDS:
        raise LabError(f"mailbox_backend is one of {', '.join(MAILBOX_BACKENDS)}")


Transit = Mapping[str, tuple[float, float]]


def _with_transit(forests: Mapping[str, LabForest], transit: Transit) -> None:
    """Give each named smart host its delivery delay range; refuse unknown names and bad ranges."""
    known = {h.name for f in forests.values() for h in f.smart_hosts}
    unknown = sorted(set(transit) - known)
    if unknown:
        raise LabError(f"transit: no smart host named {', '.join(unknown)}")
    for name, (low, high) in transit.items():
        if not 0 <= low <= high:
            raise LabError(f"transit of {name}: want 0 <= low <= high seconds, got {low}..{high}")
    for forest in forests.values():
        forest.smart_hosts = [replace(h, transit=transit[h.name]) if h.name in transit else h
                              for h in forest.smart_hosts]


def duration(seconds: float) -> str:
    """Write seconds as a config duration: ``2s``, ``500ms``, ``1.25s``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    millis = seconds * 1000
    if float(millis).is_integer():
        return f"{int(millis)}ms"
    return f"{seconds}s"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)


@dataclass
class _Parts:
    """What a running lab has started, so that stop() can end exactly those."""

    fleet: SmartHostFleet | None = None
    ews: list[EwsServer] = field(default_factory=list)
    imap: ImapWing | None = None
    graph: GraphWing | None = None
    admin: AdminServer | None = None
    transports: dict[str, SourceTransport] = field(default_factory=dict)
    submission: SubmissionServers | None = None


class Lab:
    """A running lab: use ``with Lab.start(state_dir) as lab:``; everything listens on loopback."""

    def __init__(self, state_dir: Path, *, forests: Sequence[str], smart_hosts_per_forest: int,
                 mailboxes_per_forest: int, fixed_ports: bool, ews_auth: EwsAuth,
                 smtp_password: str | None = None, transit: Transit | None = None,
                 tarpit_seconds: float = TARPIT_SECONDS, transport_timing: TransportTiming | None = None,
                 notify: NoticeSink | None = None, mailbox_backend: MailboxBackend = "ews") -> None:
        _check_request(forests, smart_hosts_per_forest, mailboxes_per_forest, ews_auth, mailbox_backend)
        self.tarpit_seconds = tarpit_seconds
        self.mailbox_backend: MailboxBackend = mailbox_backend
        self.state_dir = Path(state_dir).resolve()
        self.fixed_ports = fixed_ports
        self.ews_auth: EwsAuth = ews_auth
        port = FIXED_SMTP_PORT if fixed_ports else 0
        self.forests: dict[str, LabForest] = {
            name: _plan_forest(i, name, smart_hosts=smart_hosts_per_forest,
                               mailboxes=mailboxes_per_forest, port=port, smtp_password=smtp_password)
            for i, name in enumerate(forests)
        }
        _with_transit(self.forests, transit or {})
        self.faults = FaultRegistry()
        self.stats = LabStats()
        self.store = MailboxStore(clock=self._clock)
        self.transport_timing = transport_timing or TransportTiming()
        self.recorded_notices = RecordedNotices()
        self.notify: NoticeSink = notify or MailboxNotices(self.store, self.recorded_notices)
        self._parts = _Parts()
        self._ca: LabCA | None = None

    @classmethod
    def start(cls, state_dir: Path, *, forests: Sequence[str] = ("contoso", "fourthcoffee"),
              smart_hosts_per_forest: int = 2, mailboxes_per_forest: int = 1, fixed_ports: bool = False,
              ews_auth: EwsAuth = "ntlm", smtp_password: str | None = None,
              transit: Transit | None = None, tarpit_seconds: float = TARPIT_SECONDS,
              transport_timing: TransportTiming | None = None, notify: NoticeSink | None = None,
              mailbox_backend: MailboxBackend = "ews") -> Lab:
        """Start a lab and return it (use it as a context manager to stop it).

        ``smtp_password`` sets the smart hosts' account password (default: a random one), e.g. a non-ASCII one.
        ``transit`` maps smart host names to the range of seconds their deliveries take (default: none).
        ``tarpit_seconds`` is how long a smart host holds a failed AUTH's reply back (Exchange's 5 s by default).
        ``transport_timing`` sets the source transports' retry, delay-notice and expiry times; ``notify`` is where
        their delayed DSNs and NDRs go (default: delivered to the sender's mailbox as Exchange writes them, and
        recorded in ``recorded_notices``).
        ``mailbox_backend``: where the smart hosts deliver and what probe.yaml's mailboxes use: the store
        behind the EWS endpoints (``ews``), a private Dovecot behind the IMAP front (``imap``), or the store
        behind the Graph endpoints (``graph``). The EWS endpoints run in every case.
        """
        lab = cls(state_dir, forests=forests, smart_hosts_per_forest=smart_hosts_per_forest,
                  mailboxes_per_forest=mailboxes_per_forest, fixed_ports=fixed_ports, ews_auth=ews_auth,
                  smtp_password=smtp_password, transit=transit, tarpit_seconds=tarpit_seconds,
                  transport_timing=transport_timing, notify=notify, mailbox_backend=mailbox_backend)
        try:
            lab._start()
        except BaseException:
            lab.stop()
            raise
        return lab

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- where things are

    @property
    def ca_file(self) -> Path:
        """Return the lab CA's certificate file, for clients to trust."""
        if self._ca is None:
            raise LabError("the lab is not started")
        return self._ca.ca_file

    @property
    def ca(self) -> LabCA:
        """Return the lab CA (``lab.ca.client_context()`` trusts it)."""
        if self._ca is None:
            raise LabError("the lab is not started")
        return self._ca

    @property
    def admin_url(self) -> str:
        """Return the admin API's base URL."""
        return self._parts.admin.url if self._parts.admin is not None else ""

    @property
    def json_path(self) -> Path:
        """Return the path of ``lab.json``."""
        return self.state_dir / "lab.json"

    @property
    def config_path(self) -> Path:
        """Return the path of the ready probe configuration, ``probe.yaml``."""
        return self.state_dir / "probe.yaml"

    @property
    def has_ews(self) -> bool:
        """Say whether the lab runs EWS endpoints."""
        return bool(self._parts.ews)

    @property
    def smart_hosts(self) -> list[LabSmartHost]:
        """Return every smart host of every forest."""
        return [h for f in self.forests.values() for h in f.smart_hosts]

    def transport(self, forest: str) -> SourceTransport:
        """Return a forest's source transport (its Send connectors and queue)."""
        return self._parts.transports[forest]

    def smart_host(self, name: str) -> LabSmartHost:
        """Return a smart host by name, e.g. ``fourthcoffee-edge-1``."""
        for host in self.smart_hosts:
            if host.name == name:
                return host
        raise KeyError(f"no smart host named {name!r}")

    @property
    def routes(self) -> list[LabRoute]:
        """Return every route probe.yaml holds: each ordered pair of forests, each target mailbox."""
        routes = []
        for source in self.forests.values():
            for target in self.forests.values():
                if source is target:
                    continue
                for i, (key, address) in enumerate(zip(target.mailbox_names, target.mailboxes, strict=True)):
                    routes.append(LabRoute(
                        name=f"{source.name}-to-{target.name}" + (f"-{i + 1}" if i else ""),
                        sender=source.mailboxes[0], source=source.name, forest=target.name,
                        mailbox=key, recipient=address))
        return routes

    # -- faults

    def add_fault(self, *, target: str, kind: str, **params: Any) -> Fault:
        """Put a fault in force, e.g. ``add_fault(target="smarthost/contoso-edge-1", kind="drop")``."""
        return self.add_fault_json({"target": target, "kind": kind, **params})

    def add_fault_json(self, data: object) -> Fault:
        """Put in force a fault given as the admin API's JSON; raise FaultError when it is wrong."""
        fault = parse_fault(data)
        if fault.target_type in ("imap", "graph") and fault.target_type != self.mailbox_backend:
            raise FaultError(f"this lab serves its mailboxes over {self.mailbox_backend}, not {fault.target_type}: "
                             f"use {self.mailbox_backend}/FOREST (or start it with --mailbox-backend "
                             f"{fault.target_type})")
        known = ({h.name for h in self.smart_hosts} if fault.target_type == "smarthost"
                 else set(self.forests))
        if fault.target_name not in known:
            what = "smart host" if fault.target_type == "smarthost" else "forest"
            raise FaultError(f"no {what} named {fault.target_name!r} in this lab")
        if fault.smart_host is not None:
            self._check_connector_host(fault.target_name, fault.smart_host)
        self.faults.add(fault)
        return fault

    def _check_connector_host(self, forest: str, name: str) -> None:
        """Raise unless ``name`` is a smart host of one of ``forest``'s Send connectors."""
        hosts = [h.name for other in self.forests.values() if other.name != forest for h in other.smart_hosts]
        if name not in hosts:
            raise FaultError(f"{name!r} is not a smart host of the connectors of {forest}; they are "
                             f"{', '.join(hosts) or 'none'}")

    def clear_faults(self, target: str | None = None) -> None:
        """Lift every fault, or those of one target."""
        self.faults.clear(target)

    def _clock(self, forest: str) -> float:
        """Return the forest's mailbox server time: its EWS and Graph endpoints share the store's clock."""
        offset = (self.faults.find(f"ews/{forest}", EwsFault.CLOCK_OFFSET)
                  or self.faults.find(f"graph/{forest}", EwsFault.CLOCK_OFFSET))
        return time.time() + ((offset.seconds or 0.0) if offset is not None else 0.0)

    # -- life cycle

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ca = LabCA(self.state_dir / "ca")
        for forest in self.forests.values():
            for address in forest.mailboxes:
                self.store.add_mailbox(address, forest.name)
        self._start_smart_hosts(self._ca)
        self._start_ews(self._ca)
        self._start_transports(self._ca)
        if self.mailbox_backend == "imap":
            self._start_imap(self._ca)
        if self.mailbox_backend == "graph":
            self._start_graph(self._ca)
        self._start_admin()
        self._write_files()

    def _start_smart_hosts(self, ca: LabCA) -> None:
        fleet = SmartHostFleet(ca=ca, store=self.store, faults=self.faults, stats=self.stats,
                               untrusted_dir=self.state_dir / "untrusted-ca", tarpit=self.tarpit_seconds)
        self._parts.fleet = fleet
        fleet.start()
        try:
            bound = {h.name: h for h in fleet.add(self.smart_hosts)}
        except OSError as exc:
            raise LabError(str(exc)) from exc
        for forest in self.forests.values():
            forest.smart_hosts = [bound[h.name] for h in forest.smart_hosts]

    def _start_ews(self, ca: LabCA) -> None:
        for i, forest in enumerate(self.forests.values()):
            context = ca.issue(f"mail-{forest.name}", [EWS_HOST, "localhost", f"mail.{forest.domain}"])
            users = {forest.ews_username: forest.ews_password.reveal(),
                     forest.ews_upn: forest.ews_password.reveal()}
            server = EwsServer(
                forest.name, store=self.store, faults=self.faults, stats=self.stats, users=users,
                host=EWS_HOST, https_port=FIXED_EWS_HTTPS_PORT + i if self.fixed_ports else 0,
                http_port=FIXED_EWS_HTTP_PORT + i if self.fixed_ports else 0,
                ssl_context=context.server_context())
            self._parts.ews.append(server)  # before start(), so that stop() ends a half-started one
            try:
                server.start()
            except OSError as exc:
                ports = f"ports {FIXED_EWS_HTTPS_PORT + i}/{FIXED_EWS_HTTP_PORT + i}" if self.fixed_ports else "a port"
                raise LabError(f"the EWS endpoint of {forest.name} cannot listen on {EWS_HOST} "
                               f"({ports}): {exc.strerror or exc}") from exc
            forest.ews_url, forest.ews_http_url = str(server.https_url), str(server.http_url)

    def _connectors(self, source: LabForest) -> list[SendConnector]:
        """Return a forest's Send connectors: one per other forest, its address space that forest's domain."""
        return [SendConnector(name=f"{source.name}-to-{target.name}", address_spaces=(target.domain,),
                              smart_hosts=tuple(target.smart_hosts), username=target.smtp_username,
                              password=target.smtp_password)
                for target in self.forests.values() if target is not source]

    def _start_transports(self, ca: LabCA) -> None:
        for forest, server in zip(self.forests.values(), self._parts.ews, strict=True):
            transport = SourceTransport(
                forest=forest.name, domain=forest.domain, fqdn=forest.fqdn, address=forest.server_address,
                connectors=self._connectors(forest), store=self.store, faults=self.faults, stats=self.stats,
                ca_file=ca.ca_file, timing=self.transport_timing, notify=self.notify)
            self._parts.transports[forest.name] = transport
            transport.start()
            server.outbox = transport
        self._parts.submission = SubmissionServers(stats=self.stats)
        ports = [self._submission_port(forest, ca) for forest in self.forests.values()]
        try:
            bound = self._parts.submission.start(ports)
        except OSError as exc:
            raise LabError(f"a submission port cannot listen: {exc}") from exc
        for forest, port in zip(self.forests.values(), bound, strict=True):
            forest.submission_port = port

    def _submission_port(self, forest: LabForest, ca: LabCA) -> SubmissionPort:
        tls = ca.issue(f"submission-{forest.name}", [forest.server_address, forest.fqdn]).server_context()
        return SubmissionPort(transport=self._parts.transports[forest.name], host=forest.server_address,
                              port=FIXED_SUBMISSION_PORT if self.fixed_ports else 0, tls=tls,
                              mailboxes=frozenset(a.lower() for a in forest.mailboxes),
                              services=frozenset({forest.ews_username.lower(), forest.ews_upn.lower()}),
                              password=forest.ews_password)
    def _start_imap(self, ca: LabCA) -> None:
        accounts = {address: forest.imap_password for forest in self.forests.values() for address in forest.mailboxes}
        wing = ImapWing(store=self.store, faults=self.faults, stats=self.stats, ca=ca, accounts=accounts,
                        forests={name: forest.domain for name, forest in self.forests.items()})
        self._parts.imap = wing  # before start(), so that stop() ends a half-started one
        fixed = (lambda i: (FIXED_IMAPS_PORT + i, FIXED_IMAP_STARTTLS_PORT + i)) if self.fixed_ports else None
        try:
            wing.start(fixed_ports=fixed)
        except (DovecotError, OSError) as exc:
            raise LabError(f"the lab's IMAP server cannot start: {exc}") from exc
        for name, endpoint in wing.endpoints.items():
            self.forests[name].imap_port = endpoint.implicit_port
            self.forests[name].imap_starttls_port = endpoint.starttls_port

    def _start_graph(self, ca: LabCA) -> None:
        wing = GraphWing(store=self.store, faults=self.faults, stats=self.stats, ca=ca, clock=self._clock,
                         forests={name: (f.domain, f.graph_secret) for name, f in self.forests.items()})
        self._parts.graph = wing
        try:
            wing.start(fixed_port=(lambda i: FIXED_GRAPH_PORT + i) if self.fixed_ports else None)
        except OSError as exc:
            raise LabError(f"the lab's Graph endpoint cannot listen: {exc}") from exc
        for name, app in wing.apps.items():
            self.forests[name].graph = app

    def _start_admin(self) -> None:
        try:
            admin = AdminServer(add_fault=self.add_fault_json, faults=self.faults, stats=self.stats,
                                store=self.store, smart_hosts=lambda: [h.name for h in self.smart_hosts],
                                port=FIXED_ADMIN_PORT if self.fixed_ports else 0)
        except OSError as exc:
            port = FIXED_ADMIN_PORT if self.fixed_ports else 0
            raise LabError(f"the admin API cannot listen on port {port}: {exc.strerror or exc}") from exc
        self._parts.admin = admin
        admin.start()

    def stop(self) -> None:
        """Stop everything the lab started (safe to call twice)."""
        parts, self._parts = self._parts, _Parts()
        stoppers = [server.stop for server in parts.ews] + [t.stop for t in parts.transports.values()]
        stoppers += [part.stop for part in (parts.admin, parts.fleet, parts.submission, parts.imap, parts.graph)
                     if part is not None]
        threads = [threading.Thread(target=stop, name="lab-stop") for stop in stoppers]
        for thread in threads:  # in parallel: each HTTP server waits out its poll interval
            thread.start()
        for thread in threads:
            thread.join(15)

    # -- files

    def secret_file(self, name: str) -> Path:
        """Return the path of a password file under ``secrets/`` (e.g. ``fourthcoffee-smtp``)."""
        return self.state_dir / "secrets" / name

    def _write_files(self) -> None:
        for forest in self.forests.values():
            _write_private(self.secret_file(f"{forest.name}-smtp"), forest.smtp_password.reveal())
            _write_private(self.secret_file(f"{forest.name}-ews"), forest.ews_password.reveal())
            _write_private(self.secret_file(f"{forest.name}-imap"), forest.imap_password.reveal())
            _write_private(self.secret_file(f"{forest.name}-graph"), forest.graph_secret.reveal())
            if forest.graph is not None:
                _write_private(self.secret_file(f"{forest.name}-graph.pem"), forest.graph.certificate_pem)
        _write_private(self.json_path, json.dumps(self.describe(), indent=2) + "\n")
        # A connector probe sent over EWS needs the sender's mailbox on EWS; over IMAP or Graph it is submitted.
        connector: ConnectorSubmit = "ews" if self.mailbox_backend == "ews" else "smtp"
        self.write_probe_config(self.config_path, interval=60.0, timeout=120.0, jitter=5.0, connector=connector)

    def describe(self) -> dict[str, Any]:
        """Return what lab.json holds: addresses, ports, users, passwords, CA file, admin URL."""
        return {
            "state_dir": str(self.state_dir), "ca_file": str(self.ca_file), "admin_url": self.admin_url,
            "probe_config": str(self.config_path), "fixed_ports": self.fixed_ports,
            "mailbox_backend": self.mailbox_backend,
            "ports": self._ports(), "ews_available": self.has_ews,
            "forests": {name: self._forest_json(forest) for name, forest in self.forests.items()},
            "routes": [r.name for r in self.routes],
        }

    def _ports(self) -> dict[str, Any]:
        names = list(self.forests)
        return {
            "smtp": FIXED_SMTP_PORT if self.fixed_ports else None,
            "submission": FIXED_SUBMISSION_PORT if self.fixed_ports else None,
            "ews_https": {n: FIXED_EWS_HTTPS_PORT + i for i, n in enumerate(names)} if self.fixed_ports else None,
            "ews_http": {n: FIXED_EWS_HTTP_PORT + i for i, n in enumerate(names)} if self.fixed_ports else None,
            "admin": FIXED_ADMIN_PORT if self.fixed_ports else None,
        }

    def _forest_json(self, forest: LabForest) -> dict[str, Any]:
        return {
            "domain": forest.domain,
            "mailboxes": dict(zip(forest.mailbox_names, forest.mailboxes, strict=True)),
            "ews": {"url": forest.ews_url, "http_url": forest.ews_http_url, "auth": self.ews_auth,
                    "username": forest.ews_username, "users": [forest.ews_username, forest.ews_upn],
                    "password": forest.ews_password.reveal(),
                    "password_file": str(self.secret_file(f"{forest.name}-ews"))},
            "imap": {"host": EWS_HOST, "port": forest.imap_port, "starttls_port": forest.imap_starttls_port,
                     "usernames": forest.mailboxes, "password": forest.imap_password.reveal(),
                     "password_file": str(self.secret_file(f"{forest.name}-imap"))} if forest.imap_port else None,
            "graph": {"url": forest.graph.url, "tenant_id": forest.graph.tenant_id,
                      "client_id": forest.graph.client_id, "client_secret": forest.graph_secret.reveal(),
                      "client_secret_file": str(self.secret_file(f"{forest.name}-graph")),
                      "certificate_file": str(self.secret_file(f"{forest.name}-graph.pem"))}
            if forest.graph is not None else None,
            "smtp": {"username": forest.smtp_username, "password": forest.smtp_password.reveal(),
                     "password_file": str(self.secret_file(f"{forest.name}-smtp"))},
            "submission": {"host": forest.server_address, "port": forest.submission_port, "fqdn": forest.fqdn,
                           "users": "each mailbox address, with the EWS password"},
            "connectors": [{"name": c.name, "address_spaces": list(c.address_spaces),
                            "smart_hosts": [h.name for h in c.smart_hosts], "target": f"connector/{forest.name}"}
                           for c in self._connectors(forest)],
            "smart_hosts": [
                {"name": h.name, "host": h.host, "port": h.port, "fqdn": h.fqdn, "target": h.target,
                 "username": h.username, "password": h.password.reveal(), "transit_seconds": list(h.transit)}
                for h in forest.smart_hosts
            ],
        }

    def write_probe_config(self, path: Path, *, interval: float, timeout: float, jitter: float,
                           watch: str = "streaming", poll_interval: float = 2.0,
                           routes: list[str] | None = None, connector: ConnectorSubmit | None = None) -> Path:
        """Write a probe configuration for this lab (DESIGN.md "Config") and return its path.

        Its mailboxes are the chosen routes' targets and their senders' (where their NDRs come back).
        ``connector`` gives every route a connector probe submitted that way (``ews``: from its sender's mailbox;
        ``smtp``: to the source forest's submission port).
        """
        chosen = self.routes if routes is None else self._chosen_routes(routes)
        keys = {r.mailbox for r in chosen} | {r.source for r in chosen}  # a sender's mailbox key is its forest's
        mailboxes = {
            key: self._mailbox_yaml(forest, address, watch=watch, poll_interval=poll_interval)
            for forest in self.forests.values()
            for key, address in zip(forest.mailbox_names, forest.mailboxes, strict=True)
            if routes is None or key in keys
        }
        config = {
            "signing_key_file": str(self.state_dir / "signing.key"),
            "state_file": str(self.state_dir / "state.db"),
            "defaults": {"interval": duration(interval), "timeout": duration(timeout),
                         "jitter": duration(jitter)},
            "mailboxes": mailboxes,
            "routes": [self._route_yaml(r, connector) for r in chosen],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: thousands of smart hosts dump fast
        path.write_text(yaml.dump(config, Dumper=dumper, sort_keys=False), encoding="utf-8")
        return path

    def _chosen_routes(self, names: list[str]) -> list[LabRoute]:
        by_name = {r.name: r for r in self.routes}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise LabError(f"no route named {', '.join(unknown)}; the lab has {', '.join(by_name)}")
        return [by_name[n] for n in names]

    def _backend_yaml(self, forest: LabForest, address: str) -> tuple[str, dict[str, Any]]:
        """Return the backend section of a mailbox of the lab: its key and its keys."""
        if self.mailbox_backend == "imap":
            return "imap", {"host": EWS_HOST, "port": forest.imap_port, "tls": "implicit", "username": address,
                            "password_file": str(self.secret_file(f"{forest.name}-imap")),
                            "ca_file": str(self.ca_file)}
        if self.mailbox_backend == "graph" and forest.graph is not None:
            return "graph", {"tenant_id": forest.graph.tenant_id, "client_id": forest.graph.client_id,
                             "client_secret_file": str(self.secret_file(f"{forest.name}-graph")),
                             "authority": forest.graph.url, "endpoint": forest.graph.url,
                             "instance_discovery": False, "ca_file": str(self.ca_file)}
        return "ews", {"url": forest.ews_url, "username": forest.ews_username,
                       "password_file": str(self.secret_file(f"{forest.name}-ews")), "auth": self.ews_auth,
                       "ca_file": str(self.ca_file)}

    def _mailbox_yaml(self, forest: LabForest, address: str, *, watch: str,
                      poll_interval: float) -> dict[str, Any]:
        key, section = self._backend_yaml(forest, address)
        return {
            "address": address,
            key: section,
            "folders": ["inbox", "junkemail"],
            "cleanup": "move_to_deleted_items",
            "watch": watch,
            "poll_interval": duration(poll_interval),
        }

    def _route_yaml(self, route: LabRoute, connector: ConnectorSubmit | None) -> dict[str, Any]:
        forest = self.forests[route.forest]
        written: dict[str, Any] = {
            "name": route.name, "sender": route.sender, "mailbox": route.mailbox,
            "smart_hosts": [
                {"name": h.name, "host": h.host, "port": h.port, "tls": "starttls", "username": h.username,
                 "password_file": str(self.secret_file(f"{forest.name}-smtp")), "ca_file": str(self.ca_file)}
                for h in forest.smart_hosts
            ],
        }
        if connector is not None:
            written["connector"] = self._connector_yaml(route, connector)
        return written

    def _connector_yaml(self, route: LabRoute, connector: ConnectorSubmit) -> dict[str, Any]:
        if connector == "ews":
            return {"submit": "ews"}
        source = self.forests[route.source]
        return {"submit": "smtp", "host": source.server_address, "port": source.submission_port,
                "tls": "starttls", "username": route.sender,
                "password_file": str(self.secret_file(f"{source.name}-ews")), "ca_file": str(self.ca_file)}

