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


class TextFormatter(logging.Formatter):
    """The usual text line, with the delivery fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{name}={record.__dict__[name]}" for name in FIELDS if name in record.__dict__)
        return f"{text} [{fields}]" if fields else text


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
