"""The partner API: a partner's own messages, attempts, resends and
recovery, with a partner-scoped token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from shipcast.app import customers, messages
from shipcast.app.api.access import (
    actor_of,
    errors,
    partner_scope,
)
from shipcast.app.audit import Actor
from shipcast.app.messages import resend_quota
from shipcast.app.paging import encode_cursor, page_start
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


@router.get("/customer-messages", responses=errors(422))
async def customer_messages(partner_id: str, request: Request, order_id: str | None = None,
                            phone: str | None = None, email: str | None = None, channel: str | None = None,
                            status: str | None = None, before: str | None = None,
                            limit: int = Query(25, ge=1, le=200)) -> dict[str, Any]:
    """What this partner's customers got: every SMS, WhatsApp message and
    email sent, skipped or waiting, newest first, with why (``held``:
    ``opted out``, ``stale``, ``quiet hours``, ``unreachable``; the reason in
    ``last_error``), the provider's latest status and the attempts. Search by
    ``order_id``, or by the customer's ``phone`` or ``email`` (each candidate
    checked against the order's customer). The next page: ``before=<next>``.
    A search by phone or email reads at most a bounded number of candidates
    per page: ``capped`` says it stopped there (more may follow from ``next``)."""
    services = services_of(request)
    search = customers.parse_customer_search(services, await services.partners.get(partner_id), {
        "order_id": order_id, "phone": phone, "email": email, "channel": channel, "status": status})
    page = await customers.customer_messages(services, partner_id, search, after=page_start(before, 4), limit=limit)
    return {"messages": page.rows, "next": encode_cursor(page.next) if page.next else None,
            "scanned": page.scanned, "capped": page.capped}


@router.get("/opt-outs", responses=errors(422))
async def list_opt_outs(partner_id: str, request: Request, channel: str | None = None, phone: str | None = None,
                        email: str | None = None, before: str | None = None,
                        limit: int = Query(25, ge=1, le=200)) -> dict[str, Any]:
    """This partner's customers who opted out (replied STOP, unsubscribed, or
    cannot be reached), newest first: ``id``, ``channel``, ``reason``, ``at``,
    the masked ``address`` (none on opt-outs recorded before it was kept),
    ``asked_by_customer``, and ``note``: what lifting it leaves. With ``phone``
    or ``email``: that customer's opt-outs only."""
    services = services_of(request)
    for customer_field, written in (("phone", phone), ("email", email)):
        if written:
            found = await customers.find_opt_outs(services, partner_id, customer_field, written, channel or None)
            return {"opt_outs": found, "next": None}
    rows, after = await customers.opt_outs_page(services, partner_id, channel=channel, after=page_start(before, 3),
                                                limit=limit)
    return {"opt_outs": rows, "next": encode_cursor(after) if after else None}


@router.delete("/opt-outs/{channel}/{opt_out_id}", responses=errors(404, 422))
async def lift_opt_out(partner_id: str, channel: str, opt_out_id: str, request: Request,
                       customer_asked: bool = False, actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Lift an opt-out: the channel sends to the customer again. One the
    customer asked for (``asked_by_customer``) needs ``customer_asked=true``:
    they asked to get these messages again. Twilio still blocks a number that
    replied STOP until the customer texts START (see ``note``)."""
    try:
        lifted = await customers.lift_opt_out(services_of(request), partner_id, channel, opt_out_id, actor,
                                              customer_asked=customer_asked)
    except customers.NotFound:
        raise HTTPException(404, f"no opt-out {opt_out_id!r} on {channel!r} for partner {partner_id!r}") from None
    return {"lifted": lifted}
