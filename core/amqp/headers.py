"""The message-header protocol: every ``x-shipcast-*`` header a message
carries, and the one place they are built and read.

An event's message carries the time it was published. A copy made for one
target (a retry, a deferral, a replay, a test send) names the target and
counts the retry tiers it has been through; a dead letter says why and when
it failed. When tracing is on, an event's message carries the W3C trace
context of its publish, which its copies keep: every attempt joins the
event's trace. Foreign publishers may send anything: readers tolerate junk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shipcast import tracing
from shipcast.model.envelope import Event

#: When the event was published, in milliseconds since the epoch (the AMQP
#: timestamp has whole seconds): delivery latency is measured from it.
PUBLISHED = "x-shipcast-published-ms"
#: The target a copy is for (retries, dead letters, replays, test sends).
TARGET = "x-shipcast-target"
#: The retry tiers a copy has been through.
ATTEMPT = "x-shipcast-attempt"
#: Replayed on purpose: deliver even if delivered before.
FORCE = "x-shipcast-force"
#: A test send: deliver to the target named whatever its event filter.
TEST = "x-shipcast-test"
#: On retry copies and dead letters: when the first attempt failed, and the last failure's reason.
FIRST_FAILED = "x-shipcast-first-failed-at"
LAST_ERROR = "x-shipcast-last-error"
#: On dead letters: why, the last status the target answered, the channel, and when.
REASON = "x-shipcast-reason"
STATUS = "x-shipcast-status"
CHANNEL = "x-shipcast-channel"
FAILED_AT = "x-shipcast-failed-at"

#: The W3C trace context of the event's publish (OpenTelemetry), when tracing is on.
TRACEPARENT = tracing.TRACEPARENT
TRACESTATE = tracing.TRACESTATE

#: Headers describing a failure, dropped when a message is replayed.
FAILURE_HEADERS = (ATTEMPT, REASON, STATUS, CHANNEL, FAILED_AT, FIRST_FAILED, LAST_ERROR)


def header_int(value: Any) -> int | None:
    """An integer header, tolerating strings and junk from foreign publishers."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def header_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def event_message(event: Event, body: bytes | None = None, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """The AMQP message carrying an event: persistent JSON, id and type in
    properties, the time of publishing in a header, and the current span's
    trace context when tracing is on."""
    message_headers = {PUBLISHED: int(time.time() * 1000), **(headers or {})}
    tracing.inject(message_headers, within=True)
    return aio_pika.Message(
        body if body is not None else event.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        type=event.event_type,
        timestamp=datetime.now(UTC),
        app_id="shipcast",
        headers=message_headers,
    )


def trace_context(headers: Mapping[str, Any]) -> Mapping[str, str]:
    """The W3C trace context a message carries, for the worker's spans to
    continue (empty: they start a trace of their own). A foreign publisher's
    bytes are decoded; anything but text or bytes, or longer than
    :func:`shipcast.tracing.carried` reads, is ignored, and a malformed
    ``traceparent`` is ignored when read."""
    if TRACEPARENT not in headers:  # what every message carries while tracing is off
        return tracing.NEW_TRACE
    return tracing.carried(_trace_header(headers.get(TRACEPARENT), tracing.TRACEPARENT_MAX),
                           _trace_header(headers.get(TRACESTATE), tracing.TRACESTATE_MAX))


def _trace_header(value: Any, longest: int) -> str | None:
    """A trace context header's text; ``None`` for junk (a table, a number)
    and for more bytes than it may hold, left undecoded."""
    if isinstance(value, bytes):
        return value.decode(errors="replace") if len(value) <= longest else None
    return value if isinstance(value, str) else None


def traced(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` with the current span's context in place of the trace
    context they carried (none, or none that could be read): the copies made
    from them (retries, the parking lot) are in the current span's trace."""
    kept = {name: value for name, value in headers.items() if name not in (TRACEPARENT, TRACESTATE)}
    tracing.inject(kept, within=True)
    return kept


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a consumed message with new headers (for a retry
    tier, the parking lot, or a replay)."""
    return aio_pika.Message(
        message.body, headers=headers, content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
        type=message.type, timestamp=message.timestamp, app_id="shipcast")


def resend_headers(target: str, *, force: bool = True, test: bool = True) -> dict[str, Any]:
    """A copy for one target only, sent on purpose: a replay, a resend, a test send."""
    headers: dict[str, Any] = {TARGET: target}
    if force:
        headers[FORCE] = True
    if test:
        headers[TEST] = True
    return headers


@dataclass(frozen=True)
class Routing:
    """What a consumed message's headers say about where it goes."""

    #: The one target a copy is for, or ``None`` for every target of the event.
    target: str | None
    #: Retry tiers already been through.
    attempt: int
    #: Deliver even if delivered before.
    force: bool
    #: Deliver whatever the target's event filter says.
    test: bool
    #: When the event was published, in ms since the epoch, if known.
    published_ms: int | None

    @classmethod
    def of(cls, headers: dict[str, Any]) -> Routing:
        return cls(header_text(headers.get(TARGET)), header_int(headers.get(ATTEMPT)) or 0,
                   bool(headers.get(FORCE)), bool(headers.get(TEST)), header_int(headers.get(PUBLISHED)))


def retry_headers(headers: dict[str, Any], target: str, attempt: int, *, waiting: bool,
                  error: str | None) -> dict[str, Any]:
    """The headers of a copy of a message for one target, going to a retry
    tier (``attempt`` spent unless it is ``waiting``), or on to the parking lot.
    ``error`` is the failure's reason, if it failed.

    A copy sent on purpose (a resend, a replay) stays forced through its
    retries: the target was delivered before, so without it the retry would
    be skipped as done and the resend lost. The price is the one every
    at-least-once copy pays: a worker that dies between a forced retry's
    success and its ack sends it once more (same ``webhook-id``)."""
    copy = {**headers, TARGET: target, ATTEMPT: attempt if waiting else attempt + 1}
    if error is not None:
        # What an operator reads in the parking lot: when it first failed, and how it failed last.
        copy.setdefault(FIRST_FAILED, datetime.now(UTC).isoformat())
        copy[LAST_ERROR] = error[:500]
    return copy


def dead_headers(headers: dict[str, Any], channel: str, reason: str, *, status: int | None = None) -> dict[str, Any]:
    """The headers of a dead letter: why, which channel, and when."""
    dead = {**headers, REASON: reason, CHANNEL: channel, FAILED_AT: datetime.now(UTC).isoformat()}
    if status is not None:
        dead[STATUS] = status
    return {k: v for k, v in dead.items() if v is not None}


def replay_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """A parked message's headers for its replay: its target kept, its failure forgotten."""
    return {k: v for k, v in headers.items() if k not in FAILURE_HEADERS}


@dataclass(frozen=True)
class Failure:
    """What a dead letter's headers say about its failure."""

    target: str | None
    reason: str | None
    attempts: int | None
    failed_at: str | None
    first_failed_at: str | None
    last_error: str | None
    channel: str | None

    @classmethod
    def of(cls, headers: dict[str, Any]) -> Failure:
        return cls(header_text(headers.get(TARGET)), header_text(headers.get(REASON)),
                   header_int(headers.get(ATTEMPT)), header_text(headers.get(FAILED_AT)),
                   header_text(headers.get(FIRST_FAILED)), header_text(headers.get(LAST_ERROR)),
                   header_text(headers.get(CHANNEL)))
