"""The partner API: a partner's own messages, attempts, resends and
recovery, with a partner-scoped token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shipcast.app import customers, messages, partner_config
from shipcast.app.api.access import (
    actor_of,
    errors,
    partner_scope,
)
from shipcast.app.api.document import request_body
from shipcast.app.audit import Actor
from shipcast.app.messages import resend_quota
from shipcast.app.paging import encode_cursor, page_start
from shipcast.app.partner_config import UnknownPartner
from shipcast.app.services import services_of
from shipcast.exceptions import DeliveryError
from shipcast.messaging.fields import NOT_BLANK
from shipcast.messaging.templates import LANGUAGES
from shipcast.model.json_schemas import Describer, JsonSchema
from shipcast.model.outcomes import DeliveryStatus, Outcome
from shipcast.model.partners import BRANDING

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


# -- the partner's own settings: branding and customer channels ------------------------------


@contextmanager
def _config_answers() -> Iterator[None]:
    """No such partner, channel or section: a 404; a wrong field (or one the
    partners file owns) is the 422 a partners document gets."""
    try:
        yield
    except UnknownPartner as exc:
        raise HTTPException(404, str(exc)) from exc


def _section(channel: str | None) -> str:
    return channel if channel is not None else BRANDING


@router.get("/config", responses=errors(404))
async def get_config(partner_id: str, request: Request) -> dict[str, Any]:
    """The partner's whole config (secrets redacted), which fields the
    operator's partners file owns (``file_fields``: those are changed in the
    file, not here) and which sections the partner changes (``editable``)."""
    services = services_of(request)
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise HTTPException(404, f"no partner {partner_id!r}")
    return partner_config.describe(services.registry, partner)


async def _change(request: Request, partner_id: str, section: str, body: Any, actor: Actor,
                  patch: bool) -> dict[str, Any]:
    services = services_of(request)
    with _config_answers():
        changed = await partner_config.change_section(services, partner_id, section, body, actor, patch=patch)
    return partner_config.describe(services.registry, changed)


@router.put("/config/branding", responses=errors(404, 422), openapi_extra=request_body(
    partner_config.branding_schema,
    examples={"colour": {"primary_color": "#0a7cff", "support_phone": "+919876543210"}}))
async def put_branding(partner_id: str, request: Request, body: dict[str, Any] = Body(...),
                       actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Set the branding (``logo_url``, ``primary_color``, ``support_phone``,
    ``support_email``) the tracking page and customer messages wear. A field
    the operator's partners file sets is theirs: changing it is refused (422)."""
    return await _change(request, partner_id, BRANDING, body, actor, patch=False)


@router.patch("/config/branding", responses=errors(404, 422), openapi_extra=request_body(
    partner_config.branding_patch_schema, examples={"no logo": {"logo_url": None}}))
async def patch_branding(partner_id: str, request: Request, body: dict[str, Any] = Body(...),
                         actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Change some branding fields (JSON merge patch: ``null`` removes one)."""
    return await _change(request, partner_id, BRANDING, body, actor, patch=True)


@router.put("/config/channels/{channel}", responses=errors(404, 422), openapi_extra=request_body(
    partner_config.channel_schema, examples={"sms": {"sender": "ACMEIN", "events": ["OFD", "FAIL"]}}))
async def put_channel(partner_id: str, channel: str, request: Request, body: dict[str, Any] = Body(...),
                      actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Turn a customer channel on with this config, or replace its config:
    the ``channels.<channel>`` section of the partners file, validated the
    same way (templates rendered for every event type and language). Its
    queue bindings follow at once."""
    return await _change(request, partner_id, channel, body, actor, patch=False)


@router.patch("/config/channels/{channel}", responses=errors(404, 422), openapi_extra=request_body(
    partner_config.channel_patch_schema,
    examples={"quiet nights": {"quiet_hours": {"start": "21:00", "end": "08:00"}}}))
async def patch_channel(partner_id: str, channel: str, request: Request, body: dict[str, Any] = Body(...),
                        actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Change part of a channel's config (JSON merge patch, RFC 7396:
    ``{"templates": {"FAIL": {"hi": null}}}`` drops the Hindi FAIL text)."""
    return await _change(request, partner_id, channel, body, actor, patch=True)


@router.delete("/config/channels/{channel}", responses=errors(404, 422))
async def delete_channel(partner_id: str, channel: str, request: Request,
                         actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Turn a customer channel off: its customers get nothing more on it."""
    return await _change(request, partner_id, channel, None, actor, patch=False)


class PreviewRequest(BaseModel):
    """What to preview: an event type and language, and a draft config (the saved one when absent)."""

    model_config = ConfigDict(extra="forbid")

    event_type: str = Field("OFD", max_length=64)
    language: str = Field("en", max_length=8)
    config: dict[str, Any] | None = None


def _sample(describer: Describer, model: type[BaseModel]) -> JsonSchema:
    """``model``'s JSON Schema, its sample event's type and language among those registered."""
    described = model.model_json_schema()
    described["properties"]["event_type"] = {"type": "string", "enum": list(describer.catalog.event_types),
                                             "default": "OFD", "description": "The sample event's type"}
    described["properties"]["language"] = {"type": "string", "enum": list(LANGUAGES), "default": "en",
                                           "description": "The language of the message"}
    return describer.define(model.__name__, described)


def preview_schema(describer: Describer) -> JsonSchema:
    return _sample(describer, PreviewRequest)


def test_message_schema(describer: Describer) -> JsonSchema:
    return _sample(describer, TestMessage)


@router.post("/config/channels/{channel}/preview", responses=errors(404, 422), openapi_extra=request_body(
    preview_schema, examples={"a draft": {"event_type": "FAIL", "language": "hi", "config": {
        "sender": "ACMEIN", "templates": {"FAIL": "{{ order.order_id }}: we missed you"}}}}))
async def preview_channel(partner_id: str, channel: str, request: Request, body: PreviewRequest) -> dict[str, Any]:
    """The message the channel would send for a sample event, as the draft
    ``config`` (or the saved one) makes it: with a realistic sample and with
    every optional field null; and each problem the draft has (``field``,
    ``language``, ``line``), as saving it would report. Nothing is saved."""
    with _config_answers():
        shown = await partner_config.preview_section(services_of(request), partner_id, channel, body.config,
                                                     body.event_type, body.language)
    return shown.to_dict()


class TestMessage(BaseModel):
    """Where to send a test message: a phone number (SMS, WhatsApp) or an email address of your own."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3, max_length=254, pattern=NOT_BLANK,
                    description="A phone number or an email address the channel sends to")
    event_type: str = Field("OFD", max_length=64)
    language: str = Field("en", pattern="^(en|hi)$")


@router.post("/config/channels/{channel}/test", status_code=202, responses=errors(404, 422, 429, 502),
             openapi_extra=request_body(test_message_schema,
                                        examples={"to me": {"to": "+919876543210", "event_type": "OFD"}}))
async def test_channel(partner_id: str, channel: str, request: Request, body: TestMessage,
                       actor: Actor = Depends(actor_of)) -> dict[str, Any]:
    """Send the channel's message for a sample event, as the saved config
    makes it, to ``to`` now, through the channel's provider (the development
    outbox when none is configured). Counts against the partner's quota of
    messages sent again. A provider's refusal is a 502 saying why."""
    quota = resend_quota(request)
    quota.take(partner_id, 1)
    try:
        with _config_answers():
            return await partner_config.send_test(services_of(request), partner_id, channel, body.to,
                                                  body.event_type, body.language, actor)
    except DeliveryError as exc:
        raise HTTPException(502, f"the provider refused the test message: {exc}") from exc
    except Exception:
        quota.give_back(partner_id, 1)  # nothing was sent
        raise


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
