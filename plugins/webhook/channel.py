"""The webhook channel: signed Standard Webhooks to partners' endpoints, and
the schema of its config."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import aiohttp
import yarl
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel, Delivered, EventList, Target, routing_keys
from shipcast.plugin.context import Registered
from shipcast.retry_after import parse_retry_after
from shipcast.security.crypto import PREFIX as ENCRYPTED
from shipcast.security.crypto import SecretBox, secret_box
from shipcast.security.signing import SECRET_PATTERN, generate_secret, sign, sign_ed25519

from .guard import GuardedResolver, Network, check_destination, find_refusal, is_receiver, static_refusal
from .keys import signing_keys

#: How much of a response body is read at most; the rest is never downloaded.
RESPONSE_CAP = 64 * 1024
USER_AGENT = "shipcast-webhooks/1"


def _parsable(url: str) -> None:
    """A URL the validator takes may still be one the HTTP client cannot parse (a port past 65535)."""
    try:
        yarl.URL(url)
    except ValueError as exc:
        raise ValidationError(f"is not a URL shipcast can send to: {exc}") from exc


class EndpointSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9_-]{1,64}$",
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
        endpoints = [with_userinfo(box, with_secret(box, endpoint, previous.get(endpoint["id"]), None,
                                                    settings.webhook_secret_overlap), previous.get(endpoint["id"]))
                     for endpoint in config["endpoints"]]
        # Endpoints the partner registered through the API stay unless the config names them.
        named = {endpoint["id"] for endpoint in endpoints}
        endpoints += [e for e in previous.values() if e.get("origin") == "api" and e["id"] not in named]
        return {**config, "endpoints": endpoints}

    @classmethod
    def bindings(cls, partner_id: str, config: Mapping[str, Any]) -> set[str]:
        keys: set[str] = set()
        for endpoint in config.get("endpoints", []):
            keys |= routing_keys(partner_id, endpoint.get("events", ["*"]))
        return {f"{partner_id}.*"} if f"{partner_id}.*" in keys else keys

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
        config = partner.channels.get(self.name) or {}
        return [
            self._target(endpoint)
            for endpoint in config.get("endpoints", [])
            if "*" in endpoint.get("events", ["*"]) or event.event_type in endpoint["events"]
        ]

    def _target(self, endpoint: Mapping[str, Any]) -> Target:
        url, stored = endpoint["url"], endpoint.get("userinfo_secret")
        userinfo = self._box.decrypt(stored) if stored else None
        if "@" in url:  # a config stored before credentials left the URL (no parse on the common path)
            userinfo, url = userinfo or _userinfo(url), str(strip_userinfo(url))
        # The address logged and shown never carries credentials; they ride in the options.
        return Target(endpoint["id"], url,
                      {"secrets": valid_secrets(self._box, endpoint), "asymmetric": endpoint.get("asymmetric"),
                       "userinfo": userinfo, "shown_url": masked_userinfo(url) if userinfo else url},
                      concurrency=endpoint.get("max_concurrency"), rate_limit=endpoint.get("rate_limit"),
                      ordered=endpoint.get("ordered", False))

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
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
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        # What the attempt log shows the partner: these headers, and the URL with any credentials masked.
        sent = {"method": "POST", "url": target.options.get("shown_url", target.address), "headers": headers}
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


def with_secret(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None,
                new_secret: str | None, overlap: float) -> dict[str, Any]:
    """``endpoint`` with its secret encrypted: ``new_secret`` (a rotation), else
    the one it gives (from a partners file), else the old one, else a new one.
    A secret that replaces another moves the old one to ``previous_secrets``
    for ``overlap`` seconds. A file that gives the same secret as the last time
    it was applied changes nothing, so a rotation made since through the API
    stands."""
    endpoint = dict(endpoint)
    given = endpoint.pop("secret", None)
    if isinstance(given, str) and given.startswith(ENCRYPTED):
        # A stored endpoint passed through again (a partners document that does not list the
        # channel keeps the endpoints registered through the API): its secret is the stored one.
        given = None
    endpoint.pop("previous_secrets", None)
    if new_secret is not None:  # a rotation: ``endpoint`` is the stored one, its secret the old ciphertext
        given = None
    now = time.time()
    if old is not None and not old["secret"].startswith(ENCRYPTED):  # stored before secrets were encrypted
        old = {**old, "secret": box.encrypt(old["secret"])}
    fingerprint = (old or {}).get("given_fingerprint")
    if given is not None:
        if old is not None and fingerprint == _fingerprint(given):
            given = None
        fingerprint = _fingerprint(given) if given is not None else fingerprint
    fresh = new_secret or given
    kept = [p for p in (old or {}).get("previous_secrets", []) if p["expires_at"] > now]
    extra = {"given_fingerprint": fingerprint} if fingerprint else {}
    if old is not None and (fresh is None or box.decrypt(old["secret"]) == fresh):
        return {**endpoint, "secret": old["secret"], "previous_secrets": kept, **extra}
    previous = [{"secret": old["secret"], "expires_at": now + overlap}] if old is not None and overlap > 0 else []
    return {**endpoint, "secret": box.encrypt(fresh or generate_secret()), "previous_secrets": previous + kept,
            **extra}


def strip_userinfo(url: str) -> yarl.URL:
    """``url`` without ``user:password@``: how an endpoint is stored, logged and shown."""
    return yarl.URL(url).with_user(None)


def masked_userinfo(url: str) -> str:
    """``url`` as shown beside a request sent with credentials: they were
    sent, and are not shown (``https://…:…@host/path``)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…:…@{rest}"


def _userinfo(url: str) -> str | None:
    """``user:password`` as the URL writes them (percent-encoded, so a ``:`` in
    the user name cannot be taken for the separator)."""
    parsed = yarl.URL(url)
    if parsed.raw_user is None:
        return None
    return f"{parsed.raw_user}:{parsed.raw_password}" if parsed.raw_password is not None else parsed.raw_user


def with_userinfo(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """``endpoint`` with the credentials of its URL (``https://user:pass@…``)
    moved out of it and stored encrypted, like its secret; a URL given again
    without them (an edit of another field) keeps the ones stored."""
    endpoint = dict(endpoint)
    given = _userinfo(endpoint["url"])
    endpoint["url"] = str(strip_userinfo(endpoint["url"]))
    endpoint.pop("userinfo_secret", None)
    if given is not None:
        endpoint["userinfo_secret"] = box.encrypt(given)
    elif old is not None and old.get("userinfo_secret") and str(strip_userinfo(old["url"])) == endpoint["url"]:
        endpoint["userinfo_secret"] = old["userinfo_secret"]
    return endpoint


def _fingerprint(secret: str) -> str:
    """Enough of a secret's hash to tell whether a file gives the same one again."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def valid_secrets(box: SecretBox, endpoint: Mapping[str, Any]) -> list[str]:
    """The secrets a delivery is signed with now: the current one first, then
    every rotated-out one still in its overlap."""
    now = time.time()
    return [box.decrypt(endpoint["secret"])] + [
        box.decrypt(p["secret"]) for p in endpoint.get("previous_secrets", ()) if p["expires_at"] > now]


async def _read_capped(response: aiohttp.ClientResponse) -> str:
    """Read at most :data:`RESPONSE_CAP` bytes of the body; keep the start."""
    received = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        received += chunk
        if len(received) >= RESPONSE_CAP:
            break
    return bytes(received[:1024]).decode("utf-8", "replace")
