"""The webhook channel: signed Standard Webhooks to partners' endpoints.

Each endpoint is a target with its own event filter and secret. A 2xx within
the timeout is success; redirects are not followed and, like timeouts,
connection errors and other answers, are retried; 429 and 503 honour
``Retry-After``; 410 Gone disables the endpoint.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from functools import lru_cache

import aiohttp
import yarl
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast import hookimpl
from shipcast.channel import Channel, Delivered, EventList, Target, routing_keys
from shipcast.envelope import Event
from shipcast.exceptions import PermanentDelivery, RetryableDelivery
from shipcast.partners import Partner

from .guard import GuardedResolver, Network, find_refusal, literal_refusal
from .signing import SECRET_PATTERN, generate_secret, sign

#: How much of a response body is read at most; the rest is never downloaded.
RESPONSE_CAP = 64 * 1024
USER_AGENT = "shipcast-webhooks/1"


class EndpointSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9_-]{1,64}$",
                                                                  error="must match [a-z0-9_-]+"))
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                     validate=validate.Length(max=2000))
    events = EventList()
    secret = fields.String(validate=validate.Regexp(SECRET_PATTERN, error="must look like whsec_<base64>"))
    description = fields.String()


class WebhookConfig(Schema):
    class Meta:
        unknown = RAISE

    endpoints = fields.List(fields.Nested(EndpointSchema), required=True,
                            validate=validate.Length(min=1, error="list at least one endpoint"))

    @validates_schema
    def _unique_ids(self, data: dict[str, Any], **_: Any) -> None:
        ids = [endpoint["id"] for endpoint in data.get("endpoints", [])]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValidationError(f"duplicate endpoint ids {duplicates}", "endpoints")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookChannel(Channel):
    name = "webhook"
    description = "Signed Standard Webhooks to partners' HTTP endpoints"
    prefetch = 256
    deliver_timeout = None  # SHIPCAST_WEBHOOK_TIMEOUT bounds every exchange
    config_schema = WebhookConfig
    session: aiohttp.ClientSession | None = None

    @classmethod
    def prepare(cls, partner_id: str, config: dict[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
        previous = {e["id"]: e for e in (stored or {}).get("endpoints", [])}
        endpoints = []
        for endpoint in config["endpoints"]:
            if not endpoint.get("secret"):
                old = previous.get(endpoint["id"], {}).get("secret")
                endpoint = {**endpoint, "secret": old or generate_secret()}
            endpoints.append(endpoint)
        return {**config, "endpoints": endpoints}

    @classmethod
    def bindings(cls, partner_id: str, config: Mapping[str, Any]) -> set[str]:
        keys: set[str] = set()
        for endpoint in config.get("endpoints", []):
            keys |= routing_keys(partner_id, endpoint.get("events", ["*"]))
        return {f"{partner_id}.*"} if f"{partner_id}.*" in keys else keys

    async def start(self) -> None:
        self._allowed = self.settings.allowed_networks
        # aiohttp straight, not behind httpx: on two cores httpx's per-request
        # work cost a third of the worker's time (docs/benchmarks.md).
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allowed), limit=0,
                                         limit_per_host=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            # The deadline is ours (asyncio.timeout in deliver); aiohttp's own timers would be a second set.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None:
            return []
        config = partner.channels.get(self.name) or {}
        return [
            Target(endpoint["id"], endpoint["url"], {"secret": endpoint["secret"]})
            for endpoint in config.get("endpoints", [])
            if "*" in endpoint.get("events", ["*"]) or event.event_type in endpoint["events"]
        ]

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        assert self.session is not None, "start() first"
        url, refused = _parse(target.address, self._allowed)
        if refused:
            raise PermanentDelivery(f"destination refused: {refused}")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign([target.options["secret"]], event.event_id, timestamp, body),
        }
        try:
            # One deadline for the whole exchange: a server trickling bytes is cut off too.
            async with asyncio.timeout(self.settings.webhook_timeout):
                async with self.session.post(url, data=body, headers=headers,
                                             allow_redirects=False) as response:
                    excerpt = await _read_capped(response)
        except TimeoutError as exc:
            raise RetryableDelivery(f"timed out after {self.settings.webhook_timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            refusal = find_refusal(exc)
            if refusal is not None:
                raise PermanentDelivery(f"destination refused: {refusal}") from exc
            raise RetryableDelivery(f"connection failed: {type(exc).__name__}: {exc}") from exc

        status = response.status
        if 200 <= status < 300:
            return Delivered(status, excerpt)
        if 300 <= status < 400:
            raise RetryableDelivery(f"HTTP {status} redirect to {response.headers.get('location', '?')} "
                                    "(redirects are not followed)", status=status, response=excerpt)
        if status == 410:
            raise PermanentDelivery("HTTP 410 Gone: endpoint disabled", status=status, response=excerpt,
                                    disable_target=True)
        retry_after = _retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        raise RetryableDelivery(f"HTTP {status}", status=status, response=excerpt, retry_after=retry_after)


@lru_cache(maxsize=65536)
def _parse(address: str, allowed: tuple[Network, ...]) -> tuple[yarl.URL, str | None]:
    """An endpoint's URL, parsed once (not per delivery), and why it is refused
    when its host is an address webhooks may not reach."""
    url = yarl.URL(address)
    return url, literal_refusal(url.host or "", allowed)


async def _read_capped(response: aiohttp.ClientResponse) -> str:
    """Read at most :data:`RESPONSE_CAP` bytes of the body; keep the start."""
    received = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        received += chunk
        if len(received) >= RESPONSE_CAP:
            break
    return bytes(received[:1024]).decode("utf-8", "replace")


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [WebhookChannel]
