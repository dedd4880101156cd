"""The HTTP API: ingest, admin, health, and routes added by plugins.

OpenAPI at ``/openapi.json``, docs at ``/docs``. Every ``/v1`` route requires
the bearer token ``SHIPCAST_API_TOKEN``; with none set, every one is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from . import __version__, metrics
from .envelope import Event, json_schema, parse_events
from .exceptions import BrokerError, ConfigError, InvalidEvent, StoreError
from .partners import load_partners
from .plugin_manager import get_plugin_manager
from .redact import redact
from .reconcile import apply_partners, reconcile_bindings
from .replay import replay_deliveries
from .services import Services

_bearer = HTTPBearer(auto_error=False, description="SHIPCAST_API_TOKEN")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def require_token(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """The dependency every admin and ingest route carries. Plugin routes are
    mounted as they are: one that needs the token adds this dependency itself
    (a tracking page or a provider's callback must stay reachable without it)."""
    expected = services_of(request).settings.api_token
    if not expected:
        raise HTTPException(401, "SHIPCAST_API_TOKEN is not set on the server: every request is refused",
                            headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


_EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
        ]}}},
    }
}

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])


@v1.post("/events", status_code=202, openapi_extra=_EVENTS_BODY,
         responses={422: {"description": "invalid events: one error per field"},
                    503: {"description": "the broker is unreachable or did not confirm"}})
async def post_events(request: Request) -> JSONResponse:
    """Publish one event or an array of events. Answers 202 with the ids only
    once RabbitMQ has confirmed every one; nothing of an invalid batch is published."""
    services = services_of(request)
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent([{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]) from exc
    if isinstance(data, list) and len(data) > services.settings.max_batch:
        raise InvalidEvent([{"loc": ["body"], "msg": f"at most {services.settings.max_batch} events per request",
                             "type": "too_long"}])
    events = parse_events(data)
    ids = await services.publisher.publish_valid(events)
    metrics.inc("shipcast_events_published_total", len(ids))
    return JSONResponse({"ids": ids}, status_code=202)


@v1.get("/events/{event_id}")
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


@v1.get("/partners/{partner_id}")
async def get_partner(partner_id: str, request: Request) -> dict[str, Any]:
    partner = await services_of(request).store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, f"no partner {partner_id!r}")
    redacted: dict[str, Any] = redact(partner.to_dict())
    return redacted


@v1.delete("/partners/{partner_id}")
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


@v1.post("/partners", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["partners"]}},
    "application/yaml": {"schema": {"type": "string"}}}}})
async def post_partners(request: Request) -> dict[str, Any]:
    """Apply a partners document (the partners file, as JSON or YAML): upsert the
    partners in it and make the bindings match."""
    raw = await request.body()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"request body: not valid YAML or JSON: {exc}") from exc
    partners = load_partners(data, "request body")
    changes = await apply_partners(services_of(request), partners)
    return {"applied": [partner.id for partner in partners],
            "bindings_added": {q: sorted(k) for q, k in changes.added.items()},
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


@v1.get("/deliveries")
async def list_deliveries(request: Request, event_id: str | None = None, partner_id: str | None = None,
                          channel: str | None = None, status: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    """The delivery log, newest first, filtered by any of the parameters."""
    return await services_of(request).store.list_deliveries(
        event_id=event_id, partner_id=partner_id, channel=channel, status=status, limit=min(limit, 1000))


@v1.post("/deliveries/replay")
async def replay(request: Request, event_id: str | None = None, partner_id: str | None = None,
                 channel: str | None = None, status: str | None = "dead", limit: int = 1000) -> dict[str, int]:
    """Send logged deliveries again (by default every dead one), even if delivered before."""
    count = await replay_deliveries(services_of(request), event_id=event_id, partner_id=partner_id,
                                    channel=channel, status=status, limit=limit)
    return {"replayed": count}


@v1.get("/schema")
async def schema() -> dict[str, Any]:
    """The envelope's JSON Schema, with one rule per registered event type."""
    return json_schema()


def _public_url(url: str) -> str:
    """A URL without its credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


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

    @app.exception_handler(InvalidEvent)
    async def _invalid(request: Request, exc: InvalidEvent) -> JSONResponse:
        metrics.inc("shipcast_events_rejected_total")
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "errors": exc.errors}, status_code=422)

    @app.exception_handler(BrokerError)
    async def _broker(request: Request, exc: BrokerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        from .plugin_manager import channels
        from .templating import environment

        page = environment().get_template("console/index.html").render(
            version=__version__, broker_up=services.broker.connected, channels={name: cls.description for name, cls in sorted(channels().items())},
            management_url=_public_url(services.settings.management_url))
        return HTMLResponse(page)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        broker = services.broker.connected
        ready = broker and services.started
        return JSONResponse({"broker": "up" if broker else "down", "started": services.started},
                            status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(v1)
    for routers in get_plugin_manager().hook.shipcast_routers():
        for router in routers:
            app.include_router(router)

    # The envelope is documented in OpenAPI from the same models ingest validates with.
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            event = Event.model_json_schema(ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(event.pop("$defs", {}))
            components["Event"] = event
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
