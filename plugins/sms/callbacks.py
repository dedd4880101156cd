"""Twilio's status callbacks: each accepted text's later fate (sent,
delivered, undelivered, failed) onto its delivery, as ``provider_status``.

Only requests that carry a valid ``X-Twilio-Signature`` for the URL Twilio
called (``SHIPCAST_PUBLIC_URL`` + path) are believed. Callbacks come
duplicated and out of order, so a status never replaces a later one.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from shipcast.api import services_of

router = APIRouter(prefix="/callbacks/sms", tags=["callbacks"], include_in_schema=False)

#: How far along a message each status is; a callback never moves one back.
RANK = {"accepted": 1, "queued": 2, "sending": 3, "sent": 4, "delivered": 5, "undelivered": 5, "failed": 5,
        "read": 6}


@router.post("/twilio")
async def twilio_status(request: Request) -> Response:
    from twilio.request_validator import RequestValidator

    services = services_of(request)
    token = services.settings.twilio_auth_token
    form = await request.form()
    params = {key: str(value) for key, value in form.items()}
    url = services.settings.public_url.rstrip("/") + request.url.path
    if not token or not RequestValidator(token).validate(url, params, request.headers.get("X-Twilio-Signature", "")):
        raise HTTPException(403, "not signed by Twilio for this URL")
    status = params.get("MessageStatus", "")
    if status not in RANK or not params.get("MessageSid"):
        raise HTTPException(400, "MessageSid and a known MessageStatus are required")
    code = params.get("ErrorCode")
    await services.store.provider_status("twilio", params["MessageSid"], f"{status} {code}" if code else status,
                                         RANK[status])
    return Response(status_code=204)
