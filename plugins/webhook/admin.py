"""Operations on partners' endpoints, shared by the partner API and the
``shipcast endpoints`` commands: find, describe, save, rotate a secret, send
a test event. Each raises :class:`UnknownEndpoint` or a
:class:`~shipcast.exceptions.ConfigError` naming the field that is wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shipcast.amqp.headers import event_message, resend_headers
from shipcast.amqp.topology import QUEUE_PREFIX
from shipcast.app.reconcile import reconcile_bindings
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError, ShipcastError
from shipcast.model.envelope import Event
from shipcast.model.examples import example
from shipcast.model.partners import Partner
from shipcast.security.crypto import secret_box
from shipcast.security.signing import SECRET_PATTERN, generate_secret
from shipcast.store import attempt_stats

from .channel import WebhookChannel, strip_userinfo, valid_secrets, with_secret

CHANNEL = WebhookChannel.name
#: The longest overlap a rotation may ask for: 30 days.
MAX_OVERLAP = 30 * 86400.0


class UnknownEndpoint(ShipcastError):
    """No such partner, or no such endpoint for it."""


async def load(services: Services, partner_id: str) -> Partner:
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise UnknownEndpoint(f"no partner {partner_id!r}")
    return partner


def endpoints_of(partner: Partner) -> list[dict[str, Any]]:
    return [dict(e) for e in (partner.channels.get(CHANNEL) or {}).get("endpoints", [])]


def find(partner: Partner, endpoint_id: str) -> tuple[list[dict[str, Any]], int]:
    """The partner's endpoints, and where ``endpoint_id`` is among them."""
    found = endpoints_of(partner)
    for index, endpoint in enumerate(found):
        if endpoint["id"] == endpoint_id:
            return found, index
    raise UnknownEndpoint(f"partner {partner.id!r} has no endpoint {endpoint_id!r}")


def describe(services: Services, partner_id: str, endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """An endpoint as it is shown: its settings and health, never its secret."""
    key = (CHANNEL, partner_id, endpoint["id"])
    now = time.time()
    overlaps = [p["expires_at"] for p in endpoint.get("previous_secrets", ()) if p["expires_at"] > now]
    failing = services.partners.failing.get(key)
    return {
        "id": endpoint["id"], "url": str(strip_userinfo(endpoint["url"])), "events": endpoint.get("events", ["*"]),
        "url_credentials": bool(endpoint.get("userinfo_secret")),
        "description": endpoint.get("description"), "ordered": endpoint.get("ordered", False),
        "asymmetric": endpoint.get("asymmetric", False), "rate_limit": endpoint.get("rate_limit"),
        "max_concurrency": endpoint.get("max_concurrency"),
        "disabled": services.partners.is_disabled(*key),
        "failing_since": failing.isoformat() if failing else None,
        "previous_secret_valid_until": datetime.fromtimestamp(max(overlaps), UTC).isoformat() if overlaps else None,
    }


async def save(services: Services, partner: Partner, found: list[dict[str, Any]]) -> None:
    """Store the partner with these endpoints, then make the bindings match."""
    channels = {name: dict(config) for name, config in partner.channels.items()}
    if found:
        channels[CHANNEL] = {**channels.get(CHANNEL, {}), "endpoints": found}
    else:
        channels.pop(CHANNEL, None)
    await services.store.put_partners([Partner(partner.id, partner.name, partner.branding, channels)],
                                      reenable=False)
    await services.announce_change()
    services.partners.invalidate()
    await reconcile_bindings(services)


async def current_secret(services: Services, partner_id: str, endpoint_id: str) -> dict[str, Any]:
    found, index = find(await load(services, partner_id), endpoint_id)
    return {"secret": valid_secrets(secret_box(services.settings), found[index])[0],
            "previous_secret_valid_until": describe(services, partner_id, found[index])[
                "previous_secret_valid_until"]}


async def rotate_secret(services: Services, partner_id: str, endpoint_id: str, secret: Any = None,
                        overlap: Any = None) -> dict[str, Any]:
    """Replace an endpoint's secret with ``secret`` (or a new one); the old one
    keeps signing for ``overlap`` seconds (default ``SHIPCAST_WEBHOOK_SECRET_OVERLAP``)."""
    if secret is not None and (not isinstance(secret, str) or not SECRET_PATTERN.match(secret)):
        raise ConfigError("invalid rotation", {"secret": ["must look like whsec_<base64>"]})
    overlap = services.settings.webhook_secret_overlap if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not math.isfinite(overlap) \
            or not 0 <= overlap <= MAX_OVERLAP:
        raise ConfigError("invalid rotation", {"overlap_seconds": [f"must be seconds from 0 to {MAX_OVERLAP:.0f}"]})
    partner = await load(services, partner_id)
    found, index = find(partner, endpoint_id)
    box = secret_box(services.settings)
    if secret is not None and secret == box.decrypt(found[index]["secret"]):
        raise ConfigError("invalid rotation", {"secret": ["is the current secret already"]})
    found[index] = with_secret(box, found[index], found[index], secret or generate_secret(), float(overlap))
    await save(services, partner, found)
    return await current_secret(services, partner_id, endpoint_id)


async def send_test(services: Services, partner_id: str, endpoint_id: str, event_type: Any = "OFD") -> Event:
    """Send a realistic sample event of ``event_type`` to this endpoint only,
    whatever its event filter; it is archived, so its message can be followed."""
    known = services.registry.event_types
    if event_type not in known:
        raise ConfigError("invalid test", {"event_type": [f"unknown; known: {', '.join(known)}"]})
    find(await load(services, partner_id), endpoint_id)
    event = example(event_type, known, partner_id=partner_id, order_id=f"TEST-{int(time.time() * 1000) % 10**8}")
    await services.store.save_events([event])
    await services.broker.publish(
        event_message(event, headers=resend_headers(endpoint_id)),
        f"{QUEUE_PREFIX}{CHANNEL}", exchange="")
    return event


async def enable(services: Services, partner_id: str, endpoint_id: str) -> dict[str, Any]:
    """Re-enable an endpoint that was disabled (by 410 Gone or long failure)."""
    found, index = find(await load(services, partner_id), endpoint_id)
    await services.store.enable_target(CHANNEL, partner_id, endpoint_id)
    await services.announce_change()
    await services.partners.reload()
    return describe(services, partner_id, found[index])


async def stats(services: Services, partner_id: str, endpoint_id: str, since: datetime | None = None,
                limit: int = 10000) -> dict[str, Any]:
    """Success rate, latency percentiles and the last error over the
    endpoint's attempts since ``since`` (default: the last 24 hours)."""
    find(await load(services, partner_id), endpoint_id)
    since = since or datetime.now(UTC) - timedelta(days=1)
    rows = await services.store.list_attempts(partner_id=partner_id, channel=CHANNEL, target=endpoint_id,
                                              since=since, limit=limit)
    return {"endpoint_id": endpoint_id, "since": since.isoformat(), **attempt_stats(rows),
            "disabled": services.partners.is_disabled(CHANNEL, partner_id, endpoint_id)}
