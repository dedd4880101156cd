"""The partner API: a partner's own messages, attempts, resends and
recovery, with a partner-scoped token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from shipcast.app import messages
from shipcast.app.api.access import (
    actor_of,
    errors,
    partner_scope,
)
from shipcast.app.audit import Actor
from shipcast.app.messages import resend_quota
from shipcast.app.services import services_of
from shipcast.model.outcomes import DeliveryStatus, Outcome

#: The partner API: the operator, or that partner's own token.
router = APIRouter(prefix="/v1/partners/{partner_id}", dependencies=[Depends(partner_scope)],
                       tags=["partner"], responses=errors(401, 403, 503))


@router.get("/messages")
async def list_messages(partner_id: str, request: Request, status: DeliveryStatus | None = None,
                        event_type: str | None = None, order_id: str | None = None,
                        endpoint: str | None = None, channel: str | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Messages to this partner (one per event and target), newest first.
    ``since``/``until`` (RFC 3339) bound when each last changed."""
    return await services_of(request).store.list_deliveries(
        partner_id=partner_id, status=status, event_type=event_type, order_id=order_id, target=endpoint,
        channel=channel, since=since, until=until, limit=limit)


@router.get("/messages/{event_id}", responses=errors(404))
async def get_message(partner_id: str, event_id: str, request: Request) -> dict[str, Any]:
    """One event as sent, with its deliveries and every attempt."""
    found = await messages.message(services_of(request).store, partner_id, event_id)
    if found is None:
        raise HTTPException(404, f"no message {event_id!r} for partner {partner_id!r}")
    return found


@router.get("/attempts")
async def list_attempts(partner_id: str, request: Request, event_id: str | None = None,
                        endpoint: str | None = None, channel: str | None = None,
                        outcome: Outcome | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Delivery attempts to this partner, newest first (oldest first for one event)."""
    return await services_of(request).store.list_attempts(
        event_id, channel, partner_id=partner_id, target=endpoint, outcome=outcome, since=since, until=until,
        limit=limit)


@router.post("/messages/{event_id}/resend", status_code=202, responses=errors(404))
async def resend(partner_id: str, event_id: str, request: Request, endpoint: str | None = None,
                 channel: str | None = None, actor: Actor = Depends(actor_of)) -> dict[str, int]:
    """Send one message again to each of its targets (or one endpoint), even if delivered."""
    count = await messages.resend(services_of(request), resend_quota(request), partner_id, event_id, actor,
                                 endpoint=endpoint, channel=channel)
    if count is None:
        raise HTTPException(404, f"no deliveries of {event_id!r} for partner {partner_id!r}")
    return {"resent": count}


@router.post("/recover", status_code=202)
async def recover(partner_id: str, request: Request, response: Response, since: datetime, until: datetime | None = None,
                  endpoint: str | None = None, channel: str | None = None,
                  limit: int = Query(messages.RECOVER_LIMIT, ge=1, le=100000),
                  actor: Actor = Depends(actor_of)) -> dict[str, int]:
    """Send again every message that failed (parked) since ``since``, as many
    as the partner's quota of messages sent again allows; the header
    ``X-Shipcast-Remaining`` says how many more matched (ask again after the
    ``Retry-After`` of the 429 that follows)."""
    done = await messages.recover(services_of(request), resend_quota(request), partner_id, actor, since=since,
                                 until=until, endpoint=endpoint, channel=channel, limit=limit)
    response.headers["X-Shipcast-Remaining"] = str(done.remaining)
    return {"recovered": done.recovered}
