"""A partner's own pages in the portal: its overview (each target's health
and what to do next), its deliveries (searched, paged by key, each message's
attempts arriving live, sent again), the event catalog, its API tokens and
its audit log. Each reads and changes through the functions the partner API
calls (:mod:`shipcast.app.messages`, :mod:`shipcast.app.tokens`), so no rule
is written twice.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from shipcast.app.messages import message, recover, resend, resend_quota
from shipcast.app.paging import decode_cursor, encode_cursor, parse_when
from shipcast.app.people import Person
from shipcast.app.portal.session import checked_form, member, partner_admin
from shipcast.app.portal.web import fragment, page, redirect
from shipcast.app.services import Services, services_of
from shipcast.app.tokens import NAME_MAX, create_token, revoke_token
from shipcast.exceptions import ConfigError
from shipcast.model.envelope import EVENT_ID_PATTERN, json_schema
from shipcast.model.event_types import GROUPS, EventType
from shipcast.model.examples import example
from shipcast.model.outcomes import DeliveryStatus, Outcome
from shipcast.security.redact import redact
from shipcast.settings import Settings
from shipcast.store import attempt_stats
from shipcast.store.deliveries import DeliveryKey, delivery_key

router = APIRouter(prefix="/portal/p/{partner_id}", include_in_schema=False)

#: Rows on one page of the deliveries and of the audit log.
PAGE = 25
#: The overview's window.
DAY = timedelta(days=1)
#: The most attempts of one target the overview reads for its figures.
STATS_ROWS = 10_000
#: The channel whose endpoints a partner configures itself: the overview lists
#: them even before their first attempt.
WEBHOOK = "webhook"
#: What the consumer records for a delivery its worker's open circuit breaker
#: kept back (``Verdict("circuit_open", …)`` in ``delivery/isolation.py``): an
#: attempt whose error starts so (after "retries exhausted after N attempts: "
#: once retries are spent), with no status and no connection made.
CIRCUIT_REFUSED = "circuit open: "
#: Delivery statuses after which nothing more happens to a delivery by itself.
FINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.DEAD, DeliveryStatus.SKIPPED})

_EVENT_ID = re.compile(EVENT_ID_PATTERN)
T = TypeVar("T")


def _base(partner_id: str) -> str:
    return f"/portal/p/{partner_id}"


# -- the overview ---------------------------------------------------------------


@dataclass
class Health:
    """One target's last 24 hours, as the overview shows it."""

    channel: str
    target: str
    address: str | None
    #: A webhook endpoint of the partner's config (else a target seen only in the attempt log).
    configured: bool
    stats: dict[str, Any]
    circuit: dict[str, Any]
    disabled: bool
    failing_since: datetime | None
    #: The newest attempt that was not a delivery, when the newest attempt of all is one.
    failure: dict[str, Any] | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def troubled(self) -> bool:
        return self.disabled or self.failing_since is not None or self.failure is not None


def circuit_state(rows: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What the attempt log says of a target's circuit breaker.

    Breakers live in each worker's memory; the store has only what they did.
    The newest attempt tells: one kept back by an open circuit means a
    worker's breaker was open then; one that reached the target and was
    delivered means it was closed (or the probe closed it); one that reached
    the target and failed may have opened it, which the log cannot say.
    ``rows`` are the target's attempts, newest first."""
    newest = next((row for row in rows if row["outcome"] != Outcome.SKIPPED), None)
    if newest is None:
        return {"state": "unknown", "at": None, "why": "no attempt in the last 24 hours"}
    if CIRCUIT_REFUSED in (newest["error"] or ""):
        return {"state": "open", "at": newest["at"],
                "why": f"the newest attempt was kept back by a worker's open circuit breaker "
                       f"({newest['error']}); the worker lets one probe through every "
                       f"{settings.breaker_cooldown:g} s, and a delivered probe closes it"}
    if newest["outcome"] == Outcome.DELIVERED:
        return {"state": "closed", "at": newest["at"], "why": "the newest attempt reached the target and was delivered"}
    return {"state": "unknown", "at": newest["at"],
            "why": f"the newest attempt reached the target and failed; a worker's breaker opens once "
                   f"{settings.breaker_failure_ratio:.0%} of its last {settings.breaker_window} requests "
                   f"(at least {settings.breaker_min_requests}) failed, which the log cannot tell"}


def advice_for(health: Health, settings: Settings) -> list[str]:
    """Plain words on what to do about one target, from what is known of it."""
    name = f"{health.channel} target {health.target}" if health.channel != WEBHOOK else f"endpoint {health.target}"
    found: list[str] = []
    if health.disabled:
        found.append(f"The {name} is disabled: nothing is sent to it. Fix what made it fail (below), then "
                     f"enable it on the Endpoints page; then use Retry all failed on the Deliveries page.")
    failure = health.failure
    if failure is not None:
        status, error = failure.get("status"), str(failure.get("error") or "")
        lowered = error.lower()
        if CIRCUIT_REFUSED in error:
            found.append(f"Deliveries to the {name} are paused by its circuit breaker after repeated failures; "
                         f"they go on by themselves once a probe succeeds. Look at the failures before it on the "
                         f"Deliveries page.")
        elif status in (401, 403):
            found.append(f"The {name} answered HTTP {status}: your server refuses shipcast's requests. Check your "
                         f"signature verification (the endpoint's current secret, the webhook-id, "
                         f"webhook-timestamp and raw body signed) and any authentication in front of it.")
        elif status == 410:
            found.append(f"The {name} answered HTTP 410 Gone, which disables it. If that was a mistake, make it "
                         f"answer 2xx, then enable it on the Endpoints page.")
        elif status == 429:
            found.append(f"The {name} answered HTTP 429: it is limiting shipcast. Give the endpoint a rate "
                         f"limit it can take on the Endpoints page, or raise your server's limit.")
        elif isinstance(status, int) and status >= 500:
            found.append(f"The {name} answered HTTP {status}: your server is erroring. Look at its logs and the "
                         f"response shipcast got (Deliveries page); failed messages are retried, and those that "
                         f"ran out of retries can be sent again.")
        elif isinstance(status, int) and 300 <= status < 400:
            found.append(f"The {name} answered with a redirect (HTTP {status}), which shipcast does not follow: "
                         f"set the endpoint's URL to where it redirects.")
        elif isinstance(status, int) and 400 <= status < 500:
            found.append(f"The {name} answered HTTP {status}: your server rejects the request. Answer 2xx once "
                         f"you have accepted the event (the response shipcast got is on the Deliveries page).")
        elif "timed out" in lowered or "took longer than" in lowered:
            found.append(f"The {name} did not answer in time. Answer within SHIPCAST_WEBHOOK_TIMEOUT "
                         f"({settings.webhook_timeout:g} s): queue the work and answer 2xx at once.")
        elif "destination refused" in lowered:
            found.append(f"shipcast may not send to the {name}'s address ({error}). Use a public address.")
        elif any(word in lowered for word in ("dns", "name or service not known", "nodename", "getaddrinfo",
                                               "name resolution", "no address")):
            found.append(f"The {name}'s host name does not resolve (DNS): the host is unreachable. Check the "
                         f"URL's host name.")
        elif "connection failed" in lowered or "refused" in lowered or "unreachable" in lowered:
            found.append(f"shipcast cannot connect to the {name}: the host is unreachable or nothing listens "
                         f"on that port (connection refused). Check the URL and that your server is up.")
        else:
            found.append(f"The {name}'s latest attempt failed: {error or 'see the Deliveries page'}.")
    elif health.failing_since is not None:
        found.append(f"The {name} has been failing since {health.failing_since:%Y-%m-%d %H:%M} UTC without a "
                     f"success; see its latest error on the Deliveries page.")
    return found


async def overview_facts(services: Services, partner_id: str) -> dict[str, Any]:
    """Every target's health over the last day, the deliveries by status, and advice."""
    store, settings = services.store, services.settings
    await services.partners.get(partner_id)  # the cache's disabled and failing targets, reloaded if stale
    partner = await store.get_partner(partner_id)
    since = datetime.now(UTC) - DAY
    endpoints = list(((partner.channels.get(WEBHOOK) or {}).get("endpoints") or []) if partner else [])
    targets: dict[tuple[str, str], str | None] = {(WEBHOOK, str(e["id"])): str(redact(e.get("url")))
                                                  for e in endpoints}
    configured = set(targets)
    for key in await store.attempted_targets(partner_id, since):
        targets.setdefault(key, None)
    healths = []
    for (channel, target), address in targets.items():
        rows = await store.list_attempts(partner_id=partner_id, channel=channel, target=target, since=since,
                                         limit=STATS_ROWS)
        sent = [row for row in rows if row["outcome"] != Outcome.SKIPPED]
        health = Health(channel, target, address, (channel, target) in configured,
                        attempt_stats(rows), circuit_state(rows, settings),
                        services.partners.is_disabled(channel, partner_id, target),
                        services.partners.failing.get((channel, partner_id, target)))
        if sent and sent[0]["outcome"] != Outcome.DELIVERED:
            health.failure = sent[0]
        if health.address is None and sent:
            health.address = str(redact(rows[0].get("address") or "")) or None
        health.advice = advice_for(health, settings)
        healths.append(health)
    counts = await store.delivery_counts(partner_id, since)
    advice = [line for health in healths for line in health.advice]
    if not endpoints:
        advice.insert(0, "This partner has no webhook endpoint yet: add one on the Endpoints page, then send it "
                         "a test event.")
    if counts.get(DeliveryStatus.DEAD) and not any(h.troubled for h in healths):
        advice.append(f"{counts[DeliveryStatus.DEAD]} deliveries failed for good in the last 24 hours. If their "
                      f"cause is fixed, send them again with Retry all failed on the Deliveries page.")
    return {"healths": healths, "counts": {status.value: counts.get(status.value, 0) for status in DeliveryStatus},
            "advice": advice, "since": since, "endpoint_count": len(endpoints)}


@router.get("/")
async def overview(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    facts = await overview_facts(services_of(request), partner_id)
    return page(request, "partner_overview.html", person, title="Overview", partner_id=partner_id,
                base=_base(partner_id), cooldown=services_of(request).settings.breaker_cooldown, **facts)


# -- deliveries -----------------------------------------------------------------


#: The search form's fields, each bounded.
SEARCH_FIELDS = {"order_id": 100, "event_id": 100, "event_type": 32, "status": 16, "channel": 64,
                 "endpoint": 200, "since": 40, "until": 40}


@dataclass
class Search:
    """The deliveries search as typed (``values``), as understood
    (``filters``), where its page starts, and what is wrong with it."""

    values: dict[str, str]
    filters: dict[str, Any]
    after: DeliveryKey | None
    errors: dict[str, list[str]]


def parse_search(params: Mapping[str, str], services: Services) -> Search:
    """Every query parameter checked, each error named by its field."""
    values = {name: str(params.get(name) or "").strip() for name in SEARCH_FIELDS}
    errors: dict[str, list[str]] = {}
    filters: dict[str, Any] = {}
    registry = services.registry
    for name, longest in SEARCH_FIELDS.items():
        value = values[name]
        if not value:
            continue
        if len(value) > longest:
            errors[name] = [f"at most {longest} characters"]
            values[name] = value[:longest]
            continue
        if "\x00" in value:
            errors[name] = ["holds a NUL character, which is not text"]
        elif name == "event_id" and not _EVENT_ID.match(value):
            errors[name] = ["an event id has letters, digits and _ . : - only"]
        elif name == "event_type" and value not in registry.event_types:
            errors[name] = [f"unknown event type; known: {', '.join(registry.event_types)}"]
        elif name == "status" and value not in {status.value for status in DeliveryStatus}:
            errors[name] = [f"must be one of {', '.join(s.value for s in DeliveryStatus)}"]
        elif name == "channel" and value not in registry.channels:
            errors[name] = [f"unknown channel; installed: {', '.join(sorted(registry.channels))}"]
        elif name in ("since", "until"):
            try:
                filters[name] = parse_when(value)
            except ValueError:
                errors[name] = ["must be a date and time (UTC), like 2026-05-01T09:30"]
        else:
            filters["target" if name == "endpoint" else name] = value
    if "since" in filters and "until" in filters and filters["until"] <= filters["since"]:
        errors.setdefault("until", []).append("must be later than “since”")
    after = None
    before = str(params.get("before") or "")
    if before:
        try:
            after = decode_cursor(before)
        except ValueError:
            errors["before"] = ["this page's link is damaged: start again from the newest deliveries"]
    return Search(values, filters, after, errors)


async def messages_page(request: Request, partner_id: str, person: Person, *,
                        action_errors: dict[str, list[str]] | None = None,
                        action_values: dict[str, str] | None = None, status_code: int = 200) -> Response:
    services = services_of(request)
    search = parse_search(request.query_params, services)
    rows: list[dict[str, Any]] = []
    older = None
    if not search.errors:
        found = await services.store.page_deliveries(partner_id, after=search.after, limit=PAGE + 1,
                                                     **search.filters)
        rows = found[:PAGE]
        if len(found) > PAGE:
            kept = {name: value for name, value in search.values.items() if value}
            older = f"{_base(partner_id)}/messages?{urlencode({**kept, 'before': encode_cursor(delivery_key(rows[-1]))})}"
    searched = {name: value for name, value in search.values.items() if value}
    return page(request, "partner_messages.html", person, title="Deliveries", partner_id=partner_id,
                status_code=422 if search.errors and status_code == 200 else status_code,
                base=_base(partner_id), rows=rows, older=older, values=search.values, errors=search.errors,
                paged=search.after is not None, searched=bool(searched),
                event_types=list(services.registry.event_types), statuses=[s.value for s in DeliveryStatus],
                channels=sorted(services.registry.channels), may_change=person.may_change(partner_id),
                action_errors=action_errors or {}, action_values=action_values or {})


@router.get("/messages")
async def messages(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    return await messages_page(request, partner_id, person)


def _sent_notice(done: int, remaining: int, what: str) -> str:
    notice = f"{done} {what} sent again." if done else f"No {what} to send again."
    if remaining:
        notice += f" {remaining} more matched beyond this hour's quota: try again later."
    return notice


async def _quota_spent(sending: Awaitable[T]) -> tuple[T | None, str | None]:
    """Await a sending; a spent quota becomes words for a notice rather than an error page."""
    try:
        return await sending, None
    except HTTPException as exc:
        if exc.status_code != 429:
            raise
        return None, f"Nothing was sent again: {exc.detail}."


@router.post("/messages/retry-failed")
async def retry_failed(partner_id: str, request: Request, person: Person = Depends(partner_admin),
                       form: dict[str, str] = Depends(checked_form)) -> Response:
    """Send again every delivery of this partner that failed for good."""
    done, spent = await _quota_spent(recover(services_of(request), resend_quota(request), partner_id,
                                             person.actor, since=None))
    return redirect(request, f"{_base(partner_id)}/messages",
                    _sent_notice(done.recovered, done.remaining, "failed messages") if done else spent)


@router.post("/messages/recover")
async def recover_since(partner_id: str, request: Request, person: Person = Depends(partner_admin),
                        form: dict[str, str] = Depends(checked_form)) -> Response:
    """Send again every delivery that failed for good since a time."""
    typed = (form.get("recover_since") or "").strip()
    errors: dict[str, list[str]] = {}
    since = None
    if not typed:
        errors["recover_since"] = ["say since when: a date and time (UTC)"]
    elif len(typed) > 40:
        errors["recover_since"] = ["at most 40 characters"]
        typed = typed[:40]
    else:
        try:
            since = parse_when(typed)
        except ValueError:
            errors["recover_since"] = ["must be a date and time (UTC), like 2026-05-01T09:30"]
    if since is not None and since > datetime.now(UTC):
        errors["recover_since"] = ["is in the future: nothing failed since then yet"]
    if errors or since is None:
        return await messages_page(request, partner_id, person, action_errors=errors,
                                   action_values={"recover_since": typed}, status_code=422)
    done, spent = await _quota_spent(recover(services_of(request), resend_quota(request), partner_id,
                                             person.actor, since=since))
    return redirect(request, f"{_base(partner_id)}/messages",
                    _sent_notice(done.recovered, done.remaining, f"messages failed since {since:%Y-%m-%d %H:%M} UTC")
                    if done else spent)


def _attempt_view(row: dict[str, Any]) -> dict[str, Any]:
    """An attempt as shown: its request's URL and headers without credentials."""
    request = row.get("request")
    if isinstance(request, dict):
        request = {"method": request.get("method"), "url": redact(request.get("url")),
                   "headers": redact(dict(request.get("headers") or {}))}
    else:
        request = None
    return {**row, "request": request}


#: How long an archived event may go without a delivery before its page stops waiting for one.
UNDELIVERED_AFTER = timedelta(seconds=60)


def _message_context(found: dict[str, Any], watch: int) -> dict[str, Any]:
    rows = found["deliveries"]
    attempts = [_attempt_view(row) for row in found["attempts"]]
    stored_at = found.get("stored_at")
    undelivered = not rows and stored_at is not None and datetime.now(UTC) - stored_at > UNDELIVERED_AFTER
    final = undelivered or (bool(rows) and all(row["status"] in FINAL for row in rows) and len(attempts) > watch)
    return {"deliveries": rows, "attempts": attempts, "final": final, "watch": watch, "undelivered": undelivered}


def _watch(request: Request) -> int:
    """After a resend, the page watches for attempts beyond the ones it had."""
    value = request.query_params.get("watch") or ""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else -1


async def _message(request: Request, partner_id: str, event_id: str) -> dict[str, Any]:
    if len(event_id) > 100:
        raise HTTPException(404, "no such message")
    found = await message(services_of(request).store, partner_id, event_id)
    if found is None:
        raise HTTPException(404, "no such message")
    return found


@router.get("/messages/{event_id}")
async def message_page(partner_id: str, event_id: str, request: Request,
                       person: Person = Depends(member)) -> Response:
    found = await _message(request, partner_id, event_id)
    event = found["event"]
    body = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode() if event is not None else None
    watch = _watch(request)
    return page(request, "partner_message.html", person, title=f"Message {event_id}", partner_id=partner_id,
                base=_base(partner_id), event_id=event_id, event=event, body=body,
                may_change=person.may_change(partner_id),
                live_url=f"{_base(partner_id)}/messages/{event_id}/attempts"
                         + (f"?watch={watch}" if watch >= 0 else ""),
                **_message_context(found, watch))


@router.get("/messages/{event_id}/attempts")
async def message_attempts(partner_id: str, event_id: str, request: Request,
                           person: Person = Depends(member)) -> Response:
    """The message's deliveries and attempts, for the page's live part."""
    found = await _message(request, partner_id, event_id)
    watch = _watch(request)
    return fragment(request, "partner_attempts.html", person=person, partner_id=partner_id, event_id=event_id,
                    base=_base(partner_id), may_change=person.may_change(partner_id),
                    live_url=f"{_base(partner_id)}/messages/{event_id}/attempts"
                             + (f"?watch={watch}" if watch >= 0 else ""),
                    **_message_context(found, watch))


@router.post("/messages/{event_id}/resend")
async def resend_message(partner_id: str, event_id: str, request: Request, person: Person = Depends(partner_admin),
                         form: dict[str, str] = Depends(checked_form)) -> Response:
    """Send one message again: to one of its targets, or to every one."""
    services = services_of(request)
    found = await _message(request, partner_id, event_id)
    channel, target = (form.get("channel") or "").strip(), (form.get("endpoint") or "").strip()
    if (channel and channel not in services.registry.channels) or len(target) > 200:
        raise HTTPException(404, "no such delivery")
    if target and not any(row["target"] == target and (not channel or row["channel"] == channel)
                          for row in found["deliveries"]):
        raise HTTPException(404, "no such delivery")
    count, spent = await _quota_spent(resend(services, resend_quota(request), partner_id, event_id, person.actor,
                                             endpoint=target or None, channel=channel or None))
    if spent is None and count is None:
        raise HTTPException(404, "no such delivery")
    page_url = f"{_base(partner_id)}/messages/{event_id}"
    if spent:
        return redirect(request, page_url, spent)
    if not count:
        return redirect(request, page_url, "Nothing was sent again: the event is no longer archived.")
    # The page stays live until an attempt beyond those it has now is logged.
    where = f" to {target}" if target else ""
    wanted = sum(1 for row in found["deliveries"]
                 if (not target or row["target"] == target) and (not channel or row["channel"] == channel))
    if count < wanted:  # the quota granted fewer than the targets asked for
        return redirect(request, f"{page_url}?watch={len(found['attempts'])}",
                        f"Sent again to {count} of its {wanted} targets: the rest are beyond this hour's quota "
                        f"of messages sent again; try again later. Watch its attempts below.")
    return redirect(request, f"{page_url}?watch={len(found['attempts'])}", f"Sent again{where}: watch its attempts below.")


# -- the event catalog ----------------------------------------------------------


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[1]] if isinstance(ref, str) else node


def _split_null(node: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The node without its ``null`` alternative, and whether it had one."""
    options = node.get("anyOf")
    if isinstance(options, list):
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1 and len(kept) < len(options):
            return {**{k: v for k, v in node.items() if k != "anyOf"}, **kept[0]}, True
    return node, False


def _type_of(node: Mapping[str, Any]) -> str:
    if "const" in node:
        return f"string, always {orjson.dumps(node['const']).decode()}"
    if "enum" in node:
        return "one of " + ", ".join(str(value) for value in node["enum"])
    kind = str(node.get("type", "object" if "properties" in node else "any"))
    if "format" in node:
        kind += f" ({node['format']})"
    return kind


def _rules(node: Mapping[str, Any]) -> str:
    """The constraints of a field, in words."""
    said = []
    if "minLength" in node or "maxLength" in node:
        said.append(f"{node.get('minLength', 0)}–{node['maxLength']} characters" if "maxLength" in node
                    else f"at least {node['minLength']} characters")
    if "minimum" in node and "maximum" in node:
        said.append(f"from {node['minimum']} to {node['maximum']}")
    elif "minimum" in node or "maximum" in node:
        said.append(f"at least {node['minimum']}" if "minimum" in node else f"at most {node['maximum']}")
    if "pattern" in node:
        said.append(f"matches {node['pattern']}")
    if "default" in node and node["default"] is not None:
        said.append(f"default {orjson.dumps(node['default']).decode()}")
    return "; ".join(said)


def field_rows(schema: Mapping[str, Any], row: EventType) -> list[dict[str, str]]:
    """The field table of one event type, from its JSON Schema (:func:`type_schema`):
    each field's path, type, whether it is present, and what it means."""
    defs = schema.get("$defs", {})
    found: list[dict[str, str]] = []

    def walk(properties: Mapping[str, Any], required: list[str], prefix: str, top: bool) -> None:
        for name, raw in properties.items():
            node, nullable = _split_null(raw)
            node = {**_resolve(node, defs), **{k: v for k, v in node.items() if k != "$ref"}}
            path = f"{prefix}{name}"
            if top and name in GROUPS:
                presence = ("required" if name in row.required else "always null" if name in row.forbidden
                            else "optional (may be null)")
            elif name in required and not nullable:
                presence = "required"
            elif nullable:
                presence = "optional (may be null)"
            else:
                presence = "always present (has a default)"
            description = str(node.get("description") or "").split("\n\n")[0].replace("\n", " ").replace("``", "")
            found.append({"path": path, "type": _type_of(node), "presence": presence,
                          "description": description, "rules": _rules(node)})
            if presence != "always null" and isinstance(node.get("properties"), dict):
                walk(node["properties"], list(node.get("required", [])), f"{path}.", False)

    walk(schema["properties"], list(schema.get("required", [])), "", True)
    return found


def type_schema(schema: Mapping[str, Any], row: EventType) -> dict[str, Any]:
    """The envelope's JSON Schema narrowed to one event type: its type fixed,
    its row's groups required or null, only the definitions it uses."""
    narrowed = copy.deepcopy(dict(schema))
    narrowed["title"] = f"shipcast {row.name} event"
    narrowed["description"] = row.description
    narrowed.pop("allOf", None)
    properties = narrowed["properties"]
    properties["event_type"] = {k: v for k, v in properties["event_type"].items() if k != "enum"} | {
        "const": row.name}
    for group in GROUPS:
        if group in row.forbidden:
            properties[group] = {"type": "null"}
        elif group in row.required:
            properties[group] = dict(_split_null(properties[group])[0])
            properties[group].pop("default", None)
    used: set[str] = set()

    def refs(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.rsplit("/", 1)[1] not in used:
                used.add(ref.rsplit("/", 1)[1])
                refs(narrowed["$defs"][ref.rsplit("/", 1)[1]])
            for value in node.values():
                refs(value)
        elif isinstance(node, list):
            for value in node:
                refs(value)

    refs(properties)
    narrowed["$defs"] = {name: value for name, value in narrowed.get("$defs", {}).items() if name in used}
    return narrowed


@router.get("/catalog")
async def catalog(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    types = services_of(request).registry.event_types
    rows = [{"name": row.name, "description": row.description, "required": sorted(row.required),
             "null": [g for g in GROUPS if g in row.forbidden]} for row in types.values()]
    return page(request, "partner_catalog.html", person, title="Event catalog", partner_id=partner_id,
                base=_base(partner_id), types=rows)


@router.get("/catalog/{event_type}")
async def catalog_type(partner_id: str, event_type: str, request: Request,
                       person: Person = Depends(member)) -> Response:
    types = services_of(request).registry.event_types
    if event_type not in types:
        raise HTTPException(404, "no such event type")
    row = types[event_type]
    schema = type_schema(json_schema(types), row)
    sample = example(event_type, types, partner_id=partner_id)
    return page(request, "partner_catalog_type.html", person, title=f"Event type {event_type}",
                partner_id=partner_id, base=_base(partner_id), row=row, fields=field_rows(schema, row),
                groups=[{"name": g, "presence": "required" if g in row.required else
                         "always null" if g in row.forbidden else "optional (may be null)"} for g in GROUPS],
                null_groups=[g for g in GROUPS if g in row.forbidden],
                schema=orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode(),
                example=orjson.dumps(orjson.loads(sample.to_json()), option=orjson.OPT_INDENT_2).decode())


# -- API tokens -----------------------------------------------------------------


async def tokens_page(request: Request, partner_id: str, person: Person, *, made: dict[str, str] | None = None,
                      errors: dict[str, list[str]] | None = None, name: str = "",
                      status_code: int = 200) -> Response:
    listed = await services_of(request).store.list_partner_tokens(partner_id)
    return page(request, "partner_tokens.html", person, title="API tokens", partner_id=partner_id,
                base=_base(partner_id), tokens=listed, made=made, errors=errors or {}, name=name,
                name_max=NAME_MAX, may_change=person.may_change(partner_id), status_code=status_code,
                api_url=services_of(request).settings.public_url.rstrip("/"))


@router.get("/tokens")
async def tokens(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    return await tokens_page(request, partner_id, person)


@router.post("/tokens")
async def make_token(partner_id: str, request: Request, person: Person = Depends(partner_admin),
                     form: dict[str, str] = Depends(checked_form)) -> Response:
    """A new token, shown on this one answer only (never stored but as a hash)."""
    name = form.get("name") or ""
    try:
        made = await create_token(services_of(request), partner_id, name[:NAME_MAX * 2], person.actor)
    except ConfigError as exc:
        return await tokens_page(request, partner_id, person, errors={k: list(v) for k, v in exc.errors.items()},
                                 name=name[:NAME_MAX * 2], status_code=422)
    return await tokens_page(request, partner_id, person, made=made)


@router.post("/tokens/{token_id}/revoke")
async def drop_token(partner_id: str, token_id: str, request: Request, person: Person = Depends(partner_admin),
                     form: dict[str, str] = Depends(checked_form)) -> Response:
    if not await revoke_token(services_of(request), partner_id, token_id[:100], person.actor):
        raise HTTPException(404, "no such token")
    return redirect(request, f"{_base(partner_id)}/tokens", f"Token {token_id} revoked: it no longer opens the API.")


# -- the audit log --------------------------------------------------------------


def changes(before: Any, after: Any) -> list[str]:
    """What a change changed, key by key, in words (values are in the JSON beside)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    said = [f"added {key}" for key in after if key not in before]
    said += [f"removed {key}" for key in before if key not in after]
    said += [f"changed {key}" for key in before if key in after and before[key] != after[key]]
    return said


def _pretty(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


@router.get("/audit")
async def audit(partner_id: str, request: Request, person: Person = Depends(member)) -> Response:
    typed = request.query_params.get("before") or ""
    before_id = int(typed) if typed.isascii() and typed.isdigit() and len(typed) <= 18 else None
    error = "this page's link is damaged: start again from the newest entries" \
        if typed and before_id is None else None
    found = [] if error else await services_of(request).store.list_audit(partner_id, before_id=before_id,
                                                                         limit=PAGE + 1)
    entries = [{**entry, "before_json": _pretty(entry["before"]), "after_json": _pretty(entry["after"]),
                "changes": changes(entry["before"], entry["after"])} for entry in found[:PAGE]]
    older = f"{_base(partner_id)}/audit?before={entries[-1]['id']}" if len(found) > PAGE else None
    return page(request, "partner_audit.html", person, title="Audit log", partner_id=partner_id,
                base=_base(partner_id), entries=entries, older=older, paged=before_id is not None, error=error,
                status_code=422 if error else 200)
