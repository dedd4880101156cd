"""Ingest: ``POST /v1/events`` (validated, published with confirms, 202),
``GET /v1/events/{id}`` and the envelope's schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipcast import metrics, tracing
from shipcast.app.api.access import (
    broker_answer,
    carries_operator_token,
    errors,
    invalid_answer,
    require_token,
)
from shipcast.app.publisher import SIZE_SLACK
from shipcast.app.services import Services, services_of
from shipcast.exceptions import BrokerError, InvalidEvent
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


# The operation as documented. A request with the operator's token, the only one the router's
# dependencies admit, is served before it gets here, by IngestRequests with the same accept():
# anything added to the router's dependencies reaches ingest only by being added there too.
@router.post("/events", status_code=202, openapi_extra=_EVENTS_BODY, responses=errors(413, 422))
async def post_events(request: Request) -> Response:
    """Publish one event or an array of events. Answers 202 with the ids only
    once RabbitMQ has confirmed every one; nothing of an invalid batch is published."""
    return accepted(await accept(services_of(request), await request.body()))


async def accept(services: Services, raw: bytes) -> list[str]:
    """Validate a ``POST /v1/events`` body (one event or an array) and publish
    its events; their ids once RabbitMQ has confirmed every one. (Its size is
    the :class:`~shipcast.app.api.limits.BodyLimit`'s to bound, before it is read.)

    :raises InvalidEvent: not JSON, too many events, or any event invalid: nothing is published.
    :raises BrokerError: not all were confirmed; posting the same body again is safe.
    """
    settings = services.settings
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent([{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]) from exc
    if isinstance(data, list) and len(data) > settings.max_batch:
        raise InvalidEvent([{"loc": ["body"], "msg": f"at most {settings.max_batch} events per request",
                             "type": "too_long"}])
    # JSON carries U+0000 only escaped: a body without the escape needs no search of its texts.
    events = parse_events(data, services.registry.event_types, nul_free=not escapes_nul(raw))
    if len(raw) > settings.max_event_bytes - SIZE_SLACK:  # a smaller body cannot hold an event over the limit
        check_sizes(events, settings.max_event_bytes)
    if tracing.enabled():  # one span per request: its events' ids (a lone event's attributes); each publish a child
        tracing.note({tracing.EVENT_IDS: [event.event_id for event in events], tracing.EVENT_COUNT: len(events),
                      **(tracing.event_attributes(events[0]) if len(events) == 1 else {})})
    ids = await services.publisher.publish_valid(events)
    for event in events:
        metrics.inc("shipcast_events_published_total", event_type=event.event_type)
    return ids


def accepted(ids: list[str]) -> Response:
    return Response(orjson.dumps({"ids": ids}), status_code=202, media_type="application/json")


def _caller_context(scope: Scope, operator: bool) -> Mapping[str, str]:
    """The trace context a ``POST /v1/events`` continues: the caller's, only
    once it has shown the token ingest requires (``operator``; a refused
    request, 401 or 403, is a trace of its own, never part of whatever trace
    its sender names). One ``traceparent`` (several are none), and every
    ``tracestate`` header as one list."""
    if not operator:
        return tracing.NEW_TRACE
    headers = Headers(scope=scope)
    parents = headers.getlist(tracing.TRACEPARENT)
    return tracing.carried(parents[0] if len(parents) == 1 else None, ",".join(headers.getlist(tracing.TRACESTATE)))


async def _body(receive: Receive) -> bytes | None:
    """A request's whole body; ``None`` when the caller went away first (or
    the body limit cut it off, which answers 413 itself)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class IngestRequests:
    """ASGI middleware for ``POST /v1/events``: counts each request by status
    and traces it (continuing the OMS's ``traceparent`` when the request
    carries the token), and serves a request with the operator's token
    itself, with :func:`accept`, as :func:`post_events` does. On the hot path
    of every OMS, FastAPI's routing and dependency layers cost a one-event
    request more CPU than its validation and publish together. Any other
    token, or none, goes on to the route, whose dependencies refuse it."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/events" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        operator = carries_operator_token(scope, self.services.settings.api_token)
        parent = _caller_context(scope, operator) if tracing.enabled() else tracing.NEW_TRACE
        status: int | None = None

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.span(SPAN, "server", parent=parent) as span:
            try:
                if operator:
                    await self._serve(scope, receive, answer)
                else:
                    await self.app(scope, receive, answer)
            finally:
                # An answer that never started here (a body over the limit, which the limit's
                # own 413 answers; a caller gone mid-body; an error) is not counted.
                if status is not None:
                    metrics.inc("shipcast_ingest_requests_total", code=str(status))
                if span is not None:
                    tracing.describe(span, None, {"http.request.method": "POST", "http.route": "/v1/events",
                                                  tracing.HTTP_STATUS: status})
                    if status is None or status >= 500:
                        tracing.failed(span, f"HTTP {status}" if status else "no answer")

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _body(receive)
        if raw is None:
            return
        response: Response
        try:
            response = accepted(await accept(self.services, raw))
        except InvalidEvent as exc:
            response = invalid_answer(exc)
        except BrokerError as exc:
            response = broker_answer(exc)
        await response(scope, receive, send)


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
