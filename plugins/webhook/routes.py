"""The webhook part of the partner API: endpoints, secrets, test sends, stats,
and the JWKS document for ``v1a`` signatures.

Every ``/v1/partners/{partner_id}/endpoints…`` route takes the operator's
token or that partner's own; ``/.well-known/jwks.json`` is public.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from marshmallow import RAISE, ValidationError

from shipcast.app.api import errors, partner_scope, services_of
from shipcast.app.api.quotas import resend_quota
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError
from shipcast.model.catalog import validating
from shipcast.model.partners import _flatten, lone_surrogates
from shipcast.security.crypto import secret_box
from shipcast.security.signing import jwk

from . import admin
from .channel import EndpointSchema, WebhookChannel
from .keys import signing_keys

router = APIRouter()
endpoints = APIRouter(prefix="/v1/partners/{partner_id}/endpoints", dependencies=[Depends(partner_scope)],
                      tags=["partner"], responses=errors(401, 403, 404, 422, 503))


@contextmanager
def _answers() -> Iterator[None]:
    """An unknown partner or endpoint is a 404; a wrong field a 422 naming it."""
    try:
        yield
    except admin.UnknownEndpoint as exc:
        raise HTTPException(404, str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(422, {"errors": exc.errors or {"(request)": [str(exc)]}}) from exc


def _validate(services: Services, data: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise HTTPException(422, "the body must be a JSON object")
    halves = lone_surrogates(data)
    if halves:
        raise HTTPException(422, {"errors": {where: ["half a UTF-16 surrogate pair: not text"] for where in halves}})
    try:
        with validating(services.registry.catalog):
            loaded: dict[str, Any] = EndpointSchema(unknown=RAISE, partial=partial).load(data)
    except ValidationError as exc:
        raise HTTPException(422, {"errors": _flatten(exc.messages)}) from exc
    return loaded


async def _prepared(services: Services, partner_id: str, endpoint: dict[str, Any],
                    old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The endpoint as it is stored, through the channel's ``prepare``: its
    destination checked, its secret (kept, given or new) encrypted."""
    try:
        config = await WebhookChannel.prepare(services.registry, partner_id, {"endpoints": [endpoint]},
                                              {"endpoints": [old]} if old else None)
    except ConfigError as exc:
        raise HTTPException(422, {"errors": {loc.removeprefix("endpoints.0."): messages
                                             for loc, messages in exc.errors.items()}}) from exc
    prepared: dict[str, Any] = config["endpoints"][0]
    return prepared


@endpoints.get("")
async def list_endpoints(partner_id: str, request: Request) -> list[dict[str, Any]]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    with _answers():
        return [admin.describe(services, partner_id, e)
                for e in admin.endpoints_of(await admin.load(services, partner_id))]


@endpoints.post("", status_code=201, responses=errors(400, 409))
async def create_endpoint(partner_id: str, request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Register an endpoint. Without a ``secret`` one is generated; the answer
    carries it (fetch it again with ``GET …/secret``)."""
    services = services_of(request)
    with _answers():
        partner = await admin.load(services, partner_id)
    endpoint = _validate(services, body, partial=False)
    found = admin.endpoints_of(partner)
    if any(e["id"] == endpoint["id"] for e in found):
        raise HTTPException(409, f"partner {partner_id!r} already has an endpoint {endpoint['id']!r}")
    stored = await _prepared(services, partner_id, {**endpoint, "origin": "api"}, None)
    await services.store.enable_target(admin.CHANNEL, partner_id, endpoint["id"])  # an old one of that id
    await admin.save(services, partner, found + [stored])
    return {**admin.describe(services, partner_id, stored),
            "secret": secret_box(services.settings).decrypt(stored["secret"])}


@endpoints.get("/{endpoint_id}")
async def get_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    with _answers():
        found, index = admin.find(await admin.load(services, partner_id), endpoint_id)
    return admin.describe(services, partner_id, found[index])


@endpoints.patch("/{endpoint_id}", responses=errors(400))
async def update_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Change an endpoint's URL, events, description, ordering, signing or
    limits. It is re-enabled if it was disabled. ``id`` and ``secret`` are
    not changed here (rotate the secret with ``…/secret/rotate``)."""
    services = services_of(request)
    if "id" in body or "secret" in body:
        raise HTTPException(422, {"errors": {key: ["cannot be changed here"] for key in ("id", "secret")
                                             if key in body}})
    changes = _validate(services, body, partial=True)
    with _answers():
        partner = await admin.load(services, partner_id)
        found, index = admin.find(partner, endpoint_id)
    old = found[index]
    # partial loading still fills defaults for absent fields: keep only those given
    plain = {key: value for key, value in old.items() if key not in ("secret", "previous_secrets")}
    updated = await _prepared(services, partner_id,
                              {**plain, **{key: value for key, value in changes.items() if key in body}}, old)
    found[index] = updated
    await services.store.enable_target(admin.CHANNEL, partner_id, endpoint_id)
    await admin.save(services, partner, found)
    return admin.describe(services, partner_id, updated)


@endpoints.delete("/{endpoint_id}")
async def delete_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, str]:
    services = services_of(request)
    with _answers():
        partner = await admin.load(services, partner_id)
        found, index = admin.find(partner, endpoint_id)
    del found[index]
    await admin.save(services, partner, found)
    return {"deleted": endpoint_id}


@endpoints.get("/{endpoint_id}/secret")
async def get_secret(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    """The endpoint's current secret, and how long a rotated-out one stays valid."""
    with _answers():
        return await admin.current_secret(services_of(request), partner_id, endpoint_id)


@endpoints.post("/{endpoint_id}/secret/rotate", responses=errors(400))
async def rotate_secret(partner_id: str, endpoint_id: str, request: Request,
                        body: dict[str, Any] | None = Body(None)) -> dict[str, Any]:
    """Replace the secret (with ``secret``, or a new one). The old one keeps
    signing alongside it for ``overlap_seconds`` (default
    ``SHIPCAST_WEBHOOK_SECRET_OVERLAP``, 24 h), so both verify meanwhile."""
    body = body or {}
    unknown = set(body) - {"secret", "overlap_seconds"}
    if unknown:
        raise HTTPException(422, {"errors": {key: ["unknown field"] for key in sorted(unknown)}})
    with _answers():
        return await admin.rotate_secret(services_of(request), partner_id, endpoint_id, body.get("secret"),
                                         body.get("overlap_seconds"))


@endpoints.post("/{endpoint_id}/test", status_code=202, responses=errors(400))
async def send_test(partner_id: str, endpoint_id: str, request: Request,
                    body: dict[str, Any] | None = Body(None)) -> dict[str, Any]:
    """Send a realistic sample event of ``event_type`` (default ``OFD``) to this
    endpoint only, whatever its event filter. Follow it at ``…/messages/{event_id}``."""
    resend_quota(request).take(partner_id, 1)  # a test send fills the shared queue like any other
    with _answers():
        event = await admin.send_test(services_of(request), partner_id, endpoint_id,
                                      (body or {}).get("event_type", "OFD"))
    return {"event_id": event.event_id, "event_type": event.event_type,
            "message": f"/v1/partners/{partner_id}/messages/{event.event_id}"}


@endpoints.post("/{endpoint_id}/enable")
async def enable_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    """Re-enable an endpoint that was disabled (by 410 Gone or long failure)."""
    with _answers():
        return await admin.enable(services_of(request), partner_id, endpoint_id)


@endpoints.get("/{endpoint_id}/stats")
async def endpoint_stats(partner_id: str, endpoint_id: str, request: Request, since: datetime | None = None,
                         limit: int = Query(10000, ge=1, le=100000)) -> dict[str, Any]:
    """Success rate, latency percentiles and the last error over the
    endpoint's attempts since ``since`` (default: the last 24 hours)."""
    with _answers():
        return await admin.stats(services_of(request), partner_id, endpoint_id, since, limit)


@router.get("/.well-known/jwks.json", tags=["partner"], responses=errors(503))
async def jwks(request: Request) -> dict[str, Any]:
    """The Ed25519 public keys that ``v1a`` webhook signatures verify against."""
    return {"keys": [jwk(key) for key in await signing_keys(services_of(request))]}


router.include_router(endpoints)
