"""The webhook channel: signed Standard Webhooks to partners' endpoints.

Each endpoint is a target with its own event types, secret (stored
encrypted; a rotated-out one keeps signing through its overlap), limits and,
optionally, a payload filter (``shipcast.model.filters``: an event it keeps
out is not sent and costs no attempt), headers of its own and basic or
bearer authentication (``headers.py``: stored encrypted, shown masked),
per-order ordering and an Ed25519 ``v1a`` signature. A 2xx within
the timeout is success; redirects are not followed and, like timeouts,
connection errors and other answers, are retried; 429 and 503 honour
``Retry-After``; 410 Gone disables the endpoint.

Partners manage their endpoints through the partner API (``routes.py``) and
the portal's Endpoints pages (``portal.py``), both through ``admin.py``.
"""

from __future__ import annotations

from typing import Any

from shipcast import hookimpl
from shipcast.plugin.channel import Channel
from shipcast.plugin.portal import PortalSection

from .channel import EndpointSchema, WebhookChannel, WebhookConfig, valid_secrets, with_secret

__all__ = ["EndpointSchema", "WebhookChannel", "WebhookConfig", "valid_secrets", "with_secret"]


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [WebhookChannel]


@hookimpl
def shipcast_routers() -> list[Any]:
    from .portal import router as pages
    from .receiver import router as receiver
    from .routes import router

    return [router, pages, receiver]


@hookimpl
def shipcast_portal_sections() -> list[PortalSection]:
    return [PortalSection("Endpoints", "endpoints", 10)]


@hookimpl
def shipcast_commands(cli: Any) -> None:
    from .commands import endpoints

    cli.add_command(endpoints)
