"""A small client for the RabbitMQ management HTTP API.

AMQP cannot list bindings or queue statistics; the management API can. Used
to remove stale bindings and for ``shipcast status``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from .exceptions import BrokerUnavailable
from .settings import Settings


class Management:
    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.management_url)
        auth = (parts.username or "guest", parts.password or "guest")
        netloc = parts.hostname or "localhost"
        if parts.port:
            netloc += f":{parts.port}"
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/api"
        self.vhost = quote(settings.vhost, safe="")
        self.client = httpx.AsyncClient(auth=auth, timeout=10)

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            response = await self.client.get(f"{self.base}{path}", params=params)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"RabbitMQ management API at {self.base} unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise BrokerUnavailable(f"RabbitMQ management API answered {response.status_code} for {path}")
        return response.json()

    async def queue_bindings(self, queue: str) -> set[str]:
        """Routing keys binding ``queue`` to the events exchange."""
        from .topology import EXCHANGE

        rows = await self._get(f"/queues/{self.vhost}/{quote(queue, safe='')}/bindings") or []
        return {row["routing_key"] for row in rows if row.get("source") == EXCHANGE}

    async def queues(self) -> list[dict[str, Any]]:
        return await self._get(f"/queues/{self.vhost}") or []

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Management:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
