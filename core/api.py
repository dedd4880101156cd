"""The HTTP API: ingest, admin, the partner API, health, and plugin routes.

OpenAPI at ``/openapi.json``, docs at ``/docs``. Every ``/v1`` route requires
a bearer token: the operator's ``SHIPCAST_API_TOKEN`` for everything, or a
partner-scoped token (``scp_…``) for ``/v1/partners/{its id}/…`` only.
"""

from __future__ import annotations

import asyncio

import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, metrics
from .envelope import Event, json_schema, parse_events
from .exceptions import BrokerError, ConfigError, InvalidEvent, StoreError
from .partners import Partner, load_partners, read_yaml
from .plugin_manager import get_plugin_manager
from .redact import redact
from .reconcile import apply_partners, reconcile_bindings
from .replay import replay_deliveries
from .services import Services

DeliveryStatus = Literal["delivered", "retrying", "waiting", "skipped", "dead"]
_bearer = HTTPBearer(auto_error=False, description="SHIPCAST_API_TOKEN")


class JSONAnswer(JSONResponse):
    """JSON that can always be sent. An error that echoes what a caller sent
    may hold half a UTF-16 surrogate pair (from a ``\\ud800`` escape), which
    UTF-8 cannot encode: it goes back as that escape, not as a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (``partner_id`` is ``None``) or one partner."""

    partner_id: str | None = None


PARTNER_TOKEN_PREFIX = "scp_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def principal(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller, from the bearer token. Plugin routes that need a caller add
    this (or :func:`require_token` / :func:`partner_scope`) themselves: a
    tracking page or a provider's callback must stay reachable without one."""
    services = services_of(request)
    given = credentials.credentials if credentials else ""
    expected = services.settings.api_token
    if expected and hmac.compare_digest(given.encode(), expected.encode()):
        return Principal()
    if given.startswith(PARTNER_TOKEN_PREFIX):
        partner_id = await services.store.partner_for_token(token_hash(given))
        if partner_id is not None:
            return Principal(partner_id)
    if not expected:
        raise HTTPException(401, "SHIPCAST_API_TOKEN is not set on the server: every request is refused "
                                 "but a partner token's", headers={"WWW-Authenticate": "Bearer"})
    raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def require_token(caller: Principal = Depends(principal)) -> Principal:
    """The operator's token only: ingest and every cross-partner route."""
    if caller.partner_id is not None:
        raise HTTPException(403, f"this token is scoped to partner {caller.partner_id!r}: "
                                 f"use /v1/partners/{caller.partner_id}/…")
    return caller


def partner_scope(partner_id: str, caller: Principal = Depends(principal)) -> str:
    """The operator's token, or the token of the partner named in the path."""
    if caller.partner_id is not None and caller.partner_id != partner_id:
        raise HTTPException(403, f"this token is scoped to partner {caller.partner_id!r}")
    return partner_id


#: What each error status means, for the OpenAPI document.
_ERRORS = {
    400: "The body cannot be read as JSON (not UTF-8)",
    401: "No bearer token, or a wrong one",
    403: "A partner's token, reaching beyond its partner",
    404: "No such partner, event, endpoint or token (or not this partner's)",
    409: "It exists already",
    413: "The body is larger than SHIPCAST_MAX_EVENT_BYTES × SHIPCAST_MAX_BATCH",
    422: "Invalid: the answer names each field that is wrong",
    503: "The broker or the store is unreachable right now: try again after Retry-After",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` for error statuses a route answers with, each ``{"detail": …}``."""
    schema = {"type": "object", "required": ["detail"], "properties": {"detail": {}}}
    return {status: {"description": _ERRORS[status], "content": {"application/json": {"schema": schema}}}
            for status in statuses}


_EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
        ]}}},
    }
}

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=errors(401, 403, 503))
#: The partner API: the operator, or that partner's own token.
partner_v1 = APIRouter(prefix="/v1/partners/{partner_id}", dependencies=[Depends(partner_scope)],
                       tags=["partner"], responses=errors(401, 403, 503))


@v1.post("/events", status_code=202, openapi_extra=_EVENTS_BODY, responses=errors(413, 422))
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
    events = parse_events(data)
    if len(raw) > limit - SIZE_SLACK:  # a smaller body cannot hold an event over the limit
        _check_sizes(events, limit)
    ids = await services.publisher.publish_valid(events)
    for event in events:
        metrics.inc("shipcast_events_published_total", event_type=event.event_type)
    return JSONResponse({"ids": ids}, status_code=202)


@v1.get("/events/{event_id}", responses=errors(404))
async def get_event(event_id: str, request: Request) -> dict[str, Any]:
    """An archived event with its deliveries and every attempt."""
    store = services_of(request).store
    event = await store.get_event(event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id!r} in the archive")
    return {"event": event, "deliveries": await store.list_deliveries(event_id=event_id),
            "attempts": await store.list_attempts(event_id)}


@v1.get("/partners")
async def list_partners(request: Request) -> list[dict[str, Any]]:
    """Applied partner configs, secrets redacted."""
    return [redact(partner.to_dict()) for partner in await services_of(request).store.get_partners()]


@v1.get("/partners/{partner_id}", responses=errors(404))
async def get_partner(partner_id: str, request: Request) -> dict[str, Any]:
    """A partner's applied config, secrets redacted (the operator's view: a
    partner sees its endpoints at ``/v1/partners/{id}/endpoints``)."""
    redacted: dict[str, Any] = redact((await stored_partner(request, partner_id)).to_dict())
    return redacted


async def stored_partner(request: Request, partner_id: str) -> Partner:
    partner = await services_of(request).store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, f"no partner {partner_id!r}")
    return partner


@v1.post("/partners/{partner_id}/tokens", status_code=201, responses=errors(404))
async def create_partner_token(partner_id: str, request: Request,
                               name: str = Query("default", min_length=1, max_length=200)) -> dict[str, str]:
    """A new token scoped to this partner: it sees and changes only this
    partner's data. Shown once; only its hash is stored, and the start of
    that hash is the token's id."""
    await stored_partner(request, partner_id)
    token = PARTNER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    await services_of(request).store.add_partner_token(digest, partner_id, name)
    return {"partner_id": partner_id, "id": digest[:16], "name": name, "token": token}


@v1.get("/partners/{partner_id}/tokens")
async def list_partner_tokens(partner_id: str, request: Request) -> list[dict[str, Any]]:
    """The partner's tokens: id, name and when each was made (never the token)."""
    return await services_of(request).store.list_partner_tokens(partner_id)


@v1.delete("/partners/{partner_id}/tokens/{token_id}", responses=errors(404))
async def revoke_partner_token(partner_id: str, token_id: str, request: Request) -> dict[str, str]:
    """Revoke one token at once."""
    if not await services_of(request).store.delete_partner_token(partner_id, token_id):
        raise HTTPException(404, f"partner {partner_id!r} has no token {token_id!r}")
    return {"revoked": token_id}


@partner_v1.get("/messages")
async def list_messages(partner_id: str, request: Request, status: DeliveryStatus | None = None,
                        event_type: str | None = None, order_id: str | None = None,
                        endpoint: str | None = None, channel: str | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Messages to this partner (one per event and target), newest first.
    ``since``/``until`` (RFC 3339) bound when each last changed."""
    return await services_of(request).store.list_deliveries(
        partner_id=partner_id, status=status, event_type=event_type, order_id=order_id, target=endpoint,
        channel=channel, since=since, until=until, limit=limit)


@partner_v1.get("/messages/{event_id}", responses=errors(404))
async def get_message(partner_id: str, event_id: str, request: Request) -> dict[str, Any]:
    """One event as sent, with its deliveries and every attempt."""
    store = services_of(request).store
    event = await store.get_event(event_id)
    if event is not None and event.get("partner_id") != partner_id:
        event = None  # event ids are the publishers': another partner's may share this one
    rows = await store.list_deliveries(event_id=event_id, partner_id=partner_id)
    if event is None and not rows:
        raise HTTPException(404, f"no message {event_id!r} for partner {partner_id!r}")
    return {"event": event, "deliveries": rows,
            "attempts": await store.list_attempts(event_id, partner_id=partner_id)}


@partner_v1.get("/attempts")
async def list_attempts(partner_id: str, request: Request, event_id: str | None = None,
                        endpoint: str | None = None, channel: str | None = None,
                        outcome: Literal["delivered", "retry", "skipped", "dead"] | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Delivery attempts to this partner, newest first (oldest first for one event)."""
    return await services_of(request).store.list_attempts(
        event_id, channel, partner_id=partner_id, target=endpoint, outcome=outcome, since=since, until=until,
        limit=limit)


@partner_v1.post("/messages/{event_id}/resend", status_code=202, responses=errors(404))
async def resend(partner_id: str, event_id: str, request: Request, endpoint: str | None = None,
                 channel: str | None = None) -> dict[str, int]:
    """Send one message again to each of its targets (or one endpoint), even if delivered."""
    count = await replay_deliveries(services_of(request), event_id=event_id, partner_id=partner_id,
                                    target=endpoint, channel=channel)
    if not count:
        raise HTTPException(404, f"no deliveries of {event_id!r} for partner {partner_id!r}")
    return {"resent": count}


@partner_v1.post("/recover", status_code=202)
async def recover(partner_id: str, request: Request, since: datetime, until: datetime | None = None,
                  endpoint: str | None = None, channel: str | None = None,
                  limit: int = Query(10000, ge=1, le=100000)) -> dict[str, int]:
    """Send again every message that failed (parked) since ``since``."""
    count = await replay_deliveries(services_of(request), partner_id=partner_id, status="dead", since=since,
                                    until=until, target=endpoint, channel=channel, limit=limit)
    return {"recovered": count}


@v1.delete("/partners/{partner_id}", responses=errors(404))
async def delete_partner(partner_id: str, request: Request) -> dict[str, Any]:
    """Remove a partner's config and the bindings it made; its channels stop
    receiving its events."""
    services = services_of(request)
    if not await services.store.delete_partner(partner_id):
        raise HTTPException(404, f"no partner {partner_id!r}")
    await services.announce_change()
    changes = await reconcile_bindings(services)
    return {"deleted": partner_id,
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


@v1.post("/partners", responses=errors(422), openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["partners"]}},
    "application/yaml": {"schema": {"type": "string"}}}}})
async def post_partners(request: Request) -> dict[str, Any]:
    """Apply a partners document (the partners file, as JSON or YAML): upsert the
    partners in it and make the bindings match."""
    raw = await request.body()
    try:
        data = read_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"request body: not valid YAML or JSON: {exc}") from exc
    partners = load_partners(data, "request body")
    changes = await apply_partners(services_of(request), partners, source="request body")
    return {"applied": [partner.id for partner in partners],
            "bindings_added": {q: sorted(k) for q, k in changes.added.items()},
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


@v1.get("/deliveries")
async def list_deliveries(request: Request, event_id: str | None = None, partner_id: str | None = None,
                          channel: str | None = None, status: DeliveryStatus | None = None,
                          target: str | None = None, event_type: str | None = None, order_id: str | None = None,
                          since: datetime | None = None, until: datetime | None = None,
                          limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """The delivery log across partners, newest first, filtered by any of the parameters."""
    return await services_of(request).store.list_deliveries(
        event_id=event_id, partner_id=partner_id, channel=channel, status=status, target=target,
        event_type=event_type, order_id=order_id, since=since, until=until, limit=limit)


@v1.post("/deliveries/replay")
async def replay(request: Request, event_id: str | None = None, partner_id: str | None = None,
                 channel: str | None = None, status: DeliveryStatus | None = "dead", target: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = Query(1000, ge=1, le=100000)) -> dict[str, int]:
    """Send logged deliveries again (by default every dead one), even if delivered before."""
    count = await replay_deliveries(services_of(request), event_id=event_id, partner_id=partner_id,
                                    channel=channel, status=status, target=target, since=since, until=until,
                                    limit=limit)
    return {"replayed": count}


@v1.get("/operator/events")
async def operator_events(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Operator events (endpoint failing, recovered, disabled), newest first."""
    return await services_of(request).store.list_operator_events(limit=limit)


@v1.get("/schema")
async def schema() -> dict[str, Any]:
    """The envelope's JSON Schema, with one rule per registered event type."""
    return json_schema()


#: How much larger an event can grow when it is sent on (null groups written out).
SIZE_SLACK = 1024


def _check_sizes(events: list[Event], limit: int) -> None:
    """Refuse any event larger than ``SHIPCAST_MAX_EVENT_BYTES`` as sent on."""
    errors = []
    for index, event in enumerate(events):
        size = len(event.to_json())
        if size > limit:
            errors.append({"loc": [index] if len(events) > 1 else [], "type": "too_large",
                           "msg": f"event {event.event_id} is {size} bytes as JSON; the limit is {limit} "
                                  "(SHIPCAST_MAX_EVENT_BYTES)"})
    if errors:
        raise InvalidEvent(errors)


def _public_url(url: str) -> str:
    """A URL without its credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def add_operations_routes(app: FastAPI, services: Services) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics``: on the API, and on a
    worker's health port (``SHIPCAST_HEALTH_PORT``)."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Ready: the broker connected and not blocking publishers (no memory
        or disk alarm), the store answering within 2 s, and start-up done (the
        partners file applied, consumers attached)."""
        broker = services.broker.connected and not services.broker.blocked
        try:
            async with asyncio.timeout(2):
                await services.store.ping()
            store = True
        except (StoreError, TimeoutError):
            store = False
        ready = broker and store and services.started
        broker_state = "up" if broker else "blocked" if services.broker.connected else "down"
        return JSONResponse({"broker": broker_state, "store": "up" if store else "down",
                             "started": services.started}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")


def operations_app(services: Services) -> FastAPI:
    """The health and metrics routes alone, for a process without the API."""
    app = FastAPI(title="shipcast worker", docs_url=None, redoc_url=None, openapi_url=None)
    add_operations_routes(app, services)
    return app


def create_app(services: Services, *, manage_services: bool = True) -> FastAPI:
    """The ASGI app. With ``manage_services`` the app opens and closes the
    services itself; ``shipcast run`` shares them with the workers instead."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_services:
            await services.start()
        try:
            yield
        finally:
            if manage_services:
                await services.close()

    app = FastAPI(title="shipcast", version=__version__, lifespan=lifespan,
                  description="Order events in; signed webhooks and no-code channels out.")
    app.state.services = services

    @app.middleware("http")
    async def _count_ingest(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if request.url.path == "/v1/events" and request.method == "POST":
            metrics.inc("shipcast_ingest_requests_total", code=str(response.status_code))
        return response

    @app.exception_handler(InvalidEvent)
    async def _invalid(request: Request, exc: InvalidEvent) -> JSONResponse:
        metrics.inc("shipcast_events_rejected_total")
        return JSONAnswer({"detail": exc.errors}, status_code=422)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONAnswer({"detail": str(exc), "errors": exc.errors}, status_code=422)

    @app.exception_handler(BrokerError)
    async def _broker(request: Request, exc: BrokerError) -> JSONResponse:
        return JSONAnswer({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        return JSONAnswer({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    # FastAPI's own two, answering in JSON that can always be sent.
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304) or exc.status_code < 200:  # statuses that carry no body
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONAnswer({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONAnswer({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        from .plugin_manager import channels
        from .templating import environment

        page = environment().get_template("console/index.html").render(
            version=__version__, broker_up=services.broker.connected, channels={name: cls.description for name, cls in sorted(channels().items())},
            management_url=_public_url(services.settings.management_url))
        return HTMLResponse(page)

    add_operations_routes(app, services)

    app.include_router(v1)
    app.include_router(partner_v1)
    for routers in get_plugin_manager().hook.shipcast_routers():
        for router in routers:
            app.include_router(router)

    # The envelope is documented in OpenAPI from the same models ingest validates
    # with, and with the same rows: the registered event types and their groups.
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            event = json_schema(as_input=True, ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(event.pop("$defs", {}))
            components["Event"] = event
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
