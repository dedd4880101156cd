"""Health, readiness, metrics and the console: on the operations port
(``SHIPCAST_HEALTH_PORT``) for anyone who reaches it, and on the API's public
port, where the metrics and the console need the operator's token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from shipcast import __version__, metrics
from shipcast.app.api.framework import fastapi_app
from shipcast.app.services import Services
from shipcast.exceptions import StoreError


def _public_url(url: str) -> str:
    """A URL without its credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


#: More that ``/readyz`` requires, by name: each says whether its part is up
#: (the relay's source database, say).
Checks = Mapping[str, Callable[[], bool]]


def add_operations_routes(app: FastAPI, services: Services, guard: Sequence[Any] = (),
                          checks: Checks | None = None) -> None:
    """``/healthz`` and ``/readyz`` for anyone; ``/metrics`` and the console
    (``/``) behind ``guard`` (the operator's token, on the public port).
    ``/readyz`` also requires every one of ``checks``."""
    checks = dict(checks or {})

    @app.get("/", include_in_schema=False, dependencies=list(guard))
    async def console() -> HTMLResponse:
        from shipcast.templating import environment

        page = environment().get_template("console/index.html").render(
            version=__version__, broker_up=services.broker.connected,
            channels={name: cls.description for name, cls in sorted(services.registry.channels.items())},
            management_url=_public_url(services.settings.management_url))
        return HTMLResponse(page)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Ready: the broker connected, not blocking publishers (no memory or
        disk alarm) and a publishing channel open, the store answering within
        2 s, and start-up done (the partners file applied, consumers attached)."""
        # Ready means a publish can be confirmed: its channel open, reopened if it was lost.
        broker = await services.broker.ready_to_publish()
        try:
            async with asyncio.timeout(2):
                await services.store.ping()
            store = True
        except (StoreError, TimeoutError):
            store = False
        extra = {name: check() for name, check in checks.items()}
        ready = broker and store and services.started and all(extra.values())
        broker_state = "up" if broker else "blocked" if services.broker.blocked else "down"
        return JSONResponse({"broker": broker_state, "store": "up" if store else "down",
                             **{name: "up" if up else "down" for name, up in extra.items()},
                             "started": services.started}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False, dependencies=list(guard))
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")


def operations_app(services: Services, checks: Checks | None = None) -> FastAPI:
    """The operations port: health, metrics and the console, unguarded (keep
    it on an internal network)."""
    app = fastapi_app(title="shipcast operations", docs_url=None, redoc_url=None, openapi_url=None)
    add_operations_routes(app, services, checks=checks)
    return app
