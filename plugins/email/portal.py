"""An email's preview in the portal's branding page: a sample message's
HTML wearing the branding being typed, in a frame no script runs in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from shipcast.app.portal import Person, framed, member
from shipcast.app.portal.channels import draft_branding, stored_partner
from shipcast.app.services import services_of
from shipcast.messaging.templates import context
from shipcast.model.examples import example
from shipcast.templating import environment

router = APIRouter(include_in_schema=False)


@router.get("/portal/p/{partner_id}/branding/email")
async def email_preview(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    """A delivered order's email, wearing the branding in the query."""
    services = services_of(request)
    partner, _ = draft_branding(request, await stored_partner(services, partner_id))
    event = example("DEL", services.registry.event_types, partner_id=partner_id)
    html = environment().get_template("email/layout.html").render(
        context(services.registry, event, partner), subject=f"{partner.name}: your order was delivered",
        language="en", paragraphs=[f"Your order {event.order.order_id} was delivered. Thank you!",
                                   "Tell us how it went on the tracking page."], unsubscribe_url=None)
    return framed(html)
