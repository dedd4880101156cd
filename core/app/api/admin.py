"""The operator's API: partners and their tokens, the delivery log and its
replay, operator events."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipcast.app.api.access import (
    PARTNER_TOKEN_PREFIX,
    errors,
    require_token,
    services_of,
    token_hash,
)
from shipcast.app.reconcile import apply_partners, reconcile_bindings
from shipcast.delivery.replay import replay_deliveries
from shipcast.exceptions import ConfigError
from shipcast.model.outcomes import DeliveryStatus
from shipcast.model.partners import Partner, load_partners, read_yaml
from shipcast.security.redact import redact


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
    """Applied partner configs, secrets redacted."""
    return [redact(partner.to_dict()) for partner in await services_of(request).store.get_partners()]


@router.get("/partners/{partner_id}", responses=errors(404))
async def get_partner(partner_id: str, request: Request) -> dict[str, Any]:
    """A partner's applied config, secrets redacted (the operator's view: a
    partner sees its endpoints at ``/v1/partners/{id}/endpoints``)."""
    redacted: dict[str, Any] = redact((await stored_partner(request, partner_id)).to_dict())
    return redacted


async def stored_partner(request: Request, partner_id: str) -> Partner:
    partner = await services_of(request).store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, f"no partner {partner_id!r}")
    return partner


@router.post("/partners/{partner_id}/tokens", status_code=201, responses=errors(404))
async def create_partner_token(partner_id: str, request: Request,
                               name: str = Query("default", min_length=1, max_length=200)) -> dict[str, str]:
    """A new token scoped to this partner: it sees and changes only this
    partner's data. Shown once; only its hash is stored, and the start of
    that hash is the token's id."""
    await stored_partner(request, partner_id)
    token = PARTNER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    await services_of(request).store.add_partner_token(digest, partner_id, name)
    return {"partner_id": partner_id, "id": digest[:16], "name": name, "token": token}


@router.get("/partners/{partner_id}/tokens")
async def list_partner_tokens(partner_id: str, request: Request) -> list[dict[str, Any]]:
    """The partner's tokens: id, name and when each was made (never the token)."""
    return await services_of(request).store.list_partner_tokens(partner_id)


@router.delete("/partners/{partner_id}/tokens/{token_id}", responses=errors(404))
async def revoke_partner_token(partner_id: str, token_id: str, request: Request) -> dict[str, str]:
    """Revoke one token at once."""
    if not await services_of(request).store.delete_partner_token(partner_id, token_id):
        raise HTTPException(404, f"partner {partner_id!r} has no token {token_id!r}")
    return {"revoked": token_id}


@router.delete("/partners/{partner_id}", responses=errors(404))
async def delete_partner(partner_id: str, request: Request) -> dict[str, Any]:
    """Remove a partner's config and the bindings it made; its channels stop
    receiving its events."""
    services = services_of(request)
    if not await services.store.delete_partner(partner_id):
        raise HTTPException(404, f"no partner {partner_id!r}")
    await services.announce_change()
    changes = await reconcile_bindings(services)
    return {"deleted": partner_id,
            "bindings_removed": {q: sorted(k) for q, k in changes.removed.items()}}


@router.post("/partners", responses=errors(422), openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["partners"]}},
    "application/yaml": {"schema": {"type": "string"}}}}})
async def post_partners(request: Request) -> dict[str, Any]:
    """Apply a partners document (the partners file, as JSON or YAML): upsert the
    partners in it and make the bindings match."""
    raw = await request.body()
    try:
        data = read_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"request body: not valid YAML or JSON: {exc}") from exc
    partners = load_partners(data, "request body", catalog=services_of(request).registry.catalog)
    changes = await apply_partners(services_of(request), partners, source="request body")
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
                 limit: int = Query(1000, ge=1, le=100000)) -> dict[str, int]:
    """Send logged deliveries again (by default every dead one), even if delivered before."""
    count = await replay_deliveries(services_of(request), event_id=event_id, partner_id=partner_id,
                                    channel=channel, status=status, target=target, since=since, until=until,
                                    limit=limit)
    return {"replayed": count}


@router.get("/operator/events")
async def operator_events(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Operator events (endpoint failing, recovered, disabled), newest first."""
    return await services_of(request).store.list_operator_events(limit=limit)


@router.post("/customers/forget", responses=errors(422))
async def forget_customer(request: Request, body: ForgetCustomer) -> dict[str, Any]:
    """Redact a customer's personal data (name, phone, email, address, what
    they wrote, OTPs) from every archived event that names them, the
    addresses of their deliveries and the responses logged for them, and say
    what changed. Their opt-outs stay, kept as keyed hashes."""
    forgotten = await services_of(request).store.forget_customer(phone=body.phone, email=body.email,
                                                                 partner_id=body.partner_id)
    return forgotten.to_dict()
