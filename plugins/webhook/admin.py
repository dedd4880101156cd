"""Operations on partners' endpoints, shared by the partner API, the portal's
endpoint pages and the ``shipcast endpoints`` commands: find, describe,
validate, create, update, delete, disable, enable, reveal or rotate a
secret, send a test event. Each raises :class:`UnknownEndpoint`,
:class:`EndpointExists` or a :class:`~shipcast.exceptions.ConfigError`
naming the field that is wrong; each change is written to the audit log,
with who made it (never a secret).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import yarl
from marshmallow import RAISE, ValidationError

from shipcast import tracing
from shipcast.amqp.headers import event_message, resend_headers
from shipcast.amqp.topology import QUEUE_PREFIX
from shipcast.app.audit import Actor, record
from shipcast.app.reconcile import reconcile_bindings
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError, ShipcastError
from shipcast.model.catalog import validating
from shipcast.model.envelope import Event
from shipcast.model.examples import example
from shipcast.model.filters import unmatched_filter
from shipcast.model.json_schemas import Describer, JsonSchema, json_pattern
from shipcast.model.partners import Partner, _flatten, lone_surrogates
from shipcast.security.crypto import secret_box
from shipcast.security.signing import SECRET_PATTERN, generate_secret
from shipcast.store import attempt_stats

from .channel import EndpointSchema, WebhookChannel, strip_userinfo, valid_secrets, with_secret
from .headers import shown_auth, shown_headers

CHANNEL = WebhookChannel.name
#: The longest overlap a rotation may ask for: 30 days.
MAX_OVERLAP = 30 * 86400.0
#: Settings an update may clear (given as ``None``): the channel's defaults apply again (no
#: filter, no headers of its own, no authentication).
CLEARABLE = ("description", "rate_limit", "max_concurrency", "filter", "headers", "auth")
#: Where a field given as plaintext is stored encrypted, when that is another key.
STORED_AS = {"headers": "header_secrets"}


class UnknownEndpoint(ShipcastError):
    """No such partner, or no such endpoint for it."""


class EndpointExists(ShipcastError):
    """The partner has an endpoint of that id already."""


async def load(services: Services, partner_id: str) -> Partner:
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise UnknownEndpoint(f"no partner {partner_id!r}")
    return partner


def endpoints_of(partner: Partner) -> list[dict[str, Any]]:
    return [dict(e) for e in (partner.channels.get(CHANNEL) or {}).get("endpoints", [])]


def find(partner: Partner, endpoint_id: str) -> tuple[list[dict[str, Any]], int]:
    """The partner's endpoints, and where ``endpoint_id`` is among them."""
    found = endpoints_of(partner)
    for index, endpoint in enumerate(found):
        if endpoint["id"] == endpoint_id:
            return found, index
    raise UnknownEndpoint(f"partner {partner.id!r} has no endpoint {endpoint_id!r}")


def describe(services: Services, partner_id: str, endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """An endpoint as it is shown: its settings and health, never its secret
    (its own headers' values, password or token masked)."""
    key = (CHANNEL, partner_id, endpoint["id"])
    now = time.time()
    overlaps = [p["expires_at"] for p in endpoint.get("previous_secrets", ()) if p["expires_at"] > now]
    failing = services.partners.failing.get(key)
    return {
        "id": endpoint["id"], "url": str(strip_userinfo(endpoint["url"])), "events": endpoint.get("events", ["*"]),
        "url_credentials": bool(endpoint.get("userinfo_secret")),
        "description": endpoint.get("description"), "ordered": endpoint.get("ordered", False),
        "asymmetric": endpoint.get("asymmetric", False), "rate_limit": endpoint.get("rate_limit"),
        "max_concurrency": endpoint.get("max_concurrency"),
        "filter": endpoint.get("filter"), "headers": shown_headers(endpoint), "auth": shown_auth(endpoint),
        "disabled": services.partners.is_disabled(*key),
        "failing_since": failing.isoformat() if failing else None,
        "previous_secret_valid_until": datetime.fromtimestamp(max(overlaps), UTC).isoformat() if overlaps else None,
    }


#: How :func:`describe` shows an endpoint, for the API's documentation.
SHOWN: JsonSchema = {
    "type": "object", "description": "An endpoint: its settings and health, never its secret",
    "properties": {
        "id": {"type": "string"}, "url": {"type": "string", "description": "Without any credentials it carries"},
        "events": {"type": "array", "items": {"type": "string"}, "description": "Event types, or [\"*\"]"},
        "url_credentials": {"type": "boolean", "description": "Whether the URL was given with user:password@"},
        "description": {"type": ["string", "null"]}, "ordered": {"type": "boolean"},
        "asymmetric": {"type": "boolean"}, "rate_limit": {"type": ["number", "null"]},
        "max_concurrency": {"type": ["integer", "null"]},
        "filter": {"type": ["object", "null"], "description": "Its filter, as given"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Its own headers' names, each value masked"},
        "auth": {"type": ["object", "null"], "description": "Its authentication's type and user name, masked",
                 "properties": {"type": {"type": "string"}, "username": {"type": "string"},
                                "password": {"type": "string"}, "token": {"type": "string"}}},
        "disabled": {"type": "boolean"},
        "failing_since": {"type": ["string", "null"], "format": "date-time"},
        "previous_secret_valid_until": {"type": ["string", "null"], "format": "date-time",
                                        "description": "Until when a rotated-out secret still signs"}}}
SHOWN["required"] = list(SHOWN["properties"])
#: A registered endpoint: as shown, and its secret, this once.
REGISTERED: JsonSchema = {**SHOWN, "description": "The endpoint registered, and its secret",
                          "required": [*SHOWN["required"], "secret"],
                          "properties": {**SHOWN["properties"], "secret": {"type": "string"}}}
#: An endpoint's current secret, as :func:`current_secret` gives it.
SECRET: JsonSchema = {"type": "object", "required": ["secret"], "properties": {
    "secret": {"type": "string", "description": "whsec_ and base64: the key of v1 signatures"},
    "previous_secret_valid_until": {"type": ["string", "null"], "format": "date-time",
                                    "description": "Until when the secret it replaced still signs"}}}


def validate(services: Services, data: Any, *, partial: bool) -> dict[str, Any]:
    """An endpoint's fields as the channel's schema loads them (``partial``:
    an update, whose absent fields keep their values).

    :raises ConfigError: naming each field that is wrong.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("invalid endpoint", {"(body)": ["must be a JSON object"]})
    halves = lone_surrogates(data)
    if halves:
        raise ConfigError("invalid endpoint", {where: ["half a UTF-16 surrogate pair: not text"] for where in halves})
    try:
        with validating(services.registry.catalog):
            loaded: dict[str, Any] = EndpointSchema(unknown=RAISE, partial=partial).load(data)
    except ValidationError as exc:
        raise ConfigError("invalid endpoint", _flatten(exc.messages)) from exc
    return loaded


async def prepared(services: Services, partner_id: str, endpoint: dict[str, Any],
                   old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The endpoint as it is stored, through the channel's ``prepare``: its
    destination checked, its secret (kept, given or new) encrypted.

    :raises ConfigError: naming the field (``url``: why the destination is refused).
    """
    try:
        config = await WebhookChannel.prepare(services.registry, partner_id, {"endpoints": [endpoint]},
                                              {"endpoints": [old]} if old else None)
    except ConfigError as exc:
        raise ConfigError("refused", {loc.removeprefix("endpoints.0."): messages
                                      for loc, messages in exc.errors.items()}) from exc
    stored: dict[str, Any] = config["endpoints"][0]
    return stored


def new_id(partner: Partner, url: Any) -> str:
    """An id for an endpoint registered without one: its host's name, made
    unique among the partner's endpoints (``hooks-acme-com``, ``…-2``)."""
    try:
        host = yarl.URL(str(url)).host or ""
    except (ValueError, TypeError):
        host = ""
    base = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[:56].strip("-") or "endpoint"
    taken = {e["id"] for e in endpoints_of(partner)}
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    return candidate


async def create(services: Services, partner_id: str, body: Any, actor: Actor) -> tuple[dict[str, Any], str]:
    """Register an endpoint (without a ``secret``, one is generated): how it
    is shown, and its secret, the one time it is given back with it.

    :raises UnknownEndpoint: no such partner.
    :raises ConfigError: a field is wrong, or the destination is refused.
    :raises EndpointExists: the partner has an endpoint of that id.
    """
    partner = await load(services, partner_id)
    endpoint = validate(services, body, partial=False)
    found = endpoints_of(partner)
    if any(e["id"] == endpoint["id"] for e in found):
        raise EndpointExists(f"partner {partner_id!r} already has an endpoint {endpoint['id']!r}")
    stored = await prepared(services, partner_id, {**endpoint, "origin": "api"}, None)
    await services.store.enable_target(CHANNEL, partner_id, endpoint["id"])  # an old one of that id
    await save(services, partner, found + [stored])
    shown = describe(services, partner_id, stored)
    await record(services, actor, "endpoint.create", partner_id=partner_id, subject=stored["id"], after=shown)
    return shown, secret_box(services.settings).decrypt(stored["secret"])


async def update(services: Services, partner_id: str, endpoint_id: str, body: Any, actor: Actor) -> dict[str, Any]:
    """Change an endpoint's URL, events, description, ordering, signing,
    limits, filter, headers or authentication (a clearable setting given as
    ``None`` goes back to the default); it is re-enabled if it was disabled.
    Its id and secret are not changed here; headers, a password or a token
    given masked (or, in ``auth``, left out) keep their stored values, while
    the URL keeps its origin (see ``with_credentials``).

    :raises UnknownEndpoint: no such partner or endpoint.
    :raises ConfigError: a field is wrong, or the destination is refused.
    """
    if isinstance(body, Mapping) and ("id" in body or "secret" in body):
        raise ConfigError("invalid update", {key: ["cannot be changed here"] for key in ("id", "secret")
                                             if key in body})
    cleared = {key for key in CLEARABLE if isinstance(body, Mapping) and key in body and body[key] is None}
    given = {key: value for key, value in body.items() if key not in cleared} if isinstance(body, Mapping) else body
    changes = validate(services, given, partial=True)
    partner = await load(services, partner_id)
    found, index = find(partner, endpoint_id)
    old = found[index]
    before = describe(services, partner_id, old)
    # partial loading still fills defaults for absent fields: keep only those given
    replaced = {STORED_AS.get(key, key) for key in set(cleared) | set(given if isinstance(given, Mapping) else ())}
    plain = {key: value for key, value in old.items()
             if key not in ("secret", "previous_secrets") and key not in replaced}
    merged = {**plain, **{key: value for key, value in changes.items() if key in given}}
    if "filter" in given or "events" in given:  # the filter judged against the events it will see
        unmatched = unmatched_filter(merged, services.registry.event_types)
        if unmatched:
            raise ConfigError("invalid endpoint", unmatched)
    updated = await prepared(services, partner_id, merged, old)
    found[index] = updated
    await services.store.enable_target(CHANNEL, partner_id, endpoint_id)
    await save(services, partner, found)
    await services.partners.reload()
    after = describe(services, partner_id, updated)
    await record(services, actor, "endpoint.update", partner_id=partner_id, subject=endpoint_id,
                 before=before, after=after)
    return after


async def delete(services: Services, partner_id: str, endpoint_id: str, actor: Actor) -> None:
    """Remove an endpoint: nothing is sent to it any more."""
    partner = await load(services, partner_id)
    found, index = find(partner, endpoint_id)
    before = describe(services, partner_id, found[index])
    del found[index]
    await save(services, partner, found)
    await record(services, actor, "endpoint.delete", partner_id=partner_id, subject=endpoint_id, before=before)


async def save(services: Services, partner: Partner, found: list[dict[str, Any]]) -> None:
    """Store the partner with these endpoints, then make the bindings match."""
    channels = {name: dict(config) for name, config in partner.channels.items()}
    if found:
        channels[CHANNEL] = {**channels.get(CHANNEL, {}), "endpoints": found}
    else:
        channels.pop(CHANNEL, None)
    await services.store.put_partners([dataclasses.replace(partner, channels=channels, file_fields=partner.owned())],
                                      reenable=False)
    await services.announce_change()
    services.partners.invalidate()
    await reconcile_bindings(services)


async def current_secret(services: Services, partner_id: str, endpoint_id: str) -> dict[str, Any]:
    found, index = find(await load(services, partner_id), endpoint_id)
    return {"secret": valid_secrets(secret_box(services.settings), found[index])[0],
            "previous_secret_valid_until": describe(services, partner_id, found[index])[
                "previous_secret_valid_until"]}


async def reveal_secret(services: Services, partner_id: str, endpoint_id: str, actor: Actor) -> dict[str, Any]:
    """The endpoint's current secret, given to ``actor``: the audit log says
    who saw it (not what it is)."""
    shown = await current_secret(services, partner_id, endpoint_id)
    await record(services, actor, "endpoint.secret_reveal", partner_id=partner_id, subject=endpoint_id)
    return shown


def creation_schema(describer: Describer) -> JsonSchema:
    """What :func:`create` takes: an endpoint as the channel's schema loads it."""
    return describer.ref(EndpointSchema)


def update_schema(describer: Describer) -> JsonSchema:
    """What :func:`update` takes: any of an endpoint's fields but its id and
    secret, each clearable setting ``null`` too."""
    return describer.define("EndpointUpdate", {
        **describer.schema(EndpointSchema, partial=True, exclude=("id", "secret"), nullable=CLEARABLE),
        "description": "The fields to change; null for description, rate_limit or max_concurrency "
                       "goes back to the default"})


#: What a rotation may say: the new secret (else one is generated) and how long the old one keeps signing.
ROTATION_FIELDS = ("secret", "overlap_seconds")


def rotation_schema(describer: Describer) -> JsonSchema:
    """What :func:`rotate_secret` takes, from the checks it makes."""
    return describer.define("SecretRotation", {
        "type": "object", "additionalProperties": False,
        "description": "A new secret, or none for one generated; the old one keeps signing for overlap_seconds",
        "properties": {
            "secret": {"type": ["string", "null"], "pattern": json_pattern(SECRET_PATTERN.pattern),
                       "description": "The new secret (not the current one); absent or null: one is generated"},
            "overlap_seconds": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_OVERLAP,
                                "description": "Seconds the old secret keeps signing; absent or null: "
                                               "SHIPCAST_WEBHOOK_SECRET_OVERLAP (24 h)"}}})


async def rotate_secret(services: Services, partner_id: str, endpoint_id: str, secret: Any = None,
                        overlap: Any = None, *, actor: Actor) -> dict[str, Any]:
    """Replace an endpoint's secret with ``secret`` (or a new one); the old one
    keeps signing for ``overlap`` seconds (default ``SHIPCAST_WEBHOOK_SECRET_OVERLAP``)."""
    if secret is not None and (not isinstance(secret, str) or not SECRET_PATTERN.match(secret)):
        raise ConfigError("invalid rotation", {"secret": ["must look like whsec_<base64>"]})
    overlap = services.settings.webhook_secret_overlap if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not math.isfinite(overlap) \
            or not 0 <= overlap <= MAX_OVERLAP:
        raise ConfigError("invalid rotation", {"overlap_seconds": [f"must be seconds from 0 to {MAX_OVERLAP:.0f}"]})
    partner = await load(services, partner_id)
    found, index = find(partner, endpoint_id)
    box = secret_box(services.settings)
    if secret is not None and secret == box.decrypt(found[index]["secret"]):
        raise ConfigError("invalid rotation", {"secret": ["is the current secret already"]})
    before = describe(services, partner_id, found[index])["previous_secret_valid_until"]
    found[index] = with_secret(box, found[index], found[index], secret or generate_secret(), float(overlap))
    await save(services, partner, found)
    rotated = await current_secret(services, partner_id, endpoint_id)
    await record(services, actor, "endpoint.secret_rotate", partner_id=partner_id, subject=endpoint_id,
                 before={"previous_secret_valid_until": before},
                 after={"overlap_seconds": float(overlap), "given": secret is not None,
                        "previous_secret_valid_until": rotated["previous_secret_valid_until"]})
    return rotated


#: What a test send may say: the type of its sample event.
TEST_FIELDS = ("event_type",)


def test_send_schema(describer: Describer) -> JsonSchema:
    """What :func:`send_test` takes: a registered event type."""
    return describer.define("TestSend", {
        "type": "object", "additionalProperties": False,
        "properties": {"event_type": {"type": "string", "enum": list(describer.catalog.event_types),
                                      "default": "OFD",
                                      "description": "The sample event's type"}}})


async def send_test(services: Services, partner_id: str, endpoint_id: str, event_type: Any = "OFD", *,
                    actor: Actor) -> Event:
    """Send a realistic sample event of ``event_type`` to this endpoint only,
    whatever its event filter; it is archived, so its message can be followed."""
    known = services.registry.event_types
    if event_type not in known:
        raise ConfigError("invalid test", {"event_type": [f"unknown; known: {', '.join(known)}"]})
    find(await load(services, partner_id), endpoint_id)
    event = example(event_type, known, partner_id=partner_id, order_id=f"TEST-{int(time.time() * 1000) % 10**8}")
    await services.store.save_events([event])
    queue = f"{QUEUE_PREFIX}{CHANNEL}"
    with tracing.sent_again(queue, "test", event.event_id, {
            **tracing.event_attributes(event), tracing.CHANNEL: CHANNEL, tracing.TARGET: endpoint_id}):
        await services.broker.publish(event_message(event, headers=resend_headers(endpoint_id)), queue, exchange="")
    await record(services, actor, "endpoint.test", partner_id=partner_id, subject=endpoint_id,
                 after={"event_id": event.event_id, "event_type": event.event_type})
    return event


async def enable(services: Services, partner_id: str, endpoint_id: str, actor: Actor) -> dict[str, Any]:
    """Re-enable an endpoint that was disabled (by 410 Gone, long failure, or by hand)."""
    found, index = find(await load(services, partner_id), endpoint_id)
    await services.partners.reload(if_older_than=1.0)
    before = describe(services, partner_id, found[index])
    await services.store.enable_target(CHANNEL, partner_id, endpoint_id)
    await services.announce_change()
    await services.partners.reload()
    after = describe(services, partner_id, found[index])
    await record(services, actor, "endpoint.enable", partner_id=partner_id, subject=endpoint_id,
                 before=_state(before), after=_state(after))
    return after


async def disable(services: Services, partner_id: str, endpoint_id: str, actor: Actor) -> dict[str, Any]:
    """Stop sending to an endpoint until it is enabled (or updated, or its
    partner applied again); the reason stored says who disabled it."""
    found, index = find(await load(services, partner_id), endpoint_id)
    await services.partners.reload(if_older_than=1.0)
    before = describe(services, partner_id, found[index])
    await services.store.disable_target(CHANNEL, partner_id, endpoint_id,
                                        f"disabled by {actor.name} through the {actor.via}")
    await services.announce_change()
    await services.partners.reload()
    after = describe(services, partner_id, found[index])
    await record(services, actor, "endpoint.disable", partner_id=partner_id, subject=endpoint_id,
                 before=_state(before), after=_state(after))
    return after


def _state(shown: Mapping[str, Any]) -> dict[str, Any]:
    """What disabling or enabling changes, for the audit log."""
    return {"disabled": shown["disabled"], "failing_since": shown["failing_since"]}


async def stats(services: Services, partner_id: str, endpoint_id: str, since: datetime | None = None,
                limit: int = 10000) -> dict[str, Any]:
    """Success rate, latency percentiles and the last error over the
    endpoint's attempts since ``since`` (default: the last 24 hours)."""
    find(await load(services, partner_id), endpoint_id)
    since = since or datetime.now(UTC) - timedelta(days=1)
    rows = await services.store.list_attempts(partner_id=partner_id, channel=CHANNEL, target=endpoint_id,
                                              since=since, limit=limit)
    return {"endpoint_id": endpoint_id, "since": since.isoformat(), **attempt_stats(rows),
            "disabled": services.partners.is_disabled(CHANNEL, partner_id, endpoint_id)}
