"""Logging: JSON lines when not on a terminal (for collectors), text on one.

Delivery lines carry ``event_id``, ``partner``, ``channel`` and ``target``
(and the outcome, attempt and latency) as fields of their own. Nothing logs an
event's body, a secret or an OTP: addresses are masked before they reach a
log line, and provider errors are reduced to codes and shipcast's own words.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

#: Fields a log call may add with ``extra=``, written out when present.
FIELDS = ("event_id", "partner", "channel", "target", "outcome", "attempt", "status", "latency_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


#: Characters that would end a text line or drive a terminal, and how a line shows them.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7f, 0x85)} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def escaped(text: str) -> str:
    """``text`` with line breaks and control characters escaped, so data in a
    message (an order id with a CRLF in it) cannot forge a log line."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The usual text line, with the delivery fields appended as ``key=value``.
    The message and the fields stay on that line (see :func:`escaped`); only
    a traceback follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(logging.makeLogRecord({**record.__dict__,
                                                            "message": escaped(record.message)}))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{name}={record.__dict__[name]}" for name in FIELDS if name in record.__dict__)
        if not fields:
            return text
        head, newline, traceback = text.partition("\n")
        return f"{head} [{escaped(fields)}]{newline}{traceback}"


def configure(verbose: bool = False, form: str = "auto") -> None:
    """Log to stderr: JSON lines unless stderr is a terminal (``form`` auto),
    or as ``form`` says (``json``, ``text``)."""
    as_json = form == "json" or (form == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("aio_pika", "aiormq", "httpx", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
