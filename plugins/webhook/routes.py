"""The webhook part of the partner API: endpoints, secrets, test sends, stats,
and the JWKS document for ``v1a`` signatures.

Every ``/v1/partners/{partner_id}/endpoints…`` route takes the operator's
token or that partner's own; ``/.well-known/jwks.json`` is public.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from marshmallow import RAISE, ValidationError

from shipcast.api import partner_scope, services_of, stored_partner
from shipcast.broker import TARGET_HEADER, event_message
from shipcast.crypto import secret_box
from shipcast.examples import example
from shipcast.exceptions import ConfigError
from shipcast.partners import Partner, _flatten
from shipcast.plugin_manager import event_types
from shipcast.reconcile import reconcile_bindings
from shipcast.services import Services
from shipcast.store import attempt_stats
from shipcast.signing import SECRET_PATTERN, generate_secret, jwk
from shipcast.topology import QUEUE_PREFIX
from shipcast.worker import FORCE_HEADER, TEST_HEADER

from . import EndpointSchema, WebhookChannel, valid_secrets, with_secret
from .keys import signing_keys

CHANNEL = WebhookChannel.name
router = APIRouter()
endpoints = APIRouter(prefix="/v1/partners/{partner_id}/endpoints", dependencies=[Depends(partner_scope)],
                      tags=["partner"])


def _view(services: Services, partner_id: str, endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    key = (CHANNEL, partner_id, endpoint["id"])
    now = time.time()
    overlaps = [p["expires_at"] for p in endpoint.get("previous_secrets", ()) if p["expires_at"] > now]
    failing = services.partners.failing.get(key)
    return {
        "id": endpoint["id"], "url": endpoint["url"], "events": endpoint.get("events", ["*"]),
        "description": endpoint.get("description"), "ordered": endpoint.get("ordered", False),
        "asymmetric": endpoint.get("asymmetric", False), "rate_limit": endpoint.get("rate_limit"),
        "max_concurrency": endpoint.get("max_concurrency"),
        "disabled": services.partners.is_disabled(*key),
        "failing_since": failing.isoformat() if failing else None,
        "previous_secret_valid_until": datetime.fromtimestamp(max(overlaps), UTC).isoformat() if overlaps else None,
    }


def _endpoints(partner: Partner) -> list[dict[str, Any]]:
    return [dict(e) for e in (partner.channels.get(CHANNEL) or {}).get("endpoints", [])]


def _find(partner: Partner, endpoint_id: str) -> tuple[list[dict[str, Any]], int]:
    found = _endpoints(partner)
    for index, endpoint in enumerate(found):
        if endpoint["id"] == endpoint_id:
            return found, index
    raise HTTPException(404, f"partner {partner.id!r} has no endpoint {endpoint_id!r}")


def _validate(data: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise HTTPException(422, "the body must be a JSON object")
    try:
        loaded: dict[str, Any] = EndpointSchema(unknown=RAISE, partial=partial).load(data)
    except ValidationError as exc:
        raise HTTPException(422, {"errors": _flatten(exc.messages)}) from exc
    return loaded


async def _prepared(services: Services, partner_id: str, endpoint: dict[str, Any],
                    old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The endpoint as it is stored, through the channel's ``prepare``: its
    destination checked, its secret (kept, given or new) encrypted."""
    try:
        config = await WebhookChannel.prepare(services.settings, partner_id, {"endpoints": [endpoint]},
                                              {"endpoints": [old]} if old else None)
    except ConfigError as exc:
        raise HTTPException(422, {"errors": {loc.removeprefix("endpoints.0."): messages
                                             for loc, messages in exc.errors.items()}}) from exc
    prepared: dict[str, Any] = config["endpoints"][0]
    return prepared


async def _save(services: Services, partner: Partner, found: list[dict[str, Any]]) -> None:
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


@endpoints.get("")
async def list_endpoints(partner_id: str, request: Request) -> list[dict[str, Any]]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    return [_view(services, partner_id, e) for e in _endpoints(await stored_partner(request, partner_id))]


@endpoints.post("", status_code=201)
async def create_endpoint(partner_id: str, request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Register an endpoint. Without a ``secret`` one is generated; the answer
    carries it (fetch it again with ``GET …/secret``)."""
    services = services_of(request)
    partner = await stored_partner(request, partner_id)
    endpoint = _validate(body, partial=False)
    found = _endpoints(partner)
    if any(e["id"] == endpoint["id"] for e in found):
        raise HTTPException(409, f"partner {partner_id!r} already has an endpoint {endpoint['id']!r}")
    stored = await _prepared(services, partner_id, {**endpoint, "origin": "api"}, None)
    await services.store.enable_target(CHANNEL, partner_id, endpoint["id"])  # an old one of that id may be disabled
    await _save(services, partner, found + [stored])
    return {**_view(services, partner_id, stored), "secret": secret_box(services.settings).decrypt(stored["secret"])}


@endpoints.get("/{endpoint_id}")
async def get_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    found, index = _find(await stored_partner(request, partner_id), endpoint_id)
    return _view(services, partner_id, found[index])


@endpoints.patch("/{endpoint_id}")
async def update_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Change an endpoint's URL, events, description, ordering, signing or
    limits. It is re-enabled if it was disabled. ``id`` and ``secret`` are
    not changed here (rotate the secret with ``…/secret/rotate``)."""
    services = services_of(request)
    partner = await stored_partner(request, partner_id)
    if "id" in body or "secret" in body:
        raise HTTPException(422, {"errors": {key: ["cannot be changed here"] for key in ("id", "secret")
                                             if key in body}})
    changes = _validate(body, partial=True)
    found, index = _find(partner, endpoint_id)
    old = found[index]
    # partial loading still fills defaults for absent fields: keep only those given
    plain = {key: value for key, value in old.items() if key not in ("secret", "previous_secrets")}
    updated = await _prepared(services, partner_id,
                              {**plain, **{key: value for key, value in changes.items() if key in body}}, old)
    found[index] = updated
    await services.store.enable_target(CHANNEL, partner_id, endpoint_id)
    await _save(services, partner, found)
    return _view(services, partner_id, updated)


@endpoints.delete("/{endpoint_id}")
async def delete_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, str]:
    services = services_of(request)
    partner = await stored_partner(request, partner_id)
    found, index = _find(partner, endpoint_id)
    del found[index]
    await _save(services, partner, found)
    return {"deleted": endpoint_id}


@endpoints.get("/{endpoint_id}/secret")
async def get_secret(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    """The endpoint's current secret, and how long a rotated-out one stays valid."""
    services = services_of(request)
    found, index = _find(await stored_partner(request, partner_id), endpoint_id)
    view = _view(services, partner_id, found[index])
    return {"secret": valid_secrets(secret_box(services.settings), found[index])[0],
            "previous_secret_valid_until": view["previous_secret_valid_until"]}


@endpoints.post("/{endpoint_id}/secret/rotate")
async def rotate_secret(partner_id: str, endpoint_id: str, request: Request,
                        body: dict[str, Any] | None = Body(None)) -> dict[str, Any]:
    """Replace the secret (with ``secret``, or a new one). The old one keeps
    signing alongside it for ``overlap_seconds`` (default
    ``SHIPCAST_WEBHOOK_SECRET_OVERLAP``, 24 h), so both verify meanwhile."""
    services = services_of(request)
    body = body or {}
    unknown = set(body) - {"secret", "overlap_seconds"}
    if unknown:
        raise HTTPException(422, {"errors": {key: ["unknown field"] for key in sorted(unknown)}})
    secret = body.get("secret")
    if secret is not None and (not isinstance(secret, str) or not SECRET_PATTERN.match(secret)):
        raise HTTPException(422, {"errors": {"secret": ["must look like whsec_<base64>"]}})
    overlap = body.get("overlap_seconds", services.settings.webhook_secret_overlap)
    if not isinstance(overlap, int | float) or not 0 <= overlap <= 30 * 86400 or not math.isfinite(overlap):
        raise HTTPException(422, {"errors": {"overlap_seconds": ["must be seconds between 0 and 2592000"]}})
    partner = await stored_partner(request, partner_id)
    found, index = _find(partner, endpoint_id)
    box = secret_box(services.settings)
    current = box.decrypt(found[index]["secret"])
    fresh = secret or None
    if fresh == current:
        raise HTTPException(422, {"errors": {"secret": ["is the current secret already"]}})
    found[index] = with_secret(box, found[index], found[index], fresh or generate_secret(), float(overlap))
    await _save(services, partner, found)
    view = _view(services, partner_id, found[index])
    return {"secret": box.decrypt(found[index]["secret"]),
            "previous_secret_valid_until": view["previous_secret_valid_until"]}


@endpoints.post("/{endpoint_id}/test", status_code=202)
async def send_test(partner_id: str, endpoint_id: str, request: Request,
                    body: dict[str, Any] | None = Body(None)) -> dict[str, Any]:
    """Send a realistic sample event of ``event_type`` (default ``OFD``) to this
    endpoint only, whatever its event filter. Follow it at ``…/messages/{event_id}``."""
    services = services_of(request)
    event_type = (body or {}).get("event_type", "OFD")
    known = event_types()
    if event_type not in known:
        raise HTTPException(422, {"errors": {"event_type": [f"unknown; known: {', '.join(known)}"]}})
    partner = await stored_partner(request, partner_id)
    _find(partner, endpoint_id)
    event = example(event_type, partner_id=partner_id, order_id=f"TEST-{int(time.time() * 1000) % 10**8}")
    await services.store.save_events([event])
    await services.broker.publish(
        event_message(event, headers={TARGET_HEADER: endpoint_id, TEST_HEADER: True, FORCE_HEADER: True}),
        f"{QUEUE_PREFIX}{CHANNEL}", exchange="")
    return {"event_id": event.event_id, "event_type": event_type,
            "message": f"/v1/partners/{partner_id}/messages/{event.event_id}"}


@endpoints.post("/{endpoint_id}/enable")
async def enable_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    """Re-enable an endpoint that was disabled (by 410 Gone or long failure)."""
    services = services_of(request)
    found, index = _find(await stored_partner(request, partner_id), endpoint_id)
    await services.store.enable_target(CHANNEL, partner_id, endpoint_id)
    await services.announce_change()
    await services.partners.reload()
    return _view(services, partner_id, found[index])


@endpoints.get("/{endpoint_id}/stats")
async def endpoint_stats(partner_id: str, endpoint_id: str, request: Request,
                         since: datetime | None = None,
                         limit: int = Query(10000, ge=1, le=100000)) -> dict[str, Any]:
    """Success rate, latency percentiles and the last error over the
    endpoint's attempts since ``since`` (default: the last 24 hours)."""
    services = services_of(request)
    found, index = _find(await stored_partner(request, partner_id), endpoint_id)
    since = since or datetime.now(UTC) - timedelta(days=1)
    rows = await services.store.list_attempts(partner_id=partner_id, channel=CHANNEL, target=endpoint_id,
                                              since=since, limit=limit)
    return {"endpoint_id": endpoint_id, "since": since.isoformat(), **attempt_stats(rows),
            "disabled": services.partners.is_disabled(CHANNEL, partner_id, endpoint_id)}


@router.get("/.well-known/jwks.json", tags=["partner"])
async def jwks(request: Request) -> dict[str, Any]:
    """The Ed25519 public keys that ``v1a`` webhook signatures verify against."""
    return {"keys": [jwk(key) for key in await signing_keys(services_of(request))]}


router.include_router(endpoints)
