"""Ingest: ``POST /v1/events`` (validated, published with confirms, 202),
``GET /v1/events/{id}`` and the envelope's schema."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from shipcast import metrics, tracing
from shipcast.app.api.access import (
    errors,
    require_token,
)
from shipcast.app.publisher import SIZE_SLACK
from shipcast.app.services import services_of
from shipcast.exceptions import InvalidEvent
from shipcast.model.envelope import check_sizes, escapes_nul, json_schema, parse_events

#: The span of each request (made by the app's middleware, which sees every answer's status).
SPAN = "POST /v1/events"

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=errors(401, 403, 503))


_EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
        ]}}},
    }
}


@router.post("/events", status_code=202, openapi_extra=_EVENTS_BODY, responses=errors(413, 422))
async def post_events(request: Request) -> JSONResponse:
    """Publish one event or an array of events. Answers 202 with the ids only
    once RabbitMQ has confirmed every one; nothing of an invalid batch is published."""
    services = services_of(request)
    limit = services.settings.max_event_bytes
    most = limit * services.settings.max_batch
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > most:  # refused before it is read
        raise HTTPException(413, f"request body is {declared} bytes; at most {most} "
                                 f"({services.settings.max_batch} events of {limit} bytes)")
    raw = await request.body()
    if len(raw) > most:
        raise HTTPException(413, f"request body is {len(raw)} bytes; at most {most} "
                                 f"({services.settings.max_batch} events of {limit} bytes)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent([{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]) from exc
    if isinstance(data, list) and len(data) > services.settings.max_batch:
        raise InvalidEvent([{"loc": ["body"], "msg": f"at most {services.settings.max_batch} events per request",
                             "type": "too_long"}])
    # JSON carries U+0000 only escaped: a body without the escape needs no search of its texts.
    events = parse_events(data, services.registry.event_types, nul_free=not escapes_nul(raw))
    if len(raw) > limit - SIZE_SLACK:  # a smaller body cannot hold an event over the limit
        check_sizes(events, limit)
    if tracing.enabled():  # one span per request: its events' ids (a lone event's attributes); each publish a child
        tracing.note({tracing.EVENT_IDS: [event.event_id for event in events], tracing.EVENT_COUNT: len(events),
                      **(tracing.event_attributes(events[0]) if len(events) == 1 else {})})
    ids = await services.publisher.publish_valid(events)
    for event in events:
        metrics.inc("shipcast_events_published_total", event_type=event.event_type)
    return JSONResponse({"ids": ids}, status_code=202)


@router.get("/events/{event_id}", responses=errors(404))
async def get_event(event_id: str, request: Request) -> dict[str, Any]:
    """An archived event with its deliveries and every attempt."""
    store = services_of(request).store
    event = await store.get_event(event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id!r} in the archive")
    return {"event": event, "deliveries": await store.list_deliveries(event_id=event_id),
            "attempts": await store.list_attempts(event_id)}


@router.get("/schema")
async def schema(request: Request) -> dict[str, Any]:
    """The envelope's JSON Schema, with one rule per registered event type."""
    return json_schema(services_of(request).registry.event_types)
