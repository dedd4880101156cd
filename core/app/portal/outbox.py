"""The development outbox in the portal: a partner's page (``Outbox``)
listing what its customers would have been sent (and what the development
webhook receiver got), each message openable, and the operator's page of
every partner's. An email's HTML part is shown as the customer would see it,
in a sandboxed frame: a document of its own, under a CSP that runs no script
and lets its inline styles (email needs them) apply only there."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from shipcast.app.people import Person
from shipcast.app.portal.session import member, operator
from shipcast.app.portal.web import development_outbox, framed, page
from shipcast.app.services import services_of
from shipcast.messaging import outbox

router = APIRouter(include_in_schema=False)

#: Messages a page lists.
PAGE = 50
#: The longest channel name a filter takes.
MAX_CHANNEL = 64
#: A message's number, as the store's column holds it (a larger one is an error naming it, not a 500).
NUMBER = Path(ge=1, le=2**62)
BEFORE = Query(None, ge=1, le=2**62)


def _channel(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_CHANNEL:
        raise HTTPException(422, f"channel: at most {MAX_CHANNEL} characters")
    return value or None


def _context(request: Request) -> dict[str, Any]:
    """Whether the outbox is in use now, and for which channels, for the page to say."""
    settings = services_of(request).settings
    return {"in_use": development_outbox(request), "off": settings.dev_outbox == outbox.OFF,
            "development": settings.development}


@router.get("/portal/p/{partner_id}/outbox")
async def partner_outbox(partner_id: str, request: Request, channel: str | None = Query(None),
                         before: int | None = BEFORE, person: Person = Depends(member)) -> Response:
    rows = await services_of(request).store.list_outbox(partner_id=partner_id, channel=_channel(channel),
                                                        limit=PAGE, before=before)
    return page(request, "partner_outbox.html", person, title="Outbox", partner_id=partner_id, rows=rows,
                channel=channel or "", base=f"/portal/p/{partner_id}/outbox", more=len(rows) == PAGE,
                **_context(request))


async def _message(request: Request, partner_id: str, number: int) -> dict[str, Any]:
    found = await services_of(request).store.outbox_message(number)
    if found is None or found["partner_id"] != partner_id:
        raise HTTPException(404, f"no message #{number} in {partner_id}'s outbox")
    return found


@router.get("/portal/p/{partner_id}/outbox/{number}")
async def outbox_message(partner_id: str, request: Request, number: int = NUMBER,
                         person: Person = Depends(member)) -> Response:
    message = await _message(request, partner_id, number)
    return page(request, "partner_outbox_message.html", person, title=f"Outbox #{number}",
                partner_id=partner_id, message=message, base=f"/portal/p/{partner_id}/outbox")


@router.get("/portal/p/{partner_id}/outbox/{number}/html")
async def outbox_email(partner_id: str, request: Request, number: int = NUMBER,
                       person: Person = Depends(member)) -> Response:
    """An email's HTML part, alone: for the sandboxed frame of its message's page."""
    message = await _message(request, partner_id, number)
    if not message["html"]:
        raise HTTPException(404, f"message #{number} has no HTML part")
    return framed(message["html"])


@router.get("/portal/operator/outbox")
async def operator_outbox(request: Request, partner: str | None = Query(None, max_length=64),
                          channel: str | None = Query(None), before: int | None = BEFORE,
                          person: Person = Depends(operator)) -> Response:
    rows = await services_of(request).store.list_outbox(partner_id=partner or None, channel=_channel(channel),
                                                        limit=PAGE, before=before)
    return page(request, "operator_outbox.html", person, title="Outbox", rows=rows, partner=partner or "",
                channel=channel or "", more=len(rows) == PAGE, **_context(request))
