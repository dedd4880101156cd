"""Events as the OMS hands them on: validated exactly as ingest validates
them (the same models, the same event-type rows, the same size bound), with
an ``event_id`` fixed once, so that every retry and every copy carries it and
consumers can drop duplicates. The ``sequence`` may be left out: the relay
fills it from the outbox row's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shipcast.exceptions import InvalidEvent
from shipcast.model.envelope import Event, Order, check_sizes, new_event_id, parse_event
from shipcast.model.event_types import BUILTIN, EventTypeRegistry
from shipcast.settings import Settings

#: The built-in event types (OFD, DEL, FAIL, RET). An OMS that sends types a
#: plugin registers passes its own registry with those rows added.
BUILTIN_TYPES = EventTypeRegistry(BUILTIN)
#: The API's default ``SHIPCAST_MAX_EVENT_BYTES``: an event the API would refuse is refused here.
MAX_EVENT_BYTES: int = Settings.model_fields["max_event_bytes"].default
#: What stands in for a sequence left to the relay while the event is
#: validated: the largest there is, so the size checked is the size the
#: relay will send.
_LARGEST_SEQUENCE = 2**63 - 1


@dataclass(frozen=True)
class Draft:
    """A valid event, ready for the outbox or the API.

    ``payload`` is the envelope as JSON, every group present, with
    ``"sequence": null`` when :attr:`sequence` is ``None``. Build one with
    :func:`new_event` or :func:`event_from`, once per status change, and keep
    it for every retry: its ``event_id`` is what consumers deduplicate on.
    """

    event_id: str
    event_type: str
    partner_id: str
    order_id: str
    sequence: int | None
    payload: str

    def json(self) -> dict[str, Any]:
        """The envelope as a dict (``sequence`` ``None`` when left to the relay)."""
        parsed: dict[str, Any] = orjson.loads(self.payload)
        return parsed


def new_event(event_type: str, *, partner_id: str, order: Order | Mapping[str, Any],
              occurred_at: datetime | None = None, sequence: int | None = None, event_id: str | None = None,
              registry: EventTypeRegistry = BUILTIN_TYPES, max_bytes: int = MAX_EVENT_BYTES,
              **groups: BaseModel | Mapping[str, Any] | None) -> Draft:
    """An event of ``event_type`` from the envelope's typed groups
    (:class:`~shipcast.model.envelope.Order`, ``Rider``, ``Otp``, …) or dicts.

    ``groups`` are named as the envelope names them (``rider``, ``otp``,
    ``failure``, ``delivery_confirmation``, ``customer_input``; ``return_``
    for ``return``, a Python keyword). ``occurred_at`` defaults to now.

    :raises InvalidEvent: one error per offending field, as the API's 422.
    """
    data: dict[str, Any] = {
        "event_id": event_id or new_event_id(),
        "event_type": event_type,
        "occurred_at": occurred_at or datetime.now(UTC),
        "partner_id": partner_id,
        "sequence": sequence,
        "order": order,
    }
    for name, value in groups.items():
        data["return" if name == "return_" else name] = value
    return event_from(data, registry=registry, max_bytes=max_bytes)


def event_from(data: Mapping[str, Any] | Event, *, registry: EventTypeRegistry = BUILTIN_TYPES,
               max_bytes: int = MAX_EVENT_BYTES) -> Draft:
    """An event from a dict in the envelope's shape (as ``POST /v1/events``
    takes it), or an :class:`~shipcast.model.envelope.Event`. An absent
    ``event_id`` is generated here, once; an absent or null ``sequence`` is
    left to the relay.

    :raises InvalidEvent: one error per offending field, as the API's 422.
    """
    if isinstance(data, Event):
        data = data.model_dump(by_alias=True)
    if not isinstance(data, Mapping):
        raise InvalidEvent([{"loc": [], "msg": "an event must be a mapping or an Event", "type": "model_type"}])
    # Typed groups become dicts, so that parse_event looks into their text
    # (a NUL) and sees which groups are present, as it does for a request body.
    fields = {name: value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
              for name, value in data.items()}
    sequence = fields.get("sequence")
    fields["sequence"] = _LARGEST_SEQUENCE if sequence is None else sequence
    fields.setdefault("event_id", new_event_id())
    event = parse_event(fields, registry)
    check_sizes([event], max_bytes)
    envelope = event.model_dump(mode="json")
    if sequence is None:
        envelope["sequence"] = None
    return Draft(event_id=event.event_id, event_type=event.event_type, partner_id=event.partner_id,
                 order_id=event.order.order_id, sequence=None if sequence is None else event.sequence,
                 payload=orjson.dumps(envelope).decode())
