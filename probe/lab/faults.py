"""Faults on demand: what the lab's smart hosts and mailbox servers should get wrong, and where.

The kinds of each target type are an enum; each member is one row: its name in the admin API and its
parameters (required or with a default). A fault is checked against its row when it is posted, so a
misspelt kind or parameter is refused with the valid ones, and every place that acts on a fault names
its kind by enum member, never by string.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final, Self

SMTP_STAGES: Final = ("connect", "banner", "ehlo", "starttls", "auth", "mail", "rcpt", "data")
_STATUS: Final = re.compile(r"[45]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Param:
    """A parameter of a fault kind: required, or with a default (None: optional, no default)."""

    name: str
    required: bool = False
    default: float | None = None

    def describe(self) -> str:
        """Return the parameter as the list of valid ones shows it: ``stage (required)``, ``code (default 451)``."""
        if self.required:
            return f"{self.name} (required)"
        return self.name if self.default is None else f"{self.name} (default {self.default:g})"


STAGE: Final = Param("stage", required=True)
SECONDS: Final = Param("seconds", required=True)


class FaultKind(StrEnum):
    """The kinds of faults of one target type; a member's value is its name in the admin API."""

    params: tuple[Param, ...]

    def __new__(cls, value: str, *params: Param) -> Self:
        """Make a member that carries its parameters."""
        member = str.__new__(cls, value)
        member._value_ = value
        member.params = params
        return member

    def param(self, name: str) -> Param | None:
        """Return this kind's parameter ``name``, or None when it takes no such parameter."""
        return next((p for p in self.params if p.name == name), None)

    def describe_params(self) -> str:
        """Return this kind's parameters as an error lists them."""
        return ", ".join(p.describe() for p in self.params) if self.params else "none"


class SmartHostFault(FaultKind):
    """What a smart host (target ``smarthost/NAME``) can get wrong."""

    REFUSE_CONNECTIONS = "refuse_connections"
    NO_STARTTLS = "no_starttls"
    UNTRUSTED_CERT = "untrusted_cert"
    EXPIRED_CERT = "expired_cert"
    AUTH_REJECT = "auth_reject"
    TEMPFAIL = "tempfail", STAGE, Param("code", default=451)
    REJECT = "reject", STAGE, Param("code", default=554)
    SLOW = "slow", SECONDS, STAGE
    DELAY_DELIVERY = "delay_delivery", SECONDS, Param("notify_after")  # notify_after: a delay notification then
    DROP = "drop"
    DUPLICATE = "duplicate"
    TO_JUNK = "to_junk"
    BOUNCE = "bounce", Param("status", required=True), Param("seconds", default=0.0)  # accepted, then an NDR
    SUBJECT_PREFIX = "subject_prefix"  # a transport rule: "[EXTERNAL] " before the subject
    DISCLAIMER = "disclaimer"  # a transport rule: a disclaimer after the body


class ConnectorFault(FaultKind):
    """What a forest's Send connector (target ``connector/FOREST``: the source forest's) can get wrong."""

    DISABLED = "disabled"  # no route: messages wait in the Unreachable queue, then expire (NDR)
    BAD_CREDENTIALS = "bad_credentials"  # the stored password is wrong: the smart hosts answer 535, the queue retries
    ADDRESS_SPACE_REMOVED = "address_space_removed"  # the target domain is no longer routed: NDR 5.4.4 at once
    TLS_UNAVAILABLE_REQUIRED = "tls_unavailable_required"  # TLS is required but the source cannot negotiate it
    PIN = "pin", Param("smart_host", required=True)  # always this smart host: no failover


class MailboxFault(FaultKind):
    """What a forest's mailbox server can get wrong: its EWS endpoint (target ``ews/FOREST``), its IMAP
    server (``imap/FOREST``) or its Graph endpoint (``graph/FOREST``); each backend's lab part acts on them
    in its own protocol's terms (probe.lab.imap_front, probe.lab.graph)."""

    UNAUTHORIZED = "unauthorized"
    SERVER_ERROR = "server_error"
    SERVER_BUSY = "server_busy", Param("back_off_ms", default=1000)
    SLOW = "slow", Param("seconds", default=5.0)
    UNREACHABLE = "unreachable"
    CLOCK_OFFSET = "clock_offset", SECONDS


EwsFault = MailboxFault  # the name the EWS endpoint's code knows them by

MAILBOX_TARGET_TYPES: Final = ("ews", "imap", "graph")
TARGET_TYPES: Final[dict[str, type[FaultKind]]] = {
    "smarthost": SmartHostFault, "connector": ConnectorFault, **dict.fromkeys(MAILBOX_TARGET_TYPES, MailboxFault),
}
_TARGETS: Final = "smarthost/NAME, connector/FOREST, or ews/FOREST, imap/FOREST or graph/FOREST"


class FaultError(ValueError):
    """A fault request that cannot be applied; the message says why."""


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One fault: a target (``smarthost/NAME``, ``connector/FOREST``, or ``ews/FOREST``, ``imap/FOREST``,
    ``graph/FOREST``), a kind, and its parameters."""

    target: str
    kind: FaultKind
    stage: str | None = None
    code: int | None = None
    seconds: float | None = None
    back_off_ms: int | None = None
    smart_host: str | None = None
    status: str | None = None
    notify_after: float | None = None

    @property
    def target_type(self) -> str:
        """Return ``smarthost``, ``connector``, ``ews``, ``imap`` or ``graph``."""
        return self.target.split("/", 1)[0]

    @property
    def target_name(self) -> str:
        """Return the smart host or forest name."""
        return self.target.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        """Return the fault as the admin API shows it."""
        return {k: str(v) if k == "kind" else v for k, v in asdict(self).items() if v is not None}


def parse_fault(data: object) -> Fault:
    """Build a fault from the admin API's JSON, checked against its kind's row, with defaults; or raise FaultError."""
    if not isinstance(data, dict):
        raise FaultError("a fault is a JSON object with target and kind")
    target = _target(data.get("target"))
    member = _kind(target.split("/", 1)[0], data.get("kind"))
    given = {key: value for key, value in data.items() if key not in ("target", "kind")}
    unknown = sorted(key for key in given if member.param(key) is None)
    if unknown:
        raise FaultError(f"unknown parameters for {member}: {', '.join(unknown)}; "
                         f"its parameters: {member.describe_params()}")
    values: dict[str, Any] = {p.name: given.get(p.name, p.default) for p in member.params}
    for param in member.params:
        _check(member, param, values[param.name])
    return Fault(target=target, kind=member, **values)


def _target(target: object) -> str:
    if not isinstance(target, str) or "/" not in target:
        raise FaultError(f"target must be one of {_TARGETS}")
    if target.split("/", 1)[0] not in TARGET_TYPES:
        raise FaultError(f"unknown target type {target.split('/', 1)[0]!r}: use {_TARGETS}")
    return target


def _kind(target_type: str, kind: object) -> FaultKind:
    kinds = TARGET_TYPES[target_type]
    known = ", ".join(sorted(member.value for member in kinds))
    if not isinstance(kind, str):
        raise FaultError(f"kind must be a string; the {target_type} fault kinds: {known}")
    if kind not in {member.value for member in kinds}:
        raise FaultError(f"unknown {target_type} fault kind {kind!r}; known: {known}")
    return kinds(kind)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(kind: FaultKind, param: Param, value: object) -> None:
    """Raise unless ``value`` is a valid value of ``param`` (None only when it is not required)."""
    if value is None:
        if param.required:
            raise FaultError(f"{kind} needs {_NEEDS[param.name]}")
        return
    valid = {"stage": value in SMTP_STAGES, "code": isinstance(value, int) and not isinstance(value, bool)
             and 200 <= value <= 599, "seconds": _is_number(value),
             "back_off_ms": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
             "smart_host": isinstance(value, str) and bool(value),
             "status": isinstance(value, str) and _STATUS.fullmatch(value) is not None,
             "notify_after": _is_number(value) and float(str(value)) >= 0}
    if not valid[param.name]:
        raise FaultError(f"{kind}: {param.name} must be {_MUST[param.name]}")


_MUST: Final = {
    "stage": f"one of {', '.join(SMTP_STAGES)}",
    "code": "an SMTP reply code (200-599)",
    "seconds": "a number",
    "back_off_ms": "a whole number of milliseconds (0 or more)",
    "smart_host": "the name of a smart host of the lab",
    "status": 'an enhanced status code of a failure, such as "5.1.1" or "4.4.7"',
    "notify_after": "a number of seconds (0 or more)",
}
_NEEDS: Final = {"stage": f"stage, {_MUST['stage']}", "seconds": "seconds (a number)",
                 "status": f"status, {_MUST['status']}",
                 "smart_host": "smart_host, the name of a smart host of the lab"}


class FaultRegistry:
    """The faults in force, shared by every part of one lab; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Put a fault in force (a fault of the same target and kind is replaced)."""
        with self._lock:
            self._faults = [f for f in self._faults if (f.target, f.kind) != (fault.target, fault.kind)]
            self._faults.append(fault)

    def clear(self, target: str | None = None) -> None:
        """Lift every fault, or those of one target."""
        with self._lock:
            self._faults = [f for f in self._faults if target is not None and f.target != target]

    def active(self, target: str | None = None) -> list[Fault]:
        """Return the faults in force, for one target or all."""
        with self._lock:
            return [f for f in self._faults if target is None or f.target == target]

    def find(self, target: str, kind: FaultKind, *, stage: str | None = None) -> Fault | None:
        """Return the fault of this kind on this target (and stage, when given), if one is in force."""
        with self._lock:
            for fault in self._faults:
                if fault.target == target and fault.kind is kind and (stage is None or fault.stage == stage):
                    return fault
        return None

