"""Twilio's status callbacks: each accepted message's later fate (sent,
delivered, undelivered, failed) onto its delivery, as ``provider_status``.

Only requests that carry a valid ``X-Twilio-Signature`` for the URL Twilio
called (``SHIPCAST_PUBLIC_URL`` + path) are believed. Callbacks come
duplicated and out of order, so a status never replaces a later one.

Twilio often accepts a message and reports its failure only later (a
carrier's refusal of a text; a WhatsApp customer who is not on WhatsApp or
blocked the business). Such a failure is logged on the delivery as dead with
Twilio's code and parked, or, for a WhatsApp customer the merchant lets fall
back to SMS, sent again through the WhatsApp worker, which texts them instead.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response

from shipcast.app.api import services_of
from shipcast.app.services import Services
from shipcast.exceptions import BrokerError, StoreError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/callbacks/sms", tags=["callbacks"], include_in_schema=False)

#: How far along a message each status is; a callback never moves one back.
RANK = {"accepted": 1, "queued": 2, "sending": 3, "sent": 4, "delivered": 5, "undelivered": 5, "failed": 5,
        "read": 6}
#: Statuses that say Twilio could not deliver a message it had accepted.
FAILED = ("undelivered", "failed")


@router.post("/twilio")
async def twilio_status(request: Request) -> Response:
    from twilio.request_validator import RequestValidator

    services = services_of(request)
    token = services.settings.twilio_auth_token
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:  # refused unread
        raise HTTPException(403, "not signed by Twilio for this URL")
    # Twilio signs the URL and the form's fields, so the fields are read to
    # check it; read by hand, bounded (BodyLimit), with no multipart parser.
    if request.headers.get("content-type", "").partition(";")[0].strip() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Twilio posts application/x-www-form-urlencoded")
    params = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
    url = services.settings.public_url.rstrip("/") + request.url.path
    if not RequestValidator(token).validate(url, params, signature):
        raise HTTPException(403, "not signed by Twilio for this URL")
    status = params.get("MessageStatus", "")
    if status not in RANK or not params.get("MessageSid"):
        raise HTTPException(400, "MessageSid and a known MessageStatus are required")
    code = params.get("ErrorCode")
    try:
        found = await services.store.provider_status("twilio", params["MessageSid"],
                                                     f"{status} {code}" if code else status, RANK[status])
        if found is not None and status in FAILED:
            await _failed_later(services, found, int(code) if code and code.isdigit() else 0, params.get("To", ""))
    except (StoreError, BrokerError) as exc:  # a 5xx: Twilio tries the callback again
        log.warning("Twilio status for %s not recorded: %s", params.get("MessageSid"), exc)
        raise HTTPException(503, "not recorded, try again") from exc
    return Response(status_code=204)


async def _failed_later(services: Services, found: dict[str, Any], code: int, to: str) -> None:
    from shipcast.amqp.parking import park
    from shipcast.delivery.replay import replay_rows
    from shipcast.messaging.rules import UNREACHABLE
    from shipcast.model.envelope import parse_event

    from .providers import WHATSAPP_UNREACHABLE, twilio_reason

    reason = f"{twilio_reason(code)} (reported by Twilio after it accepted the message)"
    channel, partner_id = found["channel"], found["partner_id"]
    if not await services.store.undelivered(found["event_id"], channel, found["target"], reason):
        return  # already failed: a duplicate callback
    if channel == "whatsapp" and code in WHATSAPP_UNREACHABLE and partner_id:
        await services.store.add_opt_out(channel, partner_id, to.removeprefix("whatsapp:"),
                                         f"{UNREACHABLE}{twilio_reason(code)}")
        partner = await services.partners.get(partner_id)
        if partner is not None and (partner.channels.get(channel) or {}).get("fallback_sms_sender"):
            await replay_rows(services, [{**found, "partner_id": partner_id}])
            return
    body = await services.store.get_event(found["event_id"])
    if body is not None:
        await park(services.broker, channel, parse_event(body, services.registry.event_types), found["target"],
                   reason, code)
