"""One-click unsubscribe (RFC 8058): ``POST /u/{token}`` records the opt-out
at once, as mail clients send it; ``GET`` shows a page with the button."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from shipcast.app.api import services_of
from shipcast.security.links import read_unsubscribe_token

router = APIRouter(prefix="/u", tags=["unsubscribe"], include_in_schema=False)


@router.get("/{token}")
async def page(token: str, request: Request) -> HTMLResponse:
    if read_unsubscribe_token(services_of(request).settings, token) is None:
        raise HTTPException(404, "unknown unsubscribe link")
    return HTMLResponse('<!doctype html><meta charset="utf-8"><title>Unsubscribe</title>'
                        '<form method="post"><p>Stop these messages?</p>'
                        '<button name="List-Unsubscribe" value="One-Click">Unsubscribe</button></form>')


@router.post("/{token}")
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    services = services_of(request)
    found = read_unsubscribe_token(services.settings, token)
    if found is None:
        raise HTTPException(404, "unknown unsubscribe link")
    channel, partner_id, hashed, masked = found
    await services.store.add_opt_out(channel, partner_id, hashed, "unsubscribed (one-click)", hashed=True,
                                     masked=masked)
    return HTMLResponse('<!doctype html><meta charset="utf-8"><title>Unsubscribed</title>'
                        "<p>You will not get these messages any more.</p>")
