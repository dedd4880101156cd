"""The operator's API: partners and their tokens, the delivery log and its
replay, operator events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipcast.app.api.access import (
    actor_of,
    errors,
    require_token,
)
from shipcast.app.api.document import links, request_body
from shipcast.app.audit import Actor, record
from shipcast.app.people import invite
from shipcast.app.people import revoke_session as end_session_by_id
from shipcast.app.reconcile import apply_partners, reconcile_bindings
from shipcast.app.services import services_of
from shipcast.app.tokens import create_token, revoke_token
from shipcast.delivery.replay import replay_deliveries
from shipcast.exceptions import ConfigError
from shipcast.model.outcomes import DeliveryStatus
from shipcast.model.partners import Partner, document_schema, load_partners, read_yaml
from shipcast.plugin.public import public_partner


class ForgetCustomer(BaseModel):
    """Whom to forget: a phone number or an email address, of one partner's orders or every partner's."""

    model_config = ConfigDict(extra="forbid")

    phone: str | None = Field(None, min_length=6, max_length=32, pattern=r"^\+?[0-9 ()-]{6,32}$")
    email: str | None = Field(None, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    partner_id: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,64}$")

    @model_validator(mode="after")
    def _one(self) -> ForgetCustomer:
        if bool(self.phone) == bool(self.email):
            raise ValueError("give one of phone or email")
        return self


router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=errors(401, 403, 503))


@router.get("/partners")
async def list_partners(request: Request) -> list[dict[str, Any]]:
    """Applied partner configs as they are shown (each channel's fields, secrets redacted)."""
    services = services_of(request)
    return [public_partner(services.registry.channels, partner) for partner in await services.store.get_partners()]


@router.get("/partners/{partner_id}", responses=errors(404))
async def get_partner(partner_id: str, request: Request) -> dict[str, Any]:
    """A partner's applied config as it is shown, secrets redacted (the operator's view: a
    partner sees its endpoints at ``/v1/partners/{id}/endpoints``)."""
    return public_partner(services_of(request).registry.channels, await stored_partner(request, partner_id))


async def stored_partner(request: Request, partner_id: str) -> Partner:
    partner = await services_of(request).store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, f"no partner {partner_id!r}")
    return partner


@router.post("/partners/{partner_id}/tokens", status_code=201, responses=errors(404, 422))
async def create_partner_token(partner_id: str, request: Request,
                               name: str = Query("default", min_length=1, max_length=200),
                               actor: Actor = Depends(actor_of)) -> dict[str, str]:
    """A new token scoped to this partner: it sees and changes only this
    partner's data. Shown once; only its hash is stored, and the start of
    that hash is the token's id."""
    await stored_partner(request, partner_id)
    return await create_token(services_of(request), partner_id, name, actor)


@router.get("/partners/{partner_id}/tokens")
async def list_partner_tokens(partner_id: str, request: Request) -> list[dict[str, Any]]:
    """The partner's tokens: id, name and when each was made (never the token)."""
    return await services_of(request).store.list_partner_tokens(partner_id)


@router.delete("/partners/{partner_id}/tokens/{token_id}", responses=errors(404))
async def revoke_partner_token(partner_id: str, token_id: str, request: Request,
                               actor: Actor = Depends(actor_of)) -> dict[str, str]:
    """Revoke one token at once."""
    if not await revoke_token(services_of(request), partner_id, token_id, actor):
        raise HTTPException(404, f"partner {partner_id!r} has no token {token_id!r}")
    return {"revoked": token_id}


@router.delete("/partners/{partner_id}", responses=errors(404))
async def delete_partner(partner_id: str, request: Request, actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Remove a partner's config and the bindings it made; its channels stop
    receiving its events."""
    services = services_of(request)
    before = await services.store.get_partner(partner_id)
    if not await services.store.delete_partner(partner_id):
        raise HTTPException(404, f"no partner {partner_id!r}")
    await record(services, actor, "partner.delete", partner_id=partner_id, subject=partner_id,
                 before=public_partner(services.registry.channels, before) if before else None)
    await services.announce_change()
    changes = await reconcile_bindings(services)
    return {"deleted": partner_id,
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


#: A partners document with one partner and one webhook endpoint.
EXAMPLE_DOCUMENT = {"partners": [{
    "id": "acme", "name": "Acme Retail", "branding": {"primary_color": "#0a7cff"},
    "channels": {"webhook": {"endpoints": [{"id": "orders", "url": "https://hooks.acme.example.com/shipcast",
                                            "events": ["OFD", "DEL", "FAIL", "RET"]}]}}}]}
#: Where the partner routes take a partner id from: the first partner a document applied.
APPLIED = {"partner_id": "$response.body#/applied/0"}


@router.post("/partners", responses={**errors(422), 200: {"description": "Applied", **links(
    dict.fromkeys(("get_partner", "create_partner_token", "create_endpoint", "list_endpoints", "get_config",
                   "put_branding", "patch_branding", "list_messages"), APPLIED), "the partner applied first")}},
             openapi_extra=request_body(document_schema, also=("application/yaml",),
                                        examples={"one partner": EXAMPLE_DOCUMENT}, description=(
                 "A partners document, in JSON or YAML, validated as the partners file is: each field as "
                 "described, then each channel's own checks (every template compiles and renders, a webhook "
                 "endpoint's URL is one shipcast may send to, an SMS provider is installed); the answer names "
                 "each field refused.")))
async def post_partners(request: Request, actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Apply a partners document (the partners file, as JSON or YAML): upsert the
    partners in it and make the bindings match."""
    raw = await request.body()
    try:
        data = read_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"request body: not valid YAML or JSON: {exc}") from exc
    partners = load_partners(data, "request body", catalog=services_of(request).registry.catalog)
    changes = await apply_partners(services_of(request), partners, source="request body", actor=actor)
    return {"applied": [partner.id for partner in partners],
            "bindings_added": {q: sorted(k) for q, k in changes.added.items()},
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


@router.get("/deliveries")
async def list_deliveries(request: Request, event_id: str | None = None, partner_id: str | None = None,
                          channel: str | None = None, status: DeliveryStatus | None = None,
                          target: str | None = None, event_type: str | None = None, order_id: str | None = None,
                          since: datetime | None = None, until: datetime | None = None,
                          limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """The delivery log across partners, newest first, filtered by any of the parameters."""
    return await services_of(request).store.list_deliveries(
        event_id=event_id, partner_id=partner_id, channel=channel, status=status, target=target,
        event_type=event_type, order_id=order_id, since=since, until=until, limit=limit)


@router.post("/deliveries/replay")
async def replay(request: Request, event_id: str | None = None, partner_id: str | None = None,
                 channel: str | None = None, status: DeliveryStatus | None = DeliveryStatus.DEAD, target: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = Query(1000, ge=1, le=100000), actor: Actor = Depends(actor_of)) -> dict[str, int]:
    """Send logged deliveries again (by default every dead one), even if delivered before."""
    asked = {"event_id": event_id, "partner_id": partner_id, "channel": channel, "status": status,
             "target": target, "since": since, "until": until, "limit": limit}
    count = await replay_deliveries(services_of(request), **asked)
    await record(services_of(request), actor, "deliveries.replay", partner_id=partner_id, subject=event_id,
                 after={**{k: v for k, v in asked.items() if v is not None}, "replayed": count})
    return {"replayed": count}


@router.get("/operator/events")
async def operator_events(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Operator events (endpoint failing, recovered, disabled), newest first."""
    return await services_of(request).store.list_operator_events(limit=limit)


@router.post("/customers/forget", responses=errors(422))
async def forget_customer(request: Request, body: ForgetCustomer, actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Redact a customer's personal data (name, phone, email, address, what
    they wrote, OTPs) from every archived event that names them, the
    addresses of their deliveries and the responses logged for them, and say
    what changed. Their opt-outs stay, kept as keyed hashes."""
    forgotten = await services_of(request).store.forget_customer(phone=body.phone, email=body.email,
                                                                 partner_id=body.partner_id)
    # Whom is not recorded: the audit log must not become a list of forgotten customers.
    await record(services_of(request), actor, "customer.forget", partner_id=body.partner_id,
                 after={"by": "phone" if body.phone else "email"})
    return forgotten.to_dict()


class Invitation(BaseModel):
    """Whom to invite to the portal: a partner's person (``partner_id`` and
    ``role``), or an operator (``operator: true``)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254)
    partner_id: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,64}$")
    role: Literal["admin", "viewer"] = "viewer"
    operator: bool = False
    #: Seconds the link works (default ``SHIPCAST_PORTAL_INVITE_TTL``, 24 h); at most 30 days.
    ttl_seconds: float | None = Field(None, gt=0, le=30 * 86400)

    @model_validator(mode="after")
    def _whose(self) -> Invitation:
        if self.operator == bool(self.partner_id):
            raise ValueError("give partner_id, or operator: true (not both)")
        return self


@router.post("/portal/invitations", status_code=201, responses=errors(422))
async def invite_person(request: Request, body: Invitation, actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """A one-time sign-in link to the portal (emailed when SMTP is configured):
    it works once, until ``expires_at``."""
    return await invite(services_of(request), email=body.email, partner_id=body.partner_id,
                        role="operator" if body.operator else body.role, invited_by=actor, ttl=body.ttl_seconds)


@router.get("/portal/sessions")
async def list_sessions(request: Request, partner_id: str | None = None) -> list[dict[str, Any]]:
    """Portal sessions not revoked, newest first (whose, since when, last seen)."""
    return await services_of(request).store.list_sessions(partner_id)


@router.delete("/portal/sessions/{session_id}", responses=errors(404))
async def revoke_session(session_id: str, request: Request, actor: Actor = Depends(actor_of)) -> dict[str, str]:
    """End a portal session at once."""
    if not await end_session_by_id(services_of(request), session_id, actor):
        raise HTTPException(404, f"no live session {session_id!r}")
    return {"revoked": session_id}
