"""A webhook receiver for development (``SHIPCAST_DEVELOPMENT``): the demo
partner's endpoint works on a fresh machine.

``POST /dev/receiver/{partner_id}/{endpoint_id}`` verifies the Standard
Webhooks signature with that endpoint's own secret, as a partner's receiver
would, and files every receipt, verified or not, in the development outbox
(channel ``webhook-receiver``) where ``shipcast outbox list`` and the portal
show it. It answers 204 when the signature verifies, 401 when it does not.

The webhook guard refuses loopback; in development mode it lets through
exactly this receiver on shipcast's own address (:func:`.guard.is_receiver`), and
nothing else on loopback. Outside development mode the route is a 404.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from shipcast.app.services import services_of
from shipcast.security.crypto import secret_box
from shipcast.security.signing import verify
from shipcast.store import OutboxMessage

from . import admin
from .channel import valid_secrets
from .guard import RECEIVER_PATH

router = APIRouter(prefix="/dev/receiver", include_in_schema=False)

#: The outbox's channel for what the receiver got.
CHANNEL = "webhook-receiver"


def _about(body: bytes) -> tuple[str | None, str | None]:
    """The event type and order id a received body names, when it is an event."""
    try:
        event = orjson.loads(body)
        return str(event["event_type"])[:32], str(event["order"]["order_id"])[:100]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None, None


@router.post("/{partner_id}/{endpoint_id}")
async def receive(partner_id: str, endpoint_id: str, request: Request) -> Response:
    services = services_of(request)
    if not services.settings.development or not RECEIVER_PATH.fullmatch(request.url.path):
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    try:
        _, index = found = admin.find(await admin.load(services, partner_id), endpoint_id)
    except admin.UnknownEndpoint as exc:  # filed nowhere: only a real endpoint's receipts are kept
        return JSONResponse({"detail": str(exc)}, status_code=404)
    body = await request.body()  # bounded by SHIPCAST_MAX_BODY_BYTES, as every request is
    headers = request.headers
    msg_id = headers.get("webhook-id", "")
    why = verify(valid_secrets(secret_box(services.settings), found[0][index]), msg_id,
                 headers.get("webhook-timestamp", ""), body, headers.get("webhook-signature", ""))
    event_type, order_id = _about(body)
    number = await services.store.add_outbox(OutboxMessage(
        channel=CHANNEL, partner_id=partner_id, event_id=msg_id or None, event_type=event_type, order_id=order_id,
        recipient=endpoint_id, text=body.decode("utf-8", "replace"), verified=why is None,
        detail="signature verified with the endpoint's secret" if why is None else f"not verified: {why}"))
    if why is not None:
        return JSONResponse({"detail": why, "outbox": number}, status_code=401)
    return Response(status_code=204)
