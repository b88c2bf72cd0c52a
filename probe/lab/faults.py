"""Faults on demand: what the lab's smart hosts and EWS endpoints should get wrong, and where."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Final

SMARTHOST_KINDS: Final = frozenset({
    "refuse_connections", "no_starttls", "untrusted_cert", "expired_cert", "auth_reject",
    "tempfail", "reject", "slow", "delay_delivery", "drop", "duplicate", "to_junk",
})
EWS_KINDS: Final = frozenset({
    "unauthorized", "server_error", "server_busy", "slow", "unreachable", "clock_offset",
})
SMTP_STAGES: Final = ("connect", "banner", "ehlo", "starttls", "auth", "mail", "rcpt", "data")
_NEEDS_SECONDS: Final = frozenset({"slow", "delay_delivery", "clock_offset"})
_NEEDS_STAGE: Final = frozenset({"tempfail", "reject", "slow"})
_DEFAULT_CODE: Final = {"tempfail": 451, "reject": 554}


class FaultError(ValueError):
    """A fault request that cannot be applied; the message says why."""


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One fault: a target (``smarthost/NAME`` or ``ews/FOREST``), a kind, and its parameters."""

    target: str
    kind: str
    stage: str | None = None
    code: int | None = None
    seconds: float | None = None
    back_off_ms: int | None = None

    @property
    def target_type(self) -> str:
        """Return ``smarthost`` or ``ews``."""
        return self.target.split("/", 1)[0]

    @property
    def target_name(self) -> str:
        """Return the smart host or forest name."""
        return self.target.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        """Return the fault as the admin API shows it."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_fault(data: object) -> Fault:
    """Build a fault from the admin API's JSON, with defaults, or raise FaultError."""
    if not isinstance(data, dict):
        raise FaultError("a fault is a JSON object with target and kind")
    unknown = set(data) - {"target", "kind", "stage", "code", "seconds", "back_off_ms"}
    if unknown:
        raise FaultError(f"unknown fault parameters: {', '.join(sorted(unknown))}")
    target, kind = data.get("target"), data.get("kind")
    if not isinstance(target, str) or "/" not in target:
        raise FaultError('target must be "smarthost/NAME" or "ews/FOREST"')
    if not isinstance(kind, str):
        raise FaultError("kind must be a string")
    fault = Fault(
        target=target, kind=kind, stage=data.get("stage"), code=data.get("code"),
        seconds=data.get("seconds"), back_off_ms=data.get("back_off_ms"),
    )
    return _with_defaults(_checked(fault))


def _checked(fault: Fault) -> Fault:
    kinds = {"smarthost": SMARTHOST_KINDS, "ews": EWS_KINDS}.get(fault.target_type)
    if kinds is None:
        raise FaultError(f"unknown target type {fault.target_type!r}: use smarthost/NAME or ews/FOREST")
    if fault.kind not in kinds:
        raise FaultError(f"unknown {fault.target_type} fault kind {fault.kind!r}; known: {', '.join(sorted(kinds))}")
    needs_seconds = fault.kind in _NEEDS_SECONDS and not (fault.target_type == "ews" and fault.kind == "slow")
    if needs_seconds and not isinstance(fault.seconds, int | float):
        raise FaultError(f"{fault.kind} needs seconds (a number)")
    if fault.target_type == "smarthost" and fault.kind in _NEEDS_STAGE and fault.stage not in SMTP_STAGES:
        raise FaultError(f"{fault.kind} needs stage, one of {', '.join(SMTP_STAGES)}")
    if fault.code is not None and not (isinstance(fault.code, int) and 200 <= fault.code <= 599):
        raise FaultError("code must be an SMTP reply code (200-599)")
    return fault


def _with_defaults(fault: Fault) -> Fault:
    code = fault.code if fault.code is not None else _DEFAULT_CODE.get(fault.kind)
    seconds = fault.seconds
    back_off = fault.back_off_ms
    if fault.target_type == "ews" and fault.kind == "slow" and seconds is None:
        seconds = 5.0
    if fault.kind == "server_busy" and back_off is None:
        back_off = 1000
    return Fault(target=fault.target, kind=fault.kind, stage=fault.stage, code=code,
                 seconds=seconds, back_off_ms=back_off)


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

    def find(self, target: str, kind: str, *, stage: str | None = None) -> Fault | None:
        """Return the fault of this kind on this target (and stage, when given), if one is in force."""
        with self._lock:
            for fault in self._faults:
                if fault.target == target and fault.kind == kind and (stage is None or fault.stage == stage):
                    return fault
        return None
