"""The webhook part of the partner API: endpoints, secrets, test sends, stats,
and the JWKS document for ``v1a`` signatures.

Every ``/v1/partners/{partner_id}/endpoints…`` route takes the operator's
token or that partner's own; ``/.well-known/jwks.json`` is public.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request

from shipcast.app.api import errors, partner_scope, services_of
from shipcast.app.api.access import actor_of
from shipcast.app.api.document import answer, links, request_body
from shipcast.app.api.quotas import resend_quota
from shipcast.app.audit import Actor
from shipcast.exceptions import ConfigError
from shipcast.security.signing import jwk

from . import admin
from .keys import signing_keys

router = APIRouter()
endpoints = APIRouter(prefix="/v1/partners/{partner_id}/endpoints", dependencies=[Depends(partner_scope)],
                      tags=["partner"], responses=errors(401, 403, 404, 422, 503))


#: Where the routes of one endpoint take its ids from: the answer that created it.
CREATED = {"partner_id": "$request.path.partner_id", "endpoint_id": "$response.body#/id"}
#: A sample endpoint, as a partner registers it.
EXAMPLE = {"id": "orders", "url": "https://hooks.acme.example.com/shipcast", "events": ["OFD", "DEL", "FAIL", "RET"],
           "description": "Order status for our OMS"}


#: What a test send answers.
TEST_SENT = {"type": "object", "required": ["event_id", "event_type", "message"], "properties": {
    "event_id": {"type": "string"}, "event_type": {"type": "string"},
    "message": {"type": "string", "description": "Where to follow it: the path of its message"}}}


@contextmanager
def _answers() -> Iterator[None]:
    """An unknown partner or endpoint is a 404, an id taken a 409, a wrong
    field a 422 naming it."""
    try:
        yield
    except admin.UnknownEndpoint as exc:
        raise HTTPException(404, str(exc)) from exc
    except admin.EndpointExists as exc:
        raise HTTPException(409, str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(422, {"errors": exc.errors or {"(request)": [str(exc)]}}) from exc


@endpoints.get("", response_model=None, responses={200: answer("EndpointShown", admin.SHOWN, many=True)})
async def list_endpoints(partner_id: str, request: Request) -> list[dict[str, Any]]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    with _answers():
        return [admin.describe(services, partner_id, e)
                for e in admin.endpoints_of(await admin.load(services, partner_id))]


@endpoints.post("", status_code=201, response_model=None, responses={**errors(400, 409), 201: {
    **answer("EndpointRegistered", admin.REGISTERED, description="Registered"), **links(
    dict.fromkeys(("get_endpoint", "update_endpoint", "delete_endpoint", "get_secret", "rotate_secret", "send_test",
                   "enable_endpoint", "disable_endpoint", "endpoint_stats"), CREATED), "the endpoint registered")}},
                openapi_extra=request_body(admin.creation_schema, examples={"orders": EXAMPLE}, description=(
                    "The endpoint; its url must be one shipcast may send to (a name or address on the public "
                    "internet, unless the operator allows others), else the answer is a 422 naming url")))
async def create_endpoint(partner_id: str, request: Request, body: dict[str, Any] = Body(...),
                          actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Register an endpoint. Without a ``secret`` one is generated; the answer
    carries it (fetch it again with ``GET …/secret``). ``filter`` sends it
    only the events that match; ``headers`` and ``auth`` (basic or bearer)
    are sent with each delivery, stored encrypted and shown masked."""
    with _answers():
        shown, secret = await admin.create(services_of(request), partner_id, body, actor)
    return {**shown, "secret": secret}


@endpoints.get("/{endpoint_id}", response_model=None, responses={200: answer("EndpointShown", admin.SHOWN)})
async def get_endpoint(partner_id: str, endpoint_id: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    await services.partners.reload(if_older_than=1.0)
    with _answers():
        found, index = admin.find(await admin.load(services, partner_id), endpoint_id)
    return admin.describe(services, partner_id, found[index])


@endpoints.patch("/{endpoint_id}", response_model=None,
                 responses={**errors(400), 200: answer("EndpointShown", admin.SHOWN)}, openapi_extra=request_body(
    admin.update_schema, examples={"events": {"events": ["DEL"]}, "default rate": {"rate_limit": None}}))
async def update_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          body: dict[str, Any] = Body(...), actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Change an endpoint's URL, events, description, ordering, signing,
    limits, ``filter``, ``headers`` or ``auth`` (``null`` for
    ``description``, ``rate_limit``, ``max_concurrency``, ``filter``,
    ``headers`` or ``auth`` goes back to the default). It is re-enabled if it
    was disabled. ``id`` and ``secret`` are not changed here (rotate the
    secret with ``…/secret/rotate``). A header value, password or token given
    as ``••••`` (as they are shown), or a password or token left out of
    ``auth``, keeps the one stored, unless ``url`` moves to another scheme,
    host or port: the stored ones do not follow it (give them again)."""
    with _answers():
        return await admin.update(services_of(request), partner_id, endpoint_id, body, actor)


@endpoints.delete("/{endpoint_id}")
async def delete_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          actor: Actor = Depends(actor_of)) -> dict[str, str]:
    with _answers():
        await admin.delete(services_of(request), partner_id, endpoint_id, actor)
    return {"deleted": endpoint_id}


@endpoints.get("/{endpoint_id}/secret", response_model=None, responses={200: answer("EndpointSecret", admin.SECRET)})
async def get_secret(partner_id: str, endpoint_id: str, request: Request,
                     actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """The endpoint's current secret, and how long a rotated-out one stays
    valid. The audit log records who fetched it."""
    with _answers():
        return await admin.reveal_secret(services_of(request), partner_id, endpoint_id, actor)


@endpoints.post("/{endpoint_id}/secret/rotate", response_model=None,
                responses={**errors(400), 200: answer("EndpointSecret", admin.SECRET)}, openapi_extra=request_body(
    admin.rotation_schema, required=False, examples={"generated": {}, "an hour's overlap": {"overlap_seconds": 3600}}))
async def rotate_secret(partner_id: str, endpoint_id: str, request: Request,
                        body: dict[str, Any] | None = Body(None), actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Replace the secret (with ``secret``, or a new one). The old one keeps
    signing alongside it for ``overlap_seconds`` (default
    ``SHIPCAST_WEBHOOK_SECRET_OVERLAP``, 24 h), so both verify meanwhile."""
    given = _only(body, admin.ROTATION_FIELDS)
    with _answers():
        return await admin.rotate_secret(services_of(request), partner_id, endpoint_id, given.get("secret"),
                                         given.get("overlap_seconds"), actor=actor)


@endpoints.post("/{endpoint_id}/test", status_code=202, response_model=None, responses={**errors(400), 202: {
    **answer("TestSent", TEST_SENT, description="Sent"), **links(
    dict.fromkeys(("get_message", "resend"), {"partner_id": "$request.path.partner_id",
                                              "event_id": "$response.body#/event_id"}), "the sample event sent")}},
                openapi_extra=request_body(admin.test_send_schema, required=False,
                                           examples={"a delivery": {"event_type": "DEL"}}))
async def send_test(partner_id: str, endpoint_id: str, request: Request,
                    body: dict[str, Any] | None = Body(None), actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Send a realistic sample event of ``event_type`` (default ``OFD``) to this
    endpoint only, whatever its event filter. Follow it at ``…/messages/{event_id}``."""
    given = _only(body, admin.TEST_FIELDS)
    quota = resend_quota(request)
    quota.take(partner_id, 1)  # a test send fills the shared queue like any other
    try:
        with _answers():
            event = await admin.send_test(services_of(request), partner_id, endpoint_id,
                                          given.get("event_type", "OFD"), actor=actor)
    except Exception:
        quota.give_back(partner_id, 1)  # nothing was sent: a wrong type or endpoint costs nothing
        raise
    return {"event_id": event.event_id, "event_type": event.event_type,
            "message": f"/v1/partners/{partner_id}/messages/{event.event_id}"}


def _only(given: dict[str, Any] | None, known: tuple[str, ...]) -> dict[str, Any]:
    """A body that may be absent, holding no field but ``known``."""
    unknown = set(given or {}) - set(known)
    if unknown:
        raise HTTPException(422, {"errors": {key: ["unknown field"] for key in sorted(unknown)}})
    return given or {}


@endpoints.post("/{endpoint_id}/enable", response_model=None, responses={200: answer("EndpointShown", admin.SHOWN)})
async def enable_endpoint(partner_id: str, endpoint_id: str, request: Request,
                          actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Re-enable an endpoint that was disabled (by 410 Gone, long failure, or ``…/disable``)."""
    with _answers():
        return await admin.enable(services_of(request), partner_id, endpoint_id, actor)


@endpoints.post("/{endpoint_id}/disable", response_model=None,
                responses={200: answer("EndpointShown", admin.SHOWN)})
async def disable_endpoint(partner_id: str, endpoint_id: str, request: Request,
                           actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Stop sending to this endpoint until it is enabled again (``…/enable``),
    or changed. Events meanwhile are not sent to it; recover them later
    with ``/v1/partners/{partner_id}/recover``."""
    with _answers():
        return await admin.disable(services_of(request), partner_id, endpoint_id, actor)


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
