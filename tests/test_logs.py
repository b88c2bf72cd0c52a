"""Log lines: logfmt by default, JSON with a flag, one line per verdict, never a secret."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from probe.ledger import Decision
from probe.logs import configure_logging, log_decision, logfmt_value, parse_level
from probe.secret import Secret
from probe.vocabulary import Verdict

LOGFMT_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"=]+)')


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logger = logging.getLogger("probe")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line strictly: it must be nothing but key=value pairs separated by single spaces."""
    pairs = LOGFMT_PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def failed_decision() -> Decision:
    return Decision(probe_id="p-42", route="contoso-to-fourthcoffee", smart_host="fc-edge-1", mailbox="fc",
                    message_id="<p-42@contoso.com>", verdict=Verdict.SEND_FAILED, stage="rcpt", reason="rejected",
                    smtp_code=550, decided_at=1.0)


def test_logfmt_lines_have_time_level_logger_message_and_fields(stream):
    """A logfmt line is ts, level, logger, msg and the extra fields, with values quoted where needed."""
    configure_logging("logfmt", "info", stream=stream)
    logging.getLogger("probe.daemon").info("reloaded the config", extra={"pairs": 3, "path": "/etc/a b.yaml"})
    logging.getLogger("probe.daemon").debug("not shown at info")
    [line] = lines(stream)
    fields = parse_logfmt(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"])
    assert fields["level"] == "info"
    assert fields["logger"] == "probe.daemon"
    assert fields["msg"] == "reloaded the config"
    assert fields["pairs"] == "3"
    assert fields["path"] == "/etc/a b.yaml"
    assert 'path="/etc/a b.yaml"' in line


def test_one_logfmt_line_per_verdict_with_its_fields(stream):
    """A verdict is one line naming route, smart host, verdict, stage, reason, code and the ids."""
    configure_logging("logfmt", "info", stream=stream)
    log_decision(logging.getLogger("probe.daemon"), failed_decision())
    [line] = lines(stream)
    fields = parse_logfmt(line)
    assert fields["level"] == "warn"
    assert {k: fields[k] for k in ("route", "smart_host", "verdict", "stage", "reason", "smtp_code",
                                   "message_id", "probe_id")} == {
        "route": "contoso-to-fourthcoffee", "smart_host": "fc-edge-1", "verdict": "send_failed", "stage": "rcpt",
        "reason": "rejected", "smtp_code": "550", "message_id": "<p-42@contoso.com>", "probe_id": "p-42"}
    assert "latency_seconds" not in fields


def test_json_lines_are_one_object_each_with_the_verdict_fields(stream):
    """With the JSON flag each line is a JSON object; a delivered verdict carries its latency."""
    configure_logging("json", "debug", stream=stream)
    delivered = Decision(probe_id="p-1", route="r", smart_host="h", mailbox="m", message_id="<p-1@x>",
                         verdict=Verdict.DELIVERED, latency=1.25, decided_at=2.0)
    log_decision(logging.getLogger("probe.daemon"), delivered)
    logging.getLogger("probe.web").debug("a line with\nnewline", extra={"path": "/"})
    first, second = (json.loads(line) for line in lines(stream))
    assert first["verdict"] == "delivered"
    assert first["latency_seconds"] == 1.25
    assert first["stage"] is None
    assert first["level"] == "info"
    assert second["msg"] == "a line with\nnewline"
    assert second["level"] == "debug"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_secret_never_appears_even_when_logged_directly(stream, fmt):
    """A Secret's value is replaced by <secret> in messages, fields and tracebacks, in both formats."""
    password = Secret('s3cr"et\\pass word')
    configure_logging(fmt, "debug", stream=stream)
    log = logging.getLogger("probe.smtp")
    log.info("auth with %s", password.reveal(), extra={"password": password.reveal(), "obj": {"pw": password}})

    def login() -> None:
        raise RuntimeError(f"login failed for {password.reveal()}")

    try:
        login()
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    assert len(lines(stream)) == 2
    assert password.reveal() not in text
    assert json.dumps(password.reveal()) not in text
    assert "s3cr" not in text
    assert "<secret>" in text


def test_configuring_twice_does_not_double_lines(stream):
    """Configuring again replaces the probe's handler rather than adding a second one."""
    configure_logging("json", "info", stream=io.StringIO())
    configure_logging("logfmt", "info", stream=stream)
    logging.getLogger("probe").info("once")
    assert len(lines(stream)) == 1


def test_bad_level_and_format_are_clear_errors():
    """An unknown level or format is a ValueError that says what is allowed."""
    with pytest.raises(ValueError, match="use debug, info, warn or error"):
        parse_level("verbose")
    with pytest.raises(ValueError, match="use logfmt or json"):
        configure_logging("xml", "info")  # type: ignore[arg-type]
    assert parse_level("warn") == logging.WARNING


def test_logfmt_values_are_bare_only_when_safe():
    """Plain tokens stay bare; empty, spaced, quoted or control-character values are quoted and escaped."""
    assert logfmt_value("fc-edge-1") == "fc-edge-1"
    assert logfmt_value("") == '""'
    assert logfmt_value('a "b"') == '"a \\"b\\""'
    assert logfmt_value("x=y") == '"x=y"'
    assert logfmt_value("line\nbreak") == '"line\\nbreak"'
    assert logfmt_value(1.23456) == "1.235"
    assert logfmt_value(True) == "true"
