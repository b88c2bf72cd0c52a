"""The daemon's log lines: logfmt by default, JSON with a flag, one line per verdict, never a secret.

Fields beyond the message are passed as ``extra={...}``; every formatted line goes through
``probe.secret.redact`` last, so a known secret never appears however it was logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from probe.ledger import Decision
from probe.secret import redact
from probe.vocabulary import Verdict

LogFormat = Literal["logfmt", "json"]
ROOT: Final = "probe"

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                  "warning": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES: Final = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                       logging.ERROR: "error", logging.CRITICAL: "error"}
# Attributes every LogRecord has; anything else on a record came from ``extra`` and is a field.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BARE: Final = re.compile(r"[^\s=\"\\\x00-\x1f\x7f]+")
_HANDLER_MARK: Final = "_probe_handler"


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _clean(value: object) -> Any:
    """Return ``value`` as plain JSON data with every string redacted (before escaping can hide a secret)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return redact(str(value))


def logfmt_value(value: object) -> str:
    """Return ``value`` as a logfmt value: bare when it can be, else quoted and escaped."""
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 1e15 else repr(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = redact(str(value))
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """Format records as ``ts=... level=... logger=... msg=... key=value``, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Return one logfmt line for ``record``."""
        parts = {"ts": _timestamp(record), "level": _LEVEL_NAMES.get(record.levelno, "info"),
                 "logger": record.name, "msg": record.getMessage()}
        parts.update({k: v for k, v in _fields(record).items() if v is not None})
        if record.exc_info:
            parts["err"] = self.formatException(record.exc_info)
        line = " ".join(f"{key}={logfmt_value(value)}" for key, value in parts.items())
        return redact(line)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Return one JSON line for ``record``."""
        parts: dict[str, Any] = {"ts": _timestamp(record), "level": _LEVEL_NAMES.get(record.levelno, "info"),
                                 "logger": record.name, "msg": record.getMessage()}
        parts.update(_fields(record))
        if record.exc_info:
            parts["err"] = self.formatException(record.exc_info)
        return redact(json.dumps(_clean(parts), ensure_ascii=False))


def parse_level(level: str) -> int:
    """Return the logging level for ``debug``, ``info``, ``warn`` or ``error``."""
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warn or error") from None


def configure_logging(fmt: LogFormat = "logfmt", level: str = "info", *, stream: TextIO | None = None) -> None:
    """Send every log line of the process to ``stream`` (stderr) in ``fmt``: the ``probe`` loggers' at ``level``
    and above, the libraries' (APScheduler, asyncio, exchangelib...) at warn and above.

    Uncaught exceptions in threads and Python's warnings become log lines too, so nothing reaches the terminal
    in another shape.
    """
    if fmt not in ("logfmt", "json"):
        raise ValueError(f"unknown log format {fmt!r}: use logfmt or json")
    probe_level = parse_level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    setattr(handler, _HANDLER_MARK, True)
    for name, logger_level in ((ROOT, probe_level), ("", max(probe_level, logging.WARNING))):
        logger = logging.getLogger(name)
        logger.setLevel(logger_level)
        for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
    logging.getLogger(ROOT).propagate = False
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """Log an exception that ended a thread, in the chosen format (instead of a raw traceback on stderr)."""
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger(f"{ROOT}.thread").error(
        "a thread ended with an error", extra={"thread": thread},
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback))


_VERDICT_LEVELS: Final = {Verdict.DELIVERED: logging.INFO, Verdict.LATE: logging.INFO,
                          Verdict.SEND_FAILED: logging.WARNING, Verdict.LOST: logging.WARNING,
                          Verdict.BOUNCED: logging.WARNING, Verdict.UNKNOWN: logging.WARNING}


def log_decision(logger: logging.Logger, decision: Decision) -> None:
    """Write the one line of a verdict: route, smart host, verdict, latency, stage, reason, ids (and a bounce's
    status code, reporting MTA and diagnostic)."""
    fields = {
        "route": decision.route, "smart_host": decision.smart_host, "verdict": str(decision.verdict),
        "latency_seconds": decision.latency, "stage": decision.stage, "reason": decision.reason,
        "smtp_code": decision.smtp_code, "message_id": decision.message_id, "probe_id": decision.probe_id,
        "status_code": decision.status_code, "reporting_mta": decision.reporting_mta,
        "diagnostic": decision.diagnostic,
    }
    if decision.carried_by is not None:
        fields["carried_by"] = decision.carried_by  # a connector probe's: the smart host that carried it
    logger.log(_VERDICT_LEVELS.get(decision.verdict, logging.INFO), "probe %s", decision.verdict, extra=fields)


class Throttle:
    """Let one log line per key through every ``every`` seconds; count the ones held back in between.

    For news that can repeat thousands of times a minute (a host out of file descriptors, a flood of
    forged tags): the first line says what happened, the next one how often it happened since.
    """

    def __init__(self, every: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._every, self._clock = every, clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """Return how many lines of ``key`` were held back since the last one, or None to hold this one too."""
        now = self._clock()
        with self._lock:
            if now < self._next.get(key, float("-inf")):
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._next[key] = now + self._every
            return self._held.pop(key, 0)
