"""Health, readiness and metrics: on the API, and on a worker's health port."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from shipcast import metrics
from shipcast.app.services import Services
from shipcast.exceptions import StoreError


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
