"""The HTTP API: ingest, admin, the partner API, health, and plugin routes.

OpenAPI at ``/openapi.json``, docs at ``/docs``. Every ``/v1`` route requires
a bearer token: the operator's ``SHIPCAST_API_TOKEN`` for everything, or a
partner-scoped token (``scp_…``) for ``/v1/partners/{its id}/…`` only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipcast import __version__
from shipcast.app import portal
from shipcast.app.api import admin, document, ingest, partner
from shipcast.app.api.access import (
    JSONAnswer,
    Principal,
    broker_answer,
    errors,
    invalid_answer,
    partner_scope,
    require_token,
)
from shipcast.app.api.framework import fastapi_app
from shipcast.app.api.limits import BodyLimit
from shipcast.app.api.operations import add_operations_routes, operations_app
from shipcast.app.api.quotas import Quota
from shipcast.app.portal import SignInRequired
from shipcast.app.portal.signin import portal_error, sign_in_first
from shipcast.app.services import Services, services_of
from shipcast.app.tokens import PARTNER_TOKEN_PREFIX, token_hash
from shipcast.exceptions import BrokerError, ConfigError, InvalidEvent, StoreError
from shipcast.model.envelope import json_schema

log = logging.getLogger(__name__)

#: What FastAPI says of a body it could not parse for a route's model.
BODY_UNPARSED = "There was an error parsing the body"
#: What a caller is told when the store fails; the log has the rest.
STORE_UNAVAILABLE = "the store is unavailable right now: try again shortly"

__all__ = ["PARTNER_TOKEN_PREFIX", "Principal", "create_app", "errors", "operations_app", "partner_scope",
           "require_token", "services_of", "token_hash"]


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

    app = fastapi_app(title="shipcast", version=__version__, lifespan=lifespan,
                      description="Order events in; signed webhooks and no-code channels out.",
                      generate_unique_id_function=document.operation_id)
    app.state.services = services
    app.state.resend_quota = Quota(-(-services.settings.partner_resend_quota // services.process_share))

    # Before the BodyLimit below, so inside it: ingest's fast path reads a body the limit bounds.
    app.add_middleware(ingest.IngestRequests, services=services)

    @app.exception_handler(InvalidEvent)
    async def _invalid(request: Request, exc: InvalidEvent) -> JSONResponse:
        return invalid_answer(exc)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONAnswer({"detail": str(exc), "errors": exc.errors}, status_code=422)

    @app.exception_handler(BrokerError)
    async def _broker(request: Request, exc: BrokerError) -> JSONResponse:
        return broker_answer(exc)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        # The detail holds SQL, its parameters, the database's address: for the log, never the caller.
        log.warning("store error answering %s %s: %s", request.method, request.url.path, exc)
        return JSONAnswer({"detail": STORE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "1"})

    # FastAPI's own two, answering in JSON that can always be sent.
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304) or exc.status_code < 200:  # statuses that carry no body
            return Response(status_code=exc.status_code, headers=exc.headers)
        if request.url.path.startswith("/portal/"):
            return portal_error(request, exc.status_code, str(exc.detail))
        if exc.status_code == 400 and exc.__cause__ is not None and exc.detail == BODY_UNPARSED:
            # FastAPI's own parse of a body that is no JSON (not UTF-8, nested thousands
            # deep): bad input, answered like every other, naming what is wrong.
            cause = exc.__cause__
            why = "nested too deeply" if isinstance(cause, RecursionError) else \
                f"not JSON: {type(cause).__name__}: {cause}"[:300]
            return JSONAnswer({"detail": [{"loc": ["body"], "msg": why, "type": "json_invalid"}]}, status_code=422)
        return JSONAnswer({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/portal/"):
            wrong = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
            return portal_error(request, 422, f"Something in the address or form is not right: {wrong}"[:500])
        return JSONAnswer({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    app.add_exception_handler(SignInRequired, sign_in_first)  # type: ignore[arg-type]

    # Counters and the console are the operator's: on the public port, behind the token.
    add_operations_routes(app, services, guard=[Depends(require_token)])
    settings = services.settings

    def body_limit(scope: Any) -> int:
        if scope["path"] == "/v1/events":
            return settings.max_event_bytes * settings.max_batch
        return settings.max_body_bytes

    app.add_middleware(BodyLimit, limit_for=body_limit)

    app.include_router(ingest.router)
    app.include_router(admin.router)
    app.include_router(partner.router)
    for router in portal.routers():
        app.include_router(router)
    for routers in services.registry.hook.shipcast_routers():
        for router in routers:
            app.include_router(router)

    # The envelope is documented in OpenAPI from the same models ingest validates
    # with, and with the same rows: the registered event types and their groups;
    # bodies validated by marshmallow or by hand, from the rules that check them.
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            described = original()
            event = json_schema(services.registry.event_types, as_input=True, ref_template="#/components/schemas/{model}")
            components = described.setdefault("components", {}).setdefault("schemas", {})
            components.update(event.pop("$defs", {}))
            components["Event"] = event
            document.complete(described, services.registry.catalog)
            app.openapi_schema = described
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
