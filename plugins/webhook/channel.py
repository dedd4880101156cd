"""The webhook channel: signed Standard Webhooks to partners' endpoints, and
the schema of its config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import aiohttp
import yarl
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast import tracing
from shipcast.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from shipcast.model.catalog import current
from shipcast.model.envelope import Event
from shipcast.model.filters import CompiledFilters, FilterField, unmatched_filter
from shipcast.model.partners import Partner
from shipcast.plugin.channel import (
    Channel,
    Delivered,
    EventList,
    Target,
    filtered_target,
    filtered_targets,
    routing_keys,
)
from shipcast.plugin.context import ChannelContext, Registered
from shipcast.retry_after import parse_retry_after
from shipcast.security.crypto import SecretBox, secret_box

# Shared with the AMQP destinations; named here too, where the webhook's modules have always found them.
from shipcast.security.endpoint_secrets import masked_userinfo as masked_userinfo
from shipcast.security.endpoint_secrets import origin
from shipcast.security.endpoint_secrets import strip_userinfo as strip_userinfo
from shipcast.security.endpoint_secrets import userinfo as _userinfo
from shipcast.security.endpoint_secrets import valid_secrets as valid_secrets
from shipcast.security.endpoint_secrets import with_secret as with_secret
from shipcast.security.endpoint_secrets import with_userinfo as with_userinfo
from shipcast.security.signing import SECRET_PATTERN, sign, sign_ed25519

from .guard import GuardedResolver, Network, check_destination, find_refusal, is_receiver, static_refusal
from .headers import (
    AuthField,
    HeadersField,
    authorization_conflicts,
    request_headers,
    shown_auth,
    shown_headers,
    with_auth,
    with_headers,
)
from .keys import signing_keys

#: How much of a response body is read at most; the rest is never downloaded.
RESPONSE_CAP = 64 * 1024
USER_AGENT = "shipcast-webhooks/1"
#: Compiled filters a worker keeps (one an endpoint); past it, they are compiled again as events need them.
FILTER_CACHE = 4096


def _parsable(url: str) -> None:
    """A URL the validator takes may still be one the HTTP client cannot parse (a port past 65535)."""
    try:
        yarl.URL(url)
    except ValueError as exc:
        raise ValidationError(f"is not a URL shipcast can send to: {exc}") from exc


class EndpointSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"[a-z0-9_-]{1,64}\Z",
                                                                  error="must match [a-z0-9_-]+"))
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                     validate=[validate.Length(max=2000), _parsable])
    events = EventList()
    secret = fields.String(validate=validate.Regexp(SECRET_PATTERN, error="must look like whsec_<base64>"))
    description = fields.String(validate=validate.Length(max=500))
    #: Deliver each order's events in sequence: a later one waits while an earlier one retries.
    ordered = fields.Boolean(load_default=False)
    #: Add an Ed25519 ``v1a`` signature (keys at /.well-known/jwks.json) to the HMAC one.
    asymmetric = fields.Boolean(load_default=False)
    #: Deliveries per second at most (per worker process); default SHIPCAST_ENDPOINT_RATE_LIMIT.
    rate_limit = fields.Float(validate=validate.Range(min=0.1, max=100000))
    #: Deliveries in flight at once (per worker process); default SHIPCAST_ENDPOINT_CONCURRENCY.
    max_concurrency = fields.Integer(validate=validate.Range(min=1, max=256))
    #: Only events this condition on their fields holds for are sent (shipcast.model.filters).
    filter = FilterField()
    #: Headers of the endpoint's own, sent with each delivery; stored encrypted, shown masked.
    headers = HeadersField()
    #: HTTP basic or bearer authentication, sent as Authorization beside the signature.
    auth = AuthField()

    @validates_schema
    def _filter_can_match(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        if partial:  # an update: judged on the endpoint it makes (admin.update)
            return
        errors = unmatched_filter(data, current().event_types)
        if errors:
            raise ValidationError(errors)


class WebhookConfig(Schema):
    class Meta:
        unknown = RAISE

    endpoints = fields.List(fields.Nested(EndpointSchema), required=True,
                            validate=validate.Length(min=1, error="list at least one endpoint"),
                            metadata={"description": "The partner's endpoints, each id once"})

    @validates_schema
    def _unique_ids(self, data: dict[str, Any], **_: Any) -> None:
        ids = [endpoint["id"] for endpoint in data.get("endpoints", [])]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValidationError(f"duplicate endpoint ids {duplicates}", "endpoints")


class WebhookChannel(Channel):
    name = "webhook"
    description = "Signed Standard Webhooks to partners' HTTP endpoints"
    # Twice an endpoint's default concurrency: one hanging endpoint leaves the others half.
    prefetch = 512
    deliver_timeout = None  # SHIPCAST_WEBHOOK_TIMEOUT bounds every exchange
    config_schema = WebhookConfig
    session: aiohttp.ClientSession | None = None

    @classmethod
    async def prepare(cls, registry: Registered, partner_id: str, config: dict[str, Any],
                      stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """Refuse destinations webhooks may not reach; keep, generate or rotate
        each endpoint's secret and store it encrypted. A new secret given for
        an endpoint rotates it: the old one keeps signing for
        ``SHIPCAST_WEBHOOK_SECRET_OVERLAP`` seconds."""
        settings = registry.settings
        refusals = await asyncio.gather(*(
            _no_refusal() if is_receiver(yarl.URL(endpoint["url"]), settings, partner_id, endpoint["id"]) else
            check_destination(endpoint["url"], settings.allowed_networks, require_https=settings.webhook_require_https)
            for endpoint in config["endpoints"]))
        errors = {f"endpoints.{index}.url": [refused] for index, refused in enumerate(refusals) if refused}
        if errors:
            raise ConfigError("refused", errors)
        box = secret_box(settings)
        previous = {e["id"]: e for e in (stored or {}).get("endpoints", [])}
        endpoints = []
        for index, endpoint in enumerate(config["endpoints"]):
            old = previous.get(endpoint["id"])
            try:
                endpoints.append(with_credentials(box, with_secret(box, endpoint, old, None,
                                                                   settings.webhook_secret_overlap), old))
            except ConfigError as exc:
                errors.update({f"endpoints.{index}.{at}": messages for at, messages in exc.errors.items()})
        if errors:
            raise ConfigError("refused", errors)
        # Endpoints the partner registered through the API stay unless the config names them.
        named = {endpoint["id"] for endpoint in endpoints}
        endpoints += [e for e in previous.values() if e.get("origin") == "api" and e["id"] not in named]
        return {**config, "endpoints": endpoints}

    @classmethod
    def shown(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """As the schema declares it, with each endpoint's own headers and
        authentication as its listing shows them (names kept, values masked)."""
        shown = super().shown(config)
        for endpoint, stored in zip(shown.get("endpoints", []), config.get("endpoints", []), strict=False):
            if stored.get("header_secrets"):
                endpoint["headers"] = shown_headers(stored)
            if stored.get("auth"):
                endpoint["auth"] = shown_auth(stored)
        return shown

    @classmethod
    def bindings(cls, partner_id: str, config: Mapping[str, Any]) -> set[str]:
        keys: set[str] = set()
        for endpoint in config.get("endpoints", []):
            keys |= routing_keys(partner_id, endpoint.get("events", ["*"]))
        return {f"{partner_id}.*"} if f"{partner_id}.*" in keys else keys

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        #: Each endpoint's compiled filter, by (partner, endpoint): one entry an endpoint.
        self._filters = CompiledFilters(FILTER_CACHE, kind="endpoint")

    async def start(self) -> None:
        self._allowed = self.settings.allowed_networks
        self._https = self.settings.webhook_require_https
        self._box = secret_box(self.settings)
        self._signing_key = (await signing_keys(self.context))[0]
        # aiohttp straight, not behind httpx: on two cores httpx's per-request
        # work cost a third of the worker's time (docs/benchmarks.md).
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allowed), limit=0,
                                         limit_per_host=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            # The deadline is ours (asyncio.timeout in deliver); aiohttp's own timers would be a second set.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def target(self, partner: Partner, target_id: str) -> Target | None:
        config = partner.channels.get(self.name) or {}
        for endpoint in config.get("endpoints", []):
            if endpoint["id"] == target_id:
                return self._target(endpoint)
        return None

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None:
            return []
        return filtered_targets(event.event_type, (partner.channels.get(self.name) or {}).get("endpoints", []),
                                lambda endpoint: self._filtered(partner.id, endpoint, event),
                                "shipcast_webhook_filtered_total", partner=event.partner_id, id_label="endpoint")

    def target_for(self, event: Event, partner: Partner | None, target_id: str) -> Target | None:
        if partner is None:
            return None
        return filtered_target(event.event_type, (partner.channels.get(self.name) or {}).get("endpoints", []),
                               target_id, lambda endpoint: self._filtered(partner.id, endpoint, event))

    def _filtered(self, partner_id: str, endpoint: Mapping[str, Any], event: Event) -> Target | None:
        """``endpoint`` as a target for ``event``; ``None`` when its filter
        keeps the event out. A stored filter that does not compile (one of
        another version, say) holds back this endpoint's copy, not the
        partner's other endpoints: its target is refused at delivery, so the
        event is parked for it, to replay once the endpoint is applied again."""
        spec = endpoint.get("filter")
        if spec is None:
            return self._target(endpoint)
        compiled = self._filters.get((partner_id, endpoint["id"]), spec)
        if compiled.predicate is None:
            return self._target(endpoint, refused=compiled.problem)
        return self._target(endpoint) if compiled.predicate(event) else None

    def _target(self, endpoint: Mapping[str, Any], *, refused: str | None = None) -> Target:
        if refused is not None:  # nothing is sent to it: no credential is decrypted for it
            return Target(endpoint["id"], str(strip_userinfo(endpoint["url"])), {"refused": refused},
                          ordered=endpoint.get("ordered", False))
        url, stored = endpoint["url"], endpoint.get("userinfo_secret")
        userinfo = self._box.decrypt(stored) if stored else None
        if "@" in url:  # a config stored before credentials left the URL (no parse on the common path)
            userinfo, url = userinfo or _userinfo(url), str(strip_userinfo(url))
        headers, shown = request_headers(self._box, endpoint) \
            if endpoint.get("header_secrets") or endpoint.get("auth") else ({}, {})
        # The address logged and shown never carries credentials; they ride in the options.
        return Target(endpoint["id"], url,
                      {"secrets": valid_secrets(self._box, endpoint), "asymmetric": endpoint.get("asymmetric"),
                       "userinfo": userinfo, "shown_url": masked_userinfo(url) if userinfo else url,
                       "headers": headers, "shown_headers": shown},
                      concurrency=endpoint.get("max_concurrency"), rate_limit=endpoint.get("rate_limit"),
                      ordered=endpoint.get("ordered", False))

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        if target.options.get("refused"):  # its stored filter does not compile: parked, not the endpoint's fault
            raise PermanentDelivery(target.options["refused"], target_fault=False)
        assert self.session is not None, "start() first"
        url, refused = _parse(target.address, self._allowed, self._https)
        # Development mode's own receiver, for this endpoint, is let through.
        if refused and not is_receiver(url, self.settings, event.partner_id, target.id):
            raise PermanentDelivery(refused)
        if target.options.get("userinfo"):
            user, _, password = target.options["userinfo"].partition(":")
            url = url.with_user(unquote(user)).with_password(unquote(password) if password else None)
        timestamp = int(time.time())
        signature = sign(target.options["secrets"], event.event_id, timestamp, body)
        if target.options["asymmetric"]:
            signature += " " + sign_ed25519(self._signing_key, event.event_id, timestamp, body)
        own = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        # When tracing is on: the partner's own tracing joins the attempt's span (its traceparent alone).
        tracing.inject(own)
        extra = target.options.get("headers")
        headers = {**extra, **own} if extra else own
        # What the attempt log shows the partner: these headers (the endpoint's own and its
        # Authorization masked), and the URL with any credentials masked.
        shown = target.options.get("shown_headers")
        sent = {"method": "POST", "url": target.options.get("shown_url", target.address),
                "headers": {**shown, **own} if shown else own}
        try:
            # One deadline for the whole exchange: a server trickling bytes is cut off too.
            async with asyncio.timeout(self.settings.webhook_timeout):
                async with self.session.post(url, data=body, headers=headers,
                                             allow_redirects=False) as response:
                    excerpt = await _read_capped(response)
        except TimeoutError as exc:
            raise RetryableDelivery(f"timed out after {self.settings.webhook_timeout:g}s", request=sent) from exc
        except (aiohttp.ClientError, OSError) as exc:
            refusal = find_refusal(exc)
            if refusal is not None:  # nothing left: no address was connected to
                raise PermanentDelivery(f"destination refused: {refusal}") from exc
            raise RetryableDelivery(f"connection failed: {type(exc).__name__}: {exc}", request=sent) from exc

        status = response.status
        if 200 <= status < 300:
            return Delivered(status, excerpt, sent)
        if 300 <= status < 400:
            raise RetryableDelivery(f"HTTP {status} redirect to {response.headers.get('location', '?')} "
                                    "(redirects are not followed)", status=status, response=excerpt, request=sent)
        if status == 410:
            raise PermanentDelivery("HTTP 410 Gone: endpoint disabled", status=status, response=excerpt,
                                    disable_target=True, request=sent)
        retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        raise RetryableDelivery(f"HTTP {status}", status=status, response=excerpt, retry_after=retry_after,
                                request=sent)


async def _no_refusal() -> None:
    return None


@lru_cache(maxsize=65536)
def _parse(address: str, allowed: tuple[Network, ...], require_https: bool) -> tuple[yarl.URL, str | None]:
    """An endpoint's URL, parsed once (not per delivery), and why it is refused
    when it is not HTTPS and must be, or its host is an address webhooks may not reach."""
    url = yarl.URL(address)
    return url, static_refusal(url, allowed, require_https=require_https)


def with_credentials(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """``endpoint`` with what it authenticates with stored encrypted: its URL's
    credentials, its ``auth`` and its own headers (one source of credentials:
    those given last replace the others). Those stored stay with the
    origin they were given for: a URL moved to another scheme, host or port
    keeps none of them, unless they are given again.

    :raises ConfigError: by field (``auth``, ``headers.<name>``), relative to the endpoint.
    """
    given = _userinfo(endpoint["url"]) is not None
    moved = old is not None and origin(old["url"]) != origin(endpoint["url"])
    stored = with_userinfo(box, endpoint, old)
    errors: dict[str, list[str]] = {}
    try:
        stored = with_auth(box, stored, old, url_credentials=given, moved=moved)
    except ConfigError as exc:  # said with the headers' errors, all at once
        errors.update(exc.errors)
    try:
        stored = with_headers(box, stored, old, moved=moved)
    except ConfigError as exc:
        errors.update(exc.errors)
    if errors:
        raise ConfigError("refused", errors)
    conflicts = authorization_conflicts(stored)
    if conflicts:
        raise ConfigError("refused", conflicts)
    return stored


async def _read_capped(response: aiohttp.ClientResponse) -> str:
    """Read at most :data:`RESPONSE_CAP` bytes of the body; keep the start."""
    received = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        received += chunk
        if len(received) >= RESPONSE_CAP:
            break
    return bytes(received[:1024]).decode("utf-8", "replace")
