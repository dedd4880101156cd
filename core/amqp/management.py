"""A small client for the RabbitMQ management HTTP API.

AMQP cannot list bindings or queue statistics; the management API can. Used
to remove stale bindings and for ``shipcast status``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from shipcast.exceptions import BrokerUnavailable, ManagementRefused
from shipcast.settings import Settings


class Management:
    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.management_url)
        auth = (parts.username or "guest", parts.password or "guest")
        netloc = parts.hostname or "localhost"
        if parts.port:
            netloc += f":{parts.port}"
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/api"
        self.vhost = quote(settings.vhost, safe="")
        self.user = auth[0]
        self.client = httpx.AsyncClient(auth=auth, timeout=10)

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._send("GET", path, params=params)
        return None if response.status_code == 404 else response.json()

    async def _send(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, f"{self.base}{path}", json=body, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"RabbitMQ management API at {self.base} unreachable: {exc}") from exc
        if response.status_code in (401, 403):
            raise ManagementRefused(f"RabbitMQ management API refused {method} {path} to user "
                                    f"{self.user!r} ({response.status_code})")
        if response.status_code >= 400 and response.status_code != 404:
            raise BrokerUnavailable(f"RabbitMQ management API answered {response.status_code} for {path}")
        return response

    async def queue_bindings(self, queue: str) -> set[str]:
        """Routing keys binding ``queue`` to the events exchange."""
        from shipcast.amqp.topology import EXCHANGE

        rows = await self._get(f"/queues/{self.vhost}/{quote(queue, safe='')}/bindings") or []
        return {row["routing_key"] for row in rows if row.get("source") == EXCHANGE}

    async def queues(self) -> list[dict[str, Any]]:
        return await self._get(f"/queues/{self.vhost}") or []

    async def ensure_policies(self) -> list[str]:
        """Create those of shipcast's policies the virtual host lacks, and add
        to the others any setting they lack (a policy from an earlier
        shipcast); never change a value an operator set. Returns the names
        created or completed.

        :raises ManagementRefused: the user may not manage policies (RabbitMQ's
            ``policymaker`` tag); the definitions file carries them instead.
        """
        from shipcast.amqp.topology import POLICIES, policy_body

        changed = []
        for name, _, _ in POLICIES:
            wanted = policy_body(name)
            existing = await self._get(self._policy(name))
            if existing is not None:
                definition = {**wanted["definition"], **existing["definition"]}
                if definition == existing["definition"]:
                    continue
                wanted = {**wanted, "pattern": existing["pattern"], "priority": existing["priority"],
                          "apply-to": existing["apply-to"], "definition": definition}
            await self.put_policy(name, wanted)
            changed.append(name)
        return changed

    async def put_policy(self, name: str, body: dict[str, Any]) -> None:
        await self._send("PUT", self._policy(name), body)

    async def delete_policy(self, name: str) -> None:
        await self._send("DELETE", self._policy(name))

    def _policy(self, name: str) -> str:
        return f"/policies/{self.vhost}/{quote(name, safe='')}"

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Management:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
