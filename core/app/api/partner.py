"""The partner API: a partner's own messages, attempts, resends and
recovery, with a partner-scoped token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from shipcast.app.api.access import (
    actor_of,
    errors,
    partner_scope,
)
from shipcast.app.api.quotas import resend_quota
from shipcast.app.audit import Actor, record
from shipcast.app.services import services_of
from shipcast.delivery.replay import matching_deliveries, replay_rows
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
    store = services_of(request).store
    event = await store.get_event(event_id)
    if event is not None and event.get("partner_id") != partner_id:
        event = None  # event ids are the publishers': another partner's may share this one
    rows = await store.list_deliveries(event_id=event_id, partner_id=partner_id)
    if event is None and not rows:
        raise HTTPException(404, f"no message {event_id!r} for partner {partner_id!r}")
    return {"event": event, "deliveries": rows,
            "attempts": await store.list_attempts(event_id, partner_id=partner_id)}


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
    services, quota = services_of(request), resend_quota(request)
    rows = await matching_deliveries(services, event_id=event_id, partner_id=partner_id, target=endpoint,
                                     channel=channel)
    if not rows:
        raise HTTPException(404, f"no deliveries of {event_id!r} for partner {partner_id!r}")
    granted = quota.take(partner_id, len(rows))
    count = await replay_rows(services, rows[:granted])
    quota.give_back(partner_id, granted - count)
    await record(services, actor, "message.resend", partner_id=partner_id, subject=event_id,
                 after={"endpoint": endpoint, "channel": channel, "resent": count})
    return {"resent": count}


@router.post("/recover", status_code=202)
async def recover(partner_id: str, request: Request, response: Response, since: datetime, until: datetime | None = None,
                  endpoint: str | None = None, channel: str | None = None,
                  limit: int = Query(10000, ge=1, le=100000), actor: Actor = Depends(actor_of)) -> dict[str, int]:
    """Send again every message that failed (parked) since ``since``, as many
    as the partner's quota of messages sent again allows; the header
    ``X-Shipcast-Remaining`` says how many more matched (ask again after the
    ``Retry-After`` of the 429 that follows)."""
    services, quota = services_of(request), resend_quota(request)
    rows = await matching_deliveries(services, partner_id=partner_id, status="dead", since=since, until=until,
                                     target=endpoint, channel=channel, limit=limit)
    granted = quota.take(partner_id, len(rows)) if rows else 0
    count = await replay_rows(services, rows[:granted])
    quota.give_back(partner_id, granted - count)
    response.headers["X-Shipcast-Remaining"] = str(len(rows) - granted)
    await record(services, actor, "messages.recover", partner_id=partner_id, subject=since.isoformat(),
                 after={"until": until, "endpoint": endpoint, "channel": channel, "recovered": count})
    return {"recovered": count}
