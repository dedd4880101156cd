"""One outbox row into an event, with ingest's validation: what a row
becomes, or the error it is moved aside with (naming the field)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shipcast.exceptions import InvalidEvent
from shipcast.model.envelope import Event, check_sizes, escapes_nul, parse_events
from shipcast.model.event_types import EventTypeRegistry

#: The longest error kept on a failed row.
ERROR_CHARS = 2000


@dataclass(frozen=True)
class OutboxRow:
    """A pending row as the relay reads it."""

    id: int
    event_id: str
    partner_id: str
    order_id: str
    payload: str


def error_text(exc: InvalidEvent) -> str:
    """ingest's 422 errors as one line: ``field: message; …``."""
    parts = [f"{'.'.join(str(part) for part in error['loc']) or 'event'}: {error['msg']}" for error in exc.errors]
    return "; ".join(parts)[:ERROR_CHARS]


def parse_row(row: OutboxRow, event_types: EventTypeRegistry, max_bytes: int) -> Event:
    """The row's event, validated as ingest validates a posted one. A
    ``sequence`` left null or out is the row's id: ids only grow, so one
    order's events, written in commit order, get increasing sequences.

    :raises InvalidEvent: the payload is over ``max_bytes``, not a JSON
        object, not a valid event, or its ids disagree with the row's columns.
    """
    size = len(row.payload.encode())
    if size > max_bytes:
        raise InvalidEvent([{"loc": ["payload"], "type": "too_large",
                             "msg": f"{size} bytes; the limit is {max_bytes} (SHIPCAST_MAX_EVENT_BYTES)"}])
    try:
        data: Any = orjson.loads(row.payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent([{"loc": ["payload"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]) from None
    if not isinstance(data, dict):
        raise InvalidEvent([{"loc": ["payload"], "msg": "not a JSON object", "type": "dict_type"}])
    if data.get("sequence") is None:
        data["sequence"] = row.id
    # JSON carries U+0000 only escaped: a payload without the escape needs no search for it.
    [event] = parse_events(data, event_types, nul_free=not escapes_nul(row.payload))
    check_sizes([event], max_bytes)
    mismatched = [(column, found) for column, found in (("event_id", event.event_id),
                                                        ("partner_id", event.partner_id),
                                                        ("order_id", event.order.order_id))
                  if getattr(row, column) != found]
    if mismatched:
        raise InvalidEvent([{"loc": [column], "type": "mismatch",
                             "msg": f"the row's {column} {getattr(row, column)!r} is not the payload's {found!r}"}
                            for column, found in mismatched])
    return event
