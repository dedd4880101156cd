"""The event envelope: the one stable shape every partner receives.

Every field group is always serialised, as ``null`` where it does not apply,
so a partner integrates once and receives new event types with no rework.
Which groups an event type requires or forbids is data (see
:mod:`shipcast.model.event_types`); :func:`parse_event` applies that row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from shipcast.exceptions import InvalidEvent
from shipcast.model.event_types import GROUPS, EventTypeRegistry

SCHEMA_VERSION: Literal["1.0"] = "1.0"
PARTNER_ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"

#: The bound of counts: every partner's language parses them as an int.
INT32_MAX = 2**31 - 1

Text = Annotated[str, Field(min_length=1, max_length=500)]
ShortText = Annotated[str, Field(min_length=1, max_length=100)]
Url = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^https?://")]


def rfc3339(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: before year 1 in UTC
        raise ValueError("falls outside the years 1 to 9999 once converted to UTC") from None


#: A timestamp that must carry a zone; stored in UTC, written as RFC 3339 ``Z``.
Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_in_utc),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Customer(_Group):
    name: Text
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()-]{6,20}$", description="E.164 preferred")
    email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    language: str = Field("en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$", description="BCP 47, e.g. en, hi")


class Address(_Group):
    line1: Text
    line2: str | None = Field(None, max_length=500)
    city: ShortText
    state: str | None = Field(None, max_length=100)
    postal_code: str = Field(..., min_length=3, max_length=12)
    country: str = Field("IN", pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class Payment(_Group):
    method: Literal["prepaid", "cod"]
    amount: float = Field(..., ge=0, allow_inf_nan=False)
    currency: str = Field("INR", pattern=r"^[A-Z]{3}$")


class Order(_Group):
    """Core order: present on every event."""

    order_id: ShortText
    merchant_order_ref: str | None = Field(None, max_length=100)
    customer: Customer
    address: Address | None = None
    payment: Payment | None = None
    item_count: int | None = Field(None, ge=0, le=INT32_MAX)
    promised_date: date | None = None


class Rider(_Group):
    rider_id: ShortText
    name: ShortText
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()*X-]{6,20}$", description="may be masked")
    photo_url: Url | None = None
    vehicle_number: str | None = Field(None, max_length=20)


class Otp(_Group):
    code: str = Field(..., pattern=r"^[0-9]{4,8}$")
    expires_at: Timestamp | None = None


class Failure(_Group):
    code: str = Field(..., pattern=r"^[A-Z][A-Z0-9_]{0,63}$", examples=["CUSTOMER_UNAVAILABLE"])
    reason: Text
    attempt: int = Field(1, ge=1, le=INT32_MAX)
    next_attempt_at: Timestamp | None = None
    reschedule_url: Url | None = None


class Return(_Group):
    return_id: ShortText
    reason: Text
    initiated_at: Timestamp | None = None
    destination: str | None = Field(None, max_length=500)


class DeliveryConfirmation(_Group):
    delivered_at: Timestamp
    received_by: str | None = Field(None, max_length=100)
    method: Literal["otp", "signature", "photo", "contactless"] | None = None
    proof_url: Url | None = None


class CustomerInput(_Group):
    """What the customer sent back (from the tracking page): a new date, delivery
    instructions, or a rating. Carried by the customer's own event types
    (``RESCHEDULE_REQUESTED``, ``INSTRUCTIONS_ADDED``, ``RATED``)."""

    requested_date: date | None = None
    instructions: str | None = Field(None, min_length=1, max_length=500)
    rating: int | None = Field(None, ge=1, le=5)
    comment: str | None = Field(None, min_length=1, max_length=1000)
    submitted_via: str = Field("tracking_page", max_length=32)


def new_event_id() -> str:
    """A fresh, sortable-enough, unguessable event id."""
    return f"evt_{uuid.uuid4().hex}"


class Event(BaseModel):
    """The envelope. Build one with :func:`parse_event` to apply its type's row."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        serialize_by_alias=True,
        json_schema_serialization_defaults_required=True,
        title="shipcast event",
    )

    event_id: str = Field(default_factory=new_event_id, pattern=EVENT_ID_PATTERN,
                          description="Unique per event; the webhook-id of its deliveries")
    event_type: str = Field(..., pattern=r"^[A-Z][A-Z0-9_]{0,31}$", description="A registered event type")
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    occurred_at: Timestamp = Field(..., description="RFC 3339, UTC")
    partner_id: str = Field(..., pattern=PARTNER_ID_PATTERN)
    sequence: int = Field(..., ge=0, le=2**63 - 1, description="Per order, increasing")
    order: Order
    rider: Rider | None = None
    otp: Otp | None = None
    failure: Failure | None = None
    return_: Return | None = Field(None, alias="return")
    delivery_confirmation: DeliveryConfirmation | None = None
    customer_input: CustomerInput | None = None

    @property
    def routing_key(self) -> str:
        return f"{self.partner_id}.{self.event_type}"

    def to_json(self) -> bytes:
        """The envelope as partners receive it: every group present."""
        return self.model_dump_json().encode()


_ATTR = {group: "return_" if group == "return" else group for group in GROUPS}


def _errors_of(exc: ValidationError, prefix: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _nul_errors(data: Any, prefix: tuple[Any, ...]) -> list[dict[str, Any]]:
    """An error for every text in ``data`` holding U+0000: PostgreSQL cannot
    store it, so an event carrying one could be neither archived nor have its
    deliveries recorded."""
    if isinstance(data, str):
        return [{"loc": list(prefix), "msg": "must not contain the NUL character (U+0000)", "type": "string_nul"}] \
            if "\x00" in data else []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    return [error for key, value in items for error in _nul_errors(value, (*prefix, key))]


def escapes_nul(raw: bytes | str) -> bool:
    """Whether JSON text may hold U+0000 in a string: only as the escape ``\\u0000``."""
    return b"\\u0000" in raw if isinstance(raw, bytes) else "\\u0000" in raw


def parse_event(data: Any, registry: EventTypeRegistry, *, prefix: tuple[Any, ...] = (),
                nul_free: bool = False) -> Event:
    """Validate ``data`` (a dict, JSON bytes or an :class:`Event`) as an envelope
    and against its event type's row.

    ``nul_free``: the caller knows no text in ``data`` holds U+0000 (the JSON
    it was parsed from has no ``\\u0000``, the only way JSON carries one), so
    it is not looked for again. Ignored when ``data`` is itself JSON text: a
    string in the caller's JSON may hold the escape escaped (``\\u005cu0000``).

    :raises InvalidEvent: with one error per offending field; ``prefix`` is put
        in front of each location (the index in a batch, say).
    """
    if isinstance(data, bytes | str) and not escapes_nul(data):
        # The fast path (every message a worker consumes): parse and validate in
        # one pass, then check the row; the slow path below explains failures
        # (and finds a NUL, which JSON can only carry escaped).
        try:
            parsed = Event.model_validate_json(data)
        except ValueError:
            pass
        else:
            row = registry.get(parsed.event_type)
            if row is not None and not row.check(g for g in GROUPS if getattr(parsed, _ATTR[g]) is not None):
                return parsed
    if isinstance(data, Event):
        data = data.model_dump(by_alias=True)
    elif isinstance(data, bytes | str):
        nul_free = False
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent([{"loc": list(prefix), "msg": f"not JSON: {exc}", "type": "json_invalid"}]) from exc
    if not isinstance(data, dict):
        raise InvalidEvent([{"loc": list(prefix), "msg": "an event must be a JSON object", "type": "model_type"}])

    errors: list[dict[str, Any]] = []
    event: Event | None = None
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        errors = _errors_of(exc, prefix)
    refused = [error["loc"] for error in errors]
    if not nul_free:
        errors += [error for error in _nul_errors(data, prefix) if error["loc"] not in refused]

    event_type = data.get("event_type")
    if isinstance(event_type, str):
        row = registry.get(event_type)
        if row is None:
            errors = [e for e in errors if e["loc"] != [*prefix, "event_type"]]
            errors.append({
                "loc": [*prefix, "event_type"],
                "msg": f"unknown event type {event_type!r}; known: {', '.join(registry)}",
                "type": "unknown_event_type",
            })
        else:
            # ``return`` may come by its Python name too (populate_by_name): the row sees either
            present = [group for group in GROUPS
                       if data.get(group) is not None or data.get(_ATTR[group]) is not None]
            reported = {tuple(e["loc"][: len(prefix) + 1]) for e in errors}
            for group, message in row.check(present):
                if (*prefix, group) not in reported:
                    errors.append({"loc": [*prefix, group], "msg": message, "type": "event_type_row"})
    if errors:
        raise InvalidEvent(errors)
    assert event is not None
    return event


def parse_events(data: Any, registry: EventTypeRegistry, *, nul_free: bool = False) -> list[Event]:
    """Validate one event or a list of events; all-or-nothing (``nul_free``
    as for :func:`parse_event`).

    :raises InvalidEvent: naming every offending field of every event, with the
        event's index first in each location when ``data`` is a list.
    """
    if not isinstance(data, list):
        return [parse_event(data, registry, nul_free=nul_free)]
    if not data:
        raise InvalidEvent([{"loc": [], "msg": "the batch is empty", "type": "too_short"}])
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(data):
        try:
            events.append(parse_event(item, registry, prefix=(index,), nul_free=nul_free))
        except InvalidEvent as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidEvent(errors)
    return events


def check_sizes(events: Sequence[Event], limit: int) -> None:
    """Refuse any event larger than ``limit`` (``SHIPCAST_MAX_EVENT_BYTES``)
    as sent on: ingest checks what it publishes, the OMS-side client what it
    writes to the outbox, so both refuse the same events.

    :raises InvalidEvent: naming each event too large (by its index in a batch).
    """
    errors = []
    for index, event in enumerate(events):
        size = len(event.to_json())
        if size > limit:
            errors.append({"loc": [index] if len(events) > 1 else [], "type": "too_large",
                           "msg": f"event {event.event_id} is {size} bytes as JSON; the limit is {limit} "
                                  "(SHIPCAST_MAX_EVENT_BYTES)"})
    if errors:
        raise InvalidEvent(errors)


def json_schema(registry: EventTypeRegistry, *, as_input: bool = False,
                ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The envelope's JSON Schema (draft 2020-12), generated from the models,
    with one ``if/then`` per registered event type for its row.

    By default, the event as partners receive it (every group present); with
    ``as_input``, as ingest takes it (a group that does not apply may be left
    out), for the OpenAPI document, whose ``ref_template`` it takes.
    """
    schema = Event.model_json_schema(mode="validation" if as_input else "serialization", ref_template=ref_template)
    if not as_input:
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = "https://shipcast.dev/schema/event/1.0.json"
    schema["properties"]["event_type"]["enum"] = list(registry)
    rules = []
    for row in registry.values():
        then: dict[str, Any] = {
            "required": sorted(row.required),
            "properties": {
                **{group: {"not": {"type": "null"}} for group in sorted(row.required)},
                **{group: {"type": "null"} for group in sorted(row.forbidden)},
            },
        }
        rules.append({
            "if": {"properties": {"event_type": {"const": row.name}}, "required": ["event_type"]},
            "then": then,
            "description": row.description,
        })
    schema["allOf"] = rules
    return schema
