"""Endpoint health: failing, recovered, disabled; and operator events about it.

A target that fails is noted as failing (once, with the time it began); a
success clears it. One that has failed without a success for
``SHIPCAST_ENDPOINT_DISABLE_AFTER`` seconds is disabled. Each change is an
operator event: stored (an outbox), then posted as a signed webhook to
``SHIPCAST_OPERATOR_WEBHOOK_URL`` until that endpoint accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from shipcast.batching import cancel
from shipcast.security.signing import sign

if TYPE_CHECKING:
    from shipcast.settings import Settings
    from shipcast.store import PartnerCache, Store

log = logging.getLogger(__name__)

FAILING = "endpoint.failing"
RECOVERED = "endpoint.recovered"
DISABLED = "endpoint.disabled"


class EndpointHealth:
    """Turns delivery results into failing / recovered / disabled changes.

    The common case, a success for a healthy target, costs one dict lookup.
    """

    def __init__(self, settings: Settings, store: Store, partners: PartnerCache) -> None:
        self.settings = settings
        self.store = store
        self.partners = partners
        self.wake = asyncio.Event()
        # One change at a time in this process: concurrent failures of one target note it once.
        self._lock = asyncio.Lock()

    async def observe(self, channel: str, partner_id: str, target: str, address: str,
                      ok: bool, error: str | None) -> None:
        async with self._lock:
            await self._observe(channel, partner_id, target, address, ok, error)

    async def _observe(self, channel: str, partner_id: str, target: str, address: str,
                       ok: bool, error: str | None) -> None:
        cache = self.partners
        key = (channel, partner_id, target)
        store = self.store
        if ok:
            if key not in cache.failing:
                return
            since = await store.clear_failing(*key)
            cache.failing.pop(key, None)
            if since is not None:
                await self.emit(RECOVERED, channel, partner_id, target, address, failing_since=since)
            return
        since = cache.failing.get(key)
        now = datetime.now(UTC)
        if since is None:
            previous = await store.mark_failing(*key, now, error or "")
            since = cache.failing[key] = previous or now
            if previous is None:  # not noted before, by this process or another
                await self.emit(FAILING, channel, partner_id, target, address, failing_since=since, error=error)
        if (now - since).total_seconds() >= self.settings.endpoint_disable_after \
                and not cache.is_disabled(*key):
            await self.disable(channel, partner_id, target, address,
                               f"failing without a success since {since.isoformat()}: {error}")

    async def disable(self, channel: str, partner_id: str, target: str, address: str, reason: str) -> None:
        """Stop sending to a target until its partner is applied again or it is re-enabled."""
        await self.store.disable_target(channel, partner_id, target, reason)
        self.partners.mark_disabled(channel, partner_id, target)
        await self.emit(DISABLED, channel, partner_id, target, address, reason=reason)

    async def emit(self, type_: str, channel: str, partner_id: str, target: str, address: str,
                   **detail: Any) -> None:
        event_id = f"op_{uuid.uuid4().hex}"
        body = {"type": type_, "timestamp": datetime.now(UTC).isoformat(),
                "data": {"channel": channel, "partner_id": partner_id, "endpoint_id": target,
                         "address": address, **detail}}
        await self.store.add_operator_event(event_id, type_, orjson.loads(orjson.dumps(body)))
        log.warning("%s: %s/%s %s", type_, partner_id, target, detail.get("reason") or detail.get("error") or "")
        self.wake.set()


class OperatorNotifier:
    """Posts stored operator events to the operator endpoint, oldest first,
    each until it is accepted (at least once: dedupe on ``webhook-id``)."""

    def __init__(self, store: Store, health: EndpointHealth, url: str, secret: str | None) -> None:
        self.store = store
        self.health = health
        self.url = url
        self.secret = secret
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="operator-notifier")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        wake = self.health.wake
        backoff = 1.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                wake.clear()
                try:
                    for event in await self.store.list_operator_events(unsent=True):
                        await self._post(session, event["id"], event["body"])
                        await self.store.mark_operator_event_sent(event["id"])
                    backoff = 1.0
                except Exception as exc:  # the operator endpoint or the store is down: try again later
                    log.warning("operator events not sent (%s); retrying in %.0fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 5.0)

    async def _post(self, session: aiohttp.ClientSession, event_id: str, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": event_id,
                   "webhook-timestamp": str(timestamp)}
        if self.secret:
            headers["webhook-signature"] = sign([self.secret], event_id, timestamp, data)
        async with session.post(self.url, data=data, headers=headers, allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"operator endpoint answered HTTP {response.status}")
