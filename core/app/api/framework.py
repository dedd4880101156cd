"""The FastAPI apps shipcast serves, with FastAPI's own OpenTelemetry off.

shipcast traces what it means to (``POST /v1/events``, see
:mod:`shipcast.tracing`). FastAPI's native telemetry would trace every route
of its own accord, the tracking page's secret links (``/t/{token}``) in their
paths among them, as soon as the environment asks it to
(``FASTAPI_OTEL_AUTO_CONFIGURE``) or a library sets a global tracer provider.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI

#: FastAPI's ``telemetry=`` settings, every part off (nothing exported, nothing configured).
TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                 "auto_configure": False}


def fastapi_app(**options: Any) -> FastAPI:
    """A FastAPI app with ``options``, and FastAPI's telemetry off where
    FastAPI has any (a version without the ``telemetry`` keyword has none)."""
    if "telemetry" in inspect.signature(FastAPI).parameters:
        options["telemetry"] = dict(TELEMETRY_OFF)
    return FastAPI(**options)
