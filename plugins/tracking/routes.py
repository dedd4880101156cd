"""The tracking page's routes: ``GET /t/{token}`` (the page),
``GET /t/{token}/live`` (server-sent updates) and ``POST /t/{token}`` (the
customer's forms: show the OTP, reschedule, delivery instructions, rating).

A wrong or expired token is a plain 404. Every form carries a CSRF token
bound to the browser's cookie and the page; posts are rate-limited per
token. What a customer sends back is published as an event of its own type,
so the OMS and partners' webhooks receive it like any other event.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.responses import StreamingResponse

from shipcast.app.api import services_of
from shipcast.app.services import Services
from shipcast.exceptions import BrokerError, InvalidEvent, StoreError
from shipcast.model.envelope import parse_event, rfc3339
from shipcast.model.partners import Partner
from shipcast.templating import environment

from .links import CSRF_COOKIE, csrf_ok, csrf_token, new_csrf_cookie, read_tracking_token
from .live import LiveHub
from .page import Order, order_of, slots, view
from .words import LABELS, pick_language

router = APIRouter(prefix="/t", tags=["tracking page"], include_in_schema=False)
log = logging.getLogger(__name__)

LANGUAGE_COOKIE = "shipcast_lang"
#: Seconds between keep-alive comments on an idle live stream.
KEEPALIVE = 15.0
#: Notices a redirect after a form may ask the page to show.
DONE = ("reschedule", "instructions", "rating")


class Limiter:
    """A token bucket per tracking token: ``burst`` posts at once, then one
    per ``every`` seconds. Kept in this process's memory, for the most recent
    tokens: N API processes allow N times the limit (see the README)."""

    def __init__(self, burst: int = 10, every: float = 30.0, size: int = 100_000) -> None:
        self.burst, self.every, self.size = burst, every, size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.every)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return allowed


def _headers(nonce: str) -> dict[str, str]:
    """No script or style but ours (even if escaping ever failed), no framing,
    and no Referer: the page's URL is its key."""
    return {
        "Content-Security-Policy": (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                    "img-src https: http: data:; connect-src 'self'; form-action 'self'; "
                                    "base-uri 'none'; frame-ancestors 'none'"),
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY", "X-Robots-Tag": "noindex",
    }


def _writable(text: str) -> bool:
    """Text a customer could have typed: no control characters but line breaks
    and tabs. A NUL could be neither stored nor sent; the others are never
    meant (and would reach the OMS and partners' webhooks as they are)."""
    return not any((ord(c) < 32 and c not in "\n\r\t") or 127 <= ord(c) < 160 for c in text)


def _not_found() -> Response:
    return PlainTextResponse("Not found", status_code=404, headers={"Cache-Control": "no-store"})


def _config(partner: Partner) -> Mapping[str, Any]:
    return partner.channels.get("tracking") or {}


async def _resolve(request: Request, token: str) -> tuple[Services, Partner, str, Order] | None:
    services = services_of(request)
    found = read_tracking_token(services.settings, token)
    if found is None:
        return None
    partner_id, order_id = found
    partner = await services.partners.get(partner_id)
    if partner is None:
        return None
    return services, partner, order_id, order_of(await services.store.order_events(partner_id, order_id), services.registry.event_types)


def _language(request: Request, order: Order) -> str:
    latest = order.events[-1].order.customer.language if order.events else None
    return pick_language(request.query_params.get("lang") or request.cookies.get(LANGUAGE_COOKIE),
                         request.headers.get("accept-language"), latest)


def _page(request: Request, token: str, partner: Partner, order: Order, *, status: int = 200,
          notice: str | None = None, error: bool = False, otp: str | None = None) -> Response:
    nonce = secrets.token_urlsafe(16)
    cookie = request.cookies.get(CSRF_COOKIE) or new_csrf_cookie()
    language = _language(request, order)
    services = services_of(request)
    context = view(order, partner, _config(partner), language, datetime.now(UTC), notice=notice,
                   notice_error=error, otp=otp, csrf=csrf_token(services.settings, cookie, token), nonce=nonce,
                   live_url=f"/t/{token}/live?lang={language}", otp_url=f"/t/{token}")
    html = environment().get_template("tracking/page.html").render(context)
    response = HTMLResponse(html, status_code=status, headers=_headers(nonce))
    # Behind a proxy that ends TLS the request itself is plain http: the public URL says.
    secure = request.url.scheme == "https" or services.settings.public_url.startswith("https://")
    if request.cookies.get(CSRF_COOKIE) != cookie:
        response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="lax", secure=secure, path="/t/")
    if request.query_params.get("lang") in LABELS:
        response.set_cookie(LANGUAGE_COOKIE, language, samesite="lax", secure=secure, path="/t/",
                            max_age=365 * 86400)
    return response


@router.get("/{token}")
async def page(request: Request, token: str) -> Response:
    found = await _resolve(request, token)
    if found is None:
        return _not_found()
    _, partner, _, order = found
    done = request.query_params.get("done")
    notice = LABELS[_language(request, order)][f"done_{done}"] if done in DONE else None
    return _page(request, token, partner, order, notice=notice)


async def render_bodies(services: Services, partner_id: str, order_id: str,
                        languages: set[str]) -> tuple[str, dict[str, str]]:
    """The page's version and its body in each language, for live viewers:
    no CSRF token (each page fills in its own) and no OTP."""
    partner = await services.partners.get(partner_id)
    if partner is None:
        return "", {}
    order = order_of(await services.store.order_events(partner_id, order_id), services.registry.event_types)
    template = environment().get_template("tracking/main.html")
    now = datetime.now(UTC)
    return order.version, {language: template.render(view(order, partner, _config(partner), language, now,
                                                           otp=None, csrf=""))
                           for language in languages}


def _event(version: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines())
    return f"event: update\nid: {version}\n{lines}\n"


@router.get("/{token}/live")
async def live(request: Request, token: str) -> Response:
    """Server-sent events: the page's body now, then again after every event of the order."""
    found = await _resolve(request, token)
    if found is None:
        return _not_found()
    services, partner, order_id, order = found
    language = _language(request, order)

    render = functools.partial(render_bodies, services)
    hub = LiveHub.of(services, render)
    try:
        await hub.start()
    except BrokerError:  # the browser tries again after Retry-After
        return PlainTextResponse("Live updates are not available right now.", status_code=503,
                                 headers={"Retry-After": "5", "Cache-Control": "no-store"})

    async def stream() -> AsyncIterator[str]:
        viewer = hub.subscribe(partner.id, order_id, language)  # before the first render: no update slips by
        if services.stopping.is_set():
            viewer.push(None)
        try:
            yield "retry: 3000\n\n"
            try:
                version, pages = await render(partner.id, order_id, {language})
            except StoreError:  # the page keeps what it shows; the next event brings it up to date
                pages = {}
            if language in pages:
                yield _event(version, pages[language])
            while True:
                try:
                    body = await asyncio.wait_for(viewer.updates.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if body is None:
                    return
                yield _event(*body)
        finally:
            hub.unsubscribe(viewer)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                                      "Referrer-Policy": "no-referrer"})


@router.post("/{token}")
async def act(request: Request, token: str) -> Response:
    """One of the page's forms: ``action`` is otp, reschedule, instructions or rating."""
    found = await _resolve(request, token)
    if found is None:
        return _not_found()
    services, partner, order_id, order = found
    form = await request.form()
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    action = fields.get("action", "")
    wants_json = "application/json" in request.headers.get("accept", "")
    said = LABELS[_language(request, order)]

    def refuse(status: int, key: str) -> Response:
        if wants_json:
            return JSONResponse({"error": said[key]}, status_code=status, headers={"Cache-Control": "no-store"})
        return _page(request, token, partner, order, status=status, notice=said[key], error=True)

    limiter = services.extensions.setdefault("tracking.limiter", Limiter())
    if not limiter.allow(f"{partner.id}:{order_id}"):  # per order: its every link shares the limit
        return refuse(429, "too_many")
    if not csrf_ok(services.settings, request.cookies.get(CSRF_COOKIE), token, fields.get("csrf")):
        return refuse(403, "expired_form")
    state = order.status.event_type if order.status else ""
    if action == "otp":
        if order.otp is None:
            return refuse(409, "not_now")
        if wants_json:
            return JSONResponse({"otp": order.otp}, headers={"Cache-Control": "no-store"})
        return _page(request, token, partner, order, otp=order.otp)
    given: dict[str, Any]
    if action == "reschedule":
        offered = {d.isoformat() for d in slots(_config(partner), datetime.now(UTC))}
        if state != "FAIL":
            return refuse(409, "not_now")
        if fields.get("date") not in offered:
            return refuse(422, "bad_date")
        event_type, given = "RESCHEDULE_REQUESTED", {"requested_date": date.fromisoformat(fields["date"])}
    elif action == "instructions":
        text = fields.get("instructions", "").strip()
        if state != "FAIL":
            return refuse(409, "not_now")
        if not 0 < len(text) <= 500:
            return refuse(422, "bad_instructions")
        if not _writable(text):
            return refuse(422, "bad_characters")
        event_type, given = "INSTRUCTIONS_ADDED", {"instructions": text}
    elif action == "rating":
        rating, comment = fields.get("rating", ""), fields.get("comment", "").strip()
        if state != "DEL" or not _config(partner).get("rating", True) or order.since_status("RATED"):
            return refuse(409, "not_now")
        if rating not in {"1", "2", "3", "4", "5"}:
            return refuse(422, "bad_rating")
        if len(comment) > 1000:
            return refuse(422, "bad_comment")
        if not _writable(comment):
            return refuse(422, "bad_characters")
        event_type, given = "RATED", {"rating": int(rating), "comment": comment or None}
    else:
        return PlainTextResponse("unknown action", status_code=400)
    try:
        await _publish(services, partner, order, event_type, given)
    except BrokerError:
        return PlainTextResponse("Please try again in a minute.", status_code=503, headers={"Retry-After": "30"})
    except InvalidEvent as exc:  # the checks above missed something: the customer is told, never sent a 500
        log.warning("tracking: refused a %s the envelope would not take: %s", event_type, exc)
        return refuse(422, "refused")
    if wants_json:
        return JSONResponse({"ok": True, "event_type": event_type})
    return RedirectResponse(f"/t/{token}?done={action}", status_code=303)


async def _publish(services: Services, partner: Partner, order: Order, event_type: str,
                   given: dict[str, Any]) -> None:
    """The customer's input as an event of the order. It carries the
    sequence of the status it answers (the OMS numbers the order's events;
    its next one stays the next). A rating has an id fixed by the delivery it
    rates, so a double submit is one event (the archive and every channel
    deduplicate on the id).

    :raises InvalidEvent: the input breaks the envelope (the form's checks should have caught it).
    :raises BrokerError: not published.
    """
    latest, status = order.events[-1], order.status
    assert status is not None  # every action checks the status first
    extra: dict[str, Any] = {}
    if event_type == "RATED":
        extra["event_id"] = "rated_" + hashlib.sha256(
            f"{partner.id}:{status.order.order_id}:{status.event_id}".encode()).hexdigest()[:32]
    event = parse_event({
        **extra, "event_type": event_type, "occurred_at": rfc3339(datetime.now(UTC)), "partner_id": partner.id,
        "sequence": status.sequence, "order": latest.order.model_dump(mode="json"),
        "customer_input": {**given, "submitted_via": "tracking_page"},
    }, services.registry.event_types)
    await services.publisher.publish_valid([event])
