"""An email's preview in the portal's branding page: the sample order's
email (the partner's own text, or the shipped one) wearing the branding
being typed, in a frame no script runs in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shipcast.app.portal import Person, framed, member
from shipcast.app.portal.channels import branding_sample, draft_branding, stored_partner
from shipcast.app.services import services_of
from shipcast.exceptions import ConfigError

from .compose import html_part, written

router = APIRouter(include_in_schema=False)


@router.get("/portal/p/{partner_id}/branding/email")
async def email_preview(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    """The sample order's email, the one the tracking page's preview shows, wearing the branding in the query."""
    services = services_of(request)
    partner, _ = draft_branding(request, await stored_partner(services, partner_id))
    event = branding_sample(request, partner_id)
    try:
        subject, text = written(services.registry, event, partner, partner.channels.get("email") or {}, "en")
    except ConfigError:  # no email for this event type: the branding around a plain word of it
        subject = f"{partner.name}: your order {event.order.order_id}"
        text = f"There is news of your order {event.order.order_id}: see the tracking page."
    return framed(html_part(services.registry, event, partner, subject, text, "en", None))
