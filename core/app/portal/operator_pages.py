"""The operator's pages, under ``/portal/operator/``: every partner with its
health (and creating one, inviting its people), the queues and their parking
lots (and replaying them), operator events, people and sessions, and the
whole audit log. A 404 to everyone but an operator.

Each change goes through the function the API or the command line uses:
:func:`~shipcast.app.reconcile.apply_partners` as ``POST /v1/partners``,
:func:`~shipcast.app.people.invite` and
:func:`~shipcast.app.people.revoke_session` as ``/v1/portal/…``,
:func:`~shipcast.amqp.parking.replay_dead` as ``shipcast dead replay``, and the
queues are flagged by :func:`~shipcast.app.queues.queue_status` as ``shipcast
status`` flags them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aio_pika
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from shipcast.amqp.parking import list_dead, replay_dead
from shipcast.app.audit import record
from shipcast.app.people import OPERATOR, ROLES, Person, invite, revoke_session
from shipcast.app.portal.session import checked_form, operator
from shipcast.app.portal.web import form_errors, page, redirect
from shipcast.app.queues import queue_statuses
from shipcast.app.reconcile import apply_partners
from shipcast.app.services import Services, services_of
from shipcast.exceptions import BrokerError, ConfigError, ShipcastError
from shipcast.model.outcomes import DeliveryStatus
from shipcast.model.partners import load_partners
from shipcast.security.redact import redact

log = logging.getLogger(__name__)

router = APIRouter(prefix="/portal/operator", include_in_schema=False, dependencies=[Depends(operator)])

#: The channel a new partner's first endpoint is made for, when it is installed.
FIRST_ENDPOINT_CHANNEL = "webhook"
FIRST_ENDPOINT_ID = "main"
#: Parked messages shown per channel (peeked: they stay parked).
PEEK = 50
AUDIT_PAGE = 50
#: How long each form field may be, at most.
LIMITS = {"id": 64, "name": 200, "url": 2000, "email": 254, "role": 16, "partner_id": 64, "channel": 64,
          "event_id": 100}
STATUS_KINDS = {"delivered": "ok", "dead": "bad", "retrying": "warn", "waiting": "warn"}


def _fields(form: dict[str, str], *names: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The named fields, stripped, and an error beside each one that is too long."""
    values, errors = {}, {}
    for name in names:
        value = form.get(name, "").strip()
        if len(value) > LIMITS[name]:
            errors[name] = [f"at most {LIMITS[name]} characters"]
            value = value[:LIMITS[name]]
        values[name] = value
    return values, errors


def _moment(value: Any) -> Any:
    """An ISO time (from a message header or an event's body) as a datetime,
    for the pages to show alike; anything else as it is."""
    if isinstance(value, str) and 19 <= len(value) <= 40 and value[4:5] == "-" and value[10:11] == "T":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _invited(made: dict[str, Any]) -> dict[str, Any]:
    return {**made, "expires_at": _moment(made["expires_at"])}


# -- partners -----------------------------------------------------------------


async def _partner_rows(services: Services) -> list[dict[str, Any]]:
    """Each partner with its endpoints' state (from the partner cache: disabled,
    failing since when), its deliveries of the last 24 h by status and its dead ones."""
    store = services.store
    cache = services.partners
    await cache.reload(if_older_than=2.0)
    partners = await store.get_partners()
    day = await store.count_deliveries(since=datetime.now(UTC) - timedelta(hours=24))
    dead = await store.count_deliveries(status=DeliveryStatus.DEAD)
    order = [str(status) for status in DeliveryStatus]
    rows = []
    for partner in sorted(partners, key=lambda p: p.id):
        endpoints = []
        for channel, config in sorted(partner.channels.items()):
            listed = config.get("endpoints") if isinstance(config, Mapping) else None
            for endpoint in listed if isinstance(listed, list) else []:
                key = (channel, partner.id, str(endpoint.get("id")))
                endpoints.append({"channel": channel, "id": key[2], "disabled": cache.is_disabled(*key),
                                  "failing_since": cache.failing.get(key)})
        shown = {(e["channel"], e["id"]) for e in endpoints}
        for (channel, partner_id, target), since in sorted(cache.failing.items()):
            if partner_id == partner.id and (channel, target) not in shown:
                endpoints.append({"channel": channel, "id": target,
                                  "disabled": cache.is_disabled(channel, partner_id, target), "failing_since": since})
        counts = day.get(partner.id, {})
        rows.append({
            "id": partner.id, "name": partner.name, "endpoints": endpoints,
            "day": [(status, counts[status], STATUS_KINDS.get(status, ""))
                    for status in sorted(counts, key=lambda s: order.index(s) if s in order else len(order))],
            "dead": dead.get(partner.id, {}).get(DeliveryStatus.DEAD, 0),
        })
    return rows


async def _partners_page(request: Request, person: Person, *, status_code: int = 200,
                         create: dict[str, str] | None = None, create_errors: dict[str, list[str]] | None = None,
                         invited: dict[str, Any] | None = None, invite_for: str | None = None,
                         invite_values: dict[str, str] | None = None,
                         invite_errors: dict[str, list[str]] | None = None) -> Response:
    services = services_of(request)
    config = services.settings.config
    return page(request, "operator_partners.html", person, title="Partners", status_code=status_code,
                partners=await _partner_rows(services), create=create or {"id": "", "name": "", "url": ""},
                errors=create_errors or {}, invited=invited, invite_for=invite_for,
                invite_values=invite_values or {"email": "", "role": "viewer"}, invite_errors=invite_errors or {},
                roles=ROLES, partners_file=config, partners_file_exists=Path(config).is_file(),
                has_first_endpoint=FIRST_ENDPOINT_CHANNEL in services.registry.channels)


@router.get("/")
async def partners_page(request: Request, person: Person = Depends(operator)) -> Response:
    return await _partners_page(request, person)


def _create_field(location: str) -> str:
    """Which field of the form an error of the partners document belongs beside:
    ``partner 'x': channels.webhook.endpoints.0.url`` → ``url``."""
    where = location.rsplit(": ", 1)[-1]
    if where in ("id", "name"):
        return where
    if where.startswith(f"channels.{FIRST_ENDPOINT_CHANNEL}."):
        return "url"
    return "form"


@router.post("/partners")
async def create_partner(request: Request, form: dict[str, str] = Depends(checked_form),
                         person: Person = Depends(operator)) -> Response:
    """A new partner, through the partners document the API applies: the same
    validation, the same bindings, audited. An id in use is refused, not overwritten."""
    services = services_of(request)
    values, errors = _fields(form, "id", "name", "url")
    if values["url"] and FIRST_ENDPOINT_CHANNEL not in services.registry.channels:
        errors.setdefault("url", []).append(f"the {FIRST_ENDPOINT_CHANNEL} channel is not installed here")
    if not errors:
        item: dict[str, Any] = {"id": values["id"], "name": values["name"]}
        if values["url"]:
            item["channels"] = {FIRST_ENDPOINT_CHANNEL: {"endpoints": [{"id": FIRST_ENDPOINT_ID,
                                                                        "url": values["url"]}]}}
        try:
            [partner] = load_partners({"partners": [item]}, "the form", catalog=services.registry.catalog)
        except ConfigError as exc:
            for location, messages in (exc.errors or {"form": [str(exc)]}).items():
                errors.setdefault(_create_field(str(location)), []).extend(str(m) for m in messages)
        else:
            if await services.store.get_partner(partner.id) is not None:
                errors["id"] = [f"a partner {partner.id!r} exists already: its pages are at /portal/p/{partner.id}/"]
            else:
                try:
                    await apply_partners(services, [partner], source="the form", actor=person.actor)
                except ConfigError as exc:  # a destination refused (the SSRF guard says why)
                    for location, messages in (exc.errors or {"form": [str(exc)]}).items():
                        errors.setdefault(_create_field(str(location)), []).extend(str(m) for m in messages)
                except BrokerError as exc:
                    stored = await services.store.get_partner(partner.id) is not None
                    errors["form"] = [f"Partner {partner.id} is stored, but RabbitMQ could not be told: {exc}. "
                                      "Its bindings are made when shipcast next starts." if stored else
                                      f"RabbitMQ cannot be reached now: {exc}. Try again in a moment."]
                    return await _partners_page(request, person, status_code=503, create=values,
                                                create_errors=errors)
                else:
                    return redirect(request, "/portal/operator/", f"Partner {partner.id} created: invite its people from its row.")
    return await _partners_page(request, person, status_code=422, create=values, create_errors=form_errors(errors))


@router.post("/invitations")
async def invite_partner_person(request: Request, form: dict[str, str] = Depends(checked_form),
                                person: Person = Depends(operator)) -> Response:
    """A sign-in link for a partner's admin or viewer, shown on the page (and emailed when SMTP is set)."""
    values, errors = _fields(form, "partner_id", "email", "role")
    made = None
    if not errors:
        try:
            made = await invite(services_of(request), email=values["email"], partner_id=values["partner_id"],
                                role=values["role"], invited_by=person.actor)
        except ConfigError as exc:
            errors = form_errors(exc.errors or {"email": [str(exc)]})
    if made is None:
        return await _partners_page(request, person, status_code=422, invite_for=values["partner_id"],
                                    invite_values=values, invite_errors=errors)
    return await _partners_page(request, person, invited=_invited(made))


# -- people -------------------------------------------------------------------


async def _people_page(request: Request, person: Person, *, status_code: int = 200,
                       invited: dict[str, Any] | None = None, email: str = "",
                       errors: dict[str, list[str]] | None = None) -> Response:
    services = services_of(request)
    settings = services.settings
    now = datetime.now(UTC)
    sessions = [s for s in await services.store.list_sessions(
                    live_since=now - timedelta(seconds=settings.portal_session_idle), limit=500)
                if now - s["created_at"] < timedelta(seconds=settings.portal_session_max)]
    invitations = await services.store.list_invitations(limit=100)
    for invitation in invitations:
        invitation["state"] = "used" if invitation["used_at"] else \
            "expired" if invitation["expires_at"] <= now else "waiting"
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for session in sessions:
        groups.setdefault(session["partner_id"], []).append(session)
    grouped = sorted(groups.items(), key=lambda item: (item[0] is not None, item[0] or ""))
    return page(request, "operator_people.html", person, title="People", status_code=status_code,
                groups=grouped, invitations=invitations, invited=invited, email=email, errors=errors or {})


@router.get("/people")
async def people_page(request: Request, person: Person = Depends(operator)) -> Response:
    return await _people_page(request, person)


@router.post("/people/invite")
async def invite_operator(request: Request, form: dict[str, str] = Depends(checked_form),
                          person: Person = Depends(operator)) -> Response:
    """A sign-in link for another operator."""
    values, errors = _fields(form, "email")
    if not errors:
        try:
            made = await invite(services_of(request), email=values["email"], partner_id=None, role=OPERATOR,
                                invited_by=person.actor)
        except ConfigError as exc:
            errors = form_errors(exc.errors or {"email": [str(exc)]})
        else:
            return await _people_page(request, person, invited=_invited(made))
    return await _people_page(request, person, status_code=422, email=values["email"], errors=errors)


@router.post("/people/sessions/{session_id}/revoke")
async def revoke(request: Request, session_id: str, form: dict[str, str] = Depends(checked_form),
                 person: Person = Depends(operator)) -> Response:
    """End someone's session at once (audited, as ``DELETE /v1/portal/sessions/{id}``)."""
    if len(session_id) > 64 or not await revoke_session(services_of(request), session_id, person.actor):
        return redirect(request, "/portal/operator/people", "That session had ended already.")
    if session_id == person.session_id:
        return redirect(request, "/portal/signin", "Your own session is ended.")
    return redirect(request, "/portal/operator/people", f"Session {session_id} ended.")


# -- queues and parking lots --------------------------------------------------


def _partner_of(body: bytes) -> str | None:
    """The partner a parked event belongs to, read off its body (for display only)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = data.get("partner_id") if isinstance(data, dict) else None
    return found if isinstance(found, str) and len(found) <= 64 else None


async def _lots(services: Services) -> list[dict[str, Any]]:
    """Each channel's parking lot, peeked (every message stays parked)."""
    lots = []
    for name, channel in sorted(services.registry.channels.items()):
        topology = channel.topology(services.settings.retry_delays)
        lot: dict[str, Any] = {"channel": name, "queue": topology.dead.name, "letters": [], "error": None}
        try:
            letters = await list_dead(services.broker, topology, PEEK)
        except (ShipcastError, aio_pika.exceptions.AMQPException, OSError, asyncio.TimeoutError) as exc:
            lot["error"] = f"its parking lot cannot be read now: {exc}"[:300]
        else:
            lot["letters"] = [{"event_id": letter.event_id, "target": letter.target, "reason": letter.reason,
                               "attempts": letter.attempts, "failed_at": _moment(letter.failed_at),
                               "first_failed_at": _moment(letter.first_failed_at), "last_error": letter.last_error,
                               "partner_id": _partner_of(letter.body)} for letter in letters]
        lots.append(lot)
    return lots


async def _queues_page(request: Request, person: Person, *, status_code: int = 200,
                       errors: dict[str, list[str]] | None = None) -> Response:
    services = services_of(request)
    rows: list[dict[str, Any]] = []
    unreachable = None
    try:
        rows = await queue_statuses(services.settings)
    except BrokerError as exc:  # unreachable, failing, or refusing shipcast's user
        unreachable = str(exc)
        log.warning("the Queues page has no numbers: %s", exc)
    dead_total = sum(row["ready"] + row["unacked"] for row in rows if row["role"] == "dead")
    return page(request, "operator_queues.html", person, title="Queues", status_code=status_code, rows=rows,
                unreachable=unreachable, dead_total=dead_total, lots=await _lots(services), peek=PEEK,
                errors=errors or {})


@router.get("/queues")
async def queues_page(request: Request, person: Person = Depends(operator)) -> Response:
    return await _queues_page(request, person)


@router.post("/queues/replay")
async def replay(request: Request, form: dict[str, str] = Depends(checked_form),
                 person: Person = Depends(operator)) -> Response:
    """Move parked messages back to their work queue, as ``shipcast dead replay``
    does: one channel's (``channel``) or every channel's (``*``), or only one
    event's (``event_id``)."""
    services = services_of(request)
    values, errors = _fields(form, "channel", "event_id")
    known = services.registry.channels
    if values["channel"] != "*" and values["channel"] not in known:
        errors.setdefault("channel", []).append(f"no channel {values['channel']!r}; installed: {', '.join(sorted(known))}")
    if errors:
        return await _queues_page(request, person, status_code=422, errors=errors)
    names = sorted(known) if values["channel"] == "*" else [values["channel"]]
    event_ids = {values["event_id"]} if values["event_id"] else None
    replayed: dict[str, int] = {}
    try:
        for name in names:
            topology = known[name].topology(services.settings.retry_delays)
            replayed[name] = await replay_dead(services.broker, topology, event_ids=event_ids)
    except BrokerError as exc:
        errors["replay"] = [f"RabbitMQ cannot be reached now ({exc}); "
                            f"replayed before it failed: {sum(replayed.values())}"]
        if replayed:
            await record(services, person.actor, "dead.replay", partner_id=None, subject=values["channel"],
                         after={"replayed": replayed, "failed": str(exc)[:300]})
        return await _queues_page(request, person, status_code=503, errors=errors)
    await record(services, person.actor, "dead.replay", partner_id=None,
                 subject=values["channel"] if values["channel"] != "*" else "every channel",
                 after={"replayed": replayed, **({"event_id": values["event_id"]} if event_ids else {})})
    total = sum(replayed.values())
    where = ", ".join(f"{count} into shipcast.{name}" for name, count in replayed.items() if count) or "nothing"
    return redirect(request, "/portal/operator/queues", f"Replayed {total} parked message{'s' * (total != 1)}: {where}.")


# -- operator events and the audit log -----------------------------------------


@router.get("/events")
async def events_page(request: Request, person: Person = Depends(operator)) -> Response:
    found = await services_of(request).store.list_operator_events(limit=200)
    events = []
    for event in found:
        data = event["body"].get("data") if isinstance(event["body"], dict) else None
        data = redact(data) if isinstance(data, dict) else {}
        detail = {key: _moment(value) for key, value in data.items()
                  if key not in ("channel", "partner_id", "endpoint_id", "address")}
        events.append({"id": event["id"], "type": event["type"], "at": event["at"], "sent_at": event["sent_at"],
                       "channel": data.get("channel"), "partner_id": data.get("partner_id"),
                       "endpoint_id": data.get("endpoint_id"), "address": data.get("address"), "detail": detail})
    return page(request, "operator_events.html", person, title="Operator events", events=events)


def _shown_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@router.get("/audit")
async def audit_page(request: Request, person: Person = Depends(operator),
                     partner: str = Query("", max_length=64, pattern=r"^([a-z0-9_-]{1,64})?$"),
                     action: str = Query("", max_length=64, pattern=r"^[a-z0-9_.-]*$"),
                     before: int | None = Query(None, ge=1, le=2**63 - 1)) -> Response:
    """Every partner's entries and the operator's own, newest first, a page at a time (keyset)."""
    store = services_of(request).store
    entries = await store.list_audit(partner or None, before_id=before, action=action or None, limit=AUDIT_PAGE)
    for entry in entries:
        entry["before_text"], entry["after_text"] = _shown_json(entry["before"]), _shown_json(entry["after"])
    partner_ids = sorted({p.id for p in await store.get_partners()} | ({partner} if partner else set()))
    query = {"partner": partner, "action": action}
    more = None
    if len(entries) == AUDIT_PAGE:
        more = urlencode({**{key: value for key, value in query.items() if value}, "before": entries[-1]["id"]})
    return page(request, "operator_audit.html", person, title="Audit log", entries=entries, partner=partner,
                action=action, partner_ids=partner_ids, more=more, first_page=before is None)

