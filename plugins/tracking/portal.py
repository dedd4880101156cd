"""The tracking page's preview in the portal's branding page: a sample
order's page wearing the branding being typed, in a frame no script runs in."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shipcast.app.portal import Person, framed, member
from shipcast.app.portal.channels import branding_sample, draft_branding, stored_partner
from shipcast.app.services import services_of
from shipcast.templating import environment

from .page import order_of, view

router = APIRouter(include_in_schema=False)


@router.get("/portal/p/{partner_id}/branding/tracking")
async def tracking_preview(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    """The sample order's tracking page (``event_type``, default OFD), wearing the branding in the query."""
    services = services_of(request)
    partner, _ = draft_branding(request, await stored_partner(services, partner_id))
    event = branding_sample(request, partner_id)
    order = order_of([orjson.loads(event.to_json())], services.registry.event_types)
    nonce = secrets.token_urlsafe(16)
    shown = view(order, partner, partner.channels.get("tracking") or {}, "en", datetime.now(UTC), otp=None,
                 csrf="", nonce=nonce, live_url="", otp_url="", notice=None, notice_error=False)
    return framed(environment().get_template("tracking/page.html").render(shown), nonce)
