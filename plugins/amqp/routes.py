"""The AMQP destinations' part of the partner API: a destination's signing
secret, which the partner verifies its messages with. The destinations
themselves are set through the generic ``/v1/partners/{id}/config/channels/amqp``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from shipcast.app.api import errors, partner_scope, services_of
from shipcast.app.api.access import actor_of
from shipcast.app.audit import Actor, record
from shipcast.security.crypto import secret_box
from shipcast.security.endpoint_secrets import valid_secrets

from .channel import AmqpChannel

router = APIRouter(prefix="/v1/partners/{partner_id}/amqp/destinations", dependencies=[Depends(partner_scope)],
                   tags=["partner"], responses=errors(401, 403, 404, 503))


@router.get("/{destination_id}/secret")
async def get_destination_secret(partner_id: str, destination_id: str, request: Request,
                                 actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """The destination's current secret (``whsec_…``), and until when a
    rotated-out one still signs beside it. The audit log records who fetched
    it. A new secret given in the destination's config rotates it."""
    services = services_of(request)
    partner = await services.store.get_partner(partner_id)
    found = [d for d in ((partner.channels.get(AmqpChannel.name) or {}) if partner else {}).get("destinations", [])
             if d["id"] == destination_id]
    if not found:
        raise HTTPException(404, f"no AMQP destination {destination_id!r} for partner {partner_id!r}")
    now = time.time()
    overlap = [p["expires_at"] for p in found[0].get("previous_secrets", ()) if p["expires_at"] > now]
    shown = {"secret": valid_secrets(secret_box(services.settings), found[0])[0],
             "previous_secret_valid_until": datetime.fromtimestamp(max(overlap), UTC).isoformat() if overlap else None}
    await record(services, actor, "amqp.secret_reveal", partner_id=partner_id, subject=destination_id)
    return shown
