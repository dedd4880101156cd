"""The AMQP channel: each event published to the partner's own RabbitMQ, the
envelope as the body and the Standard Webhooks headers as message headers,
persistent, mandatory and confirmed."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiormq
import yarl
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    IncompatibleProtocolError,
    InvalidFrameError,
    ProbableAuthenticationError,
    PublishError,
)
from pamqp.commands import Basic

from shipcast import tracing
from shipcast.exceptions import ConfigError, DeferDelivery, PermanentDelivery, RetryableDelivery
from shipcast.model.envelope import Event
from shipcast.model.filters import CompiledFilters
from shipcast.model.partners import Partner
from shipcast.plugin.channel import (
    Channel,
    Delivered,
    Target,
    filtered_target,
    filtered_targets,
    routing_keys,
)
from shipcast.plugin.context import ChannelContext, Registered
from shipcast.security.crypto import secret_box
from shipcast.security.endpoint_secrets import masked_userinfo, valid_secrets, with_secret, with_userinfo
from shipcast.security.guard import DestinationRefused, check_destination
from shipcast.security.signing import sign

from .config import SHORT_STRING, AmqpConfig, broker_url, host_port, routing_key, virtual_host
from .connections import Crowded, Destinations, Nacked, Owner
from .settings import DestinationSettings

#: A destination's publishes awaiting their confirm at once, per worker, unless it sets ``max_concurrency``.
DEFAULT_CONCURRENCY = 32
TLS_REQUIRED = "amqps:// is required (SHIPCAST_WEBHOOK_REQUIRE_HTTPS)"


class AmqpChannel(Channel):
    name = "amqp"
    description = "Events published to the partner's own RabbitMQ, signed like webhooks"
    # Eight destinations' worth of publishes in flight: one hanging broker leaves the others most.
    prefetch = 256
    deliver_timeout = None  # connect and confirm each have their own deadline
    config_schema = AmqpConfig
    partner_editable = True

    @classmethod
    async def prepare(cls, registry: Registered, partner_id: str, config: dict[str, Any],
                      stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """Refuse brokers shipcast may not reach; move each URL's credentials
        out of it, and keep, generate or rotate each destination's signing
        secret, both stored encrypted."""
        settings = registry.settings
        errors: dict[str, list[str]] = {}
        for index, destination in enumerate(config["destinations"]):
            url = yarl.URL(destination["url"])
            if settings.webhook_require_https and url.scheme != "amqps":
                errors[f"destinations.{index}.url"] = [f"destination refused: {TLS_REQUIRED}"]
                continue
            refused = await check_destination(str(url.with_user(None)), settings.allowed_networks,
                                              require_https=False)
            if refused:
                errors[f"destinations.{index}.url"] = [refused]
        if errors:
            raise ConfigError("refused", errors)
        box = secret_box(settings)
        previous = {d["id"]: d for d in (stored or {}).get("destinations", [])}
        destinations = [with_userinfo(box, with_secret(box, destination, previous.get(destination["id"]), None,
                                                       settings.webhook_secret_overlap), previous.get(destination["id"]))
                        for destination in config["destinations"]]
        return {**config, "destinations": destinations}

    @classmethod
    def bindings(cls, partner_id: str, config: Mapping[str, Any]) -> set[str]:
        keys: set[str] = set()
        for destination in config.get("destinations", []):
            keys |= routing_keys(partner_id, destination.get("events", ["*"]))
        return {f"{partner_id}.*"} if f"{partner_id}.*" in keys else keys

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        #: Each destination's compiled filter, by (partner, destination): one entry a destination.
        self._filters = CompiledFilters(kind="destination")

    async def start(self) -> None:
        own = DestinationSettings.of(self.settings)
        self._box = secret_box(self.settings)
        self._https = self.settings.webhook_require_https
        self._timeout = own.connect_timeout + own.publish_timeout
        self.destinations = Destinations(self.settings.allowed_networks, connect_timeout=own.connect_timeout,
                                         publish_timeout=own.publish_timeout, idle=own.idle,
                                         limit=own.max_connections, publishes_to=self._publishes_to)
        await self.destinations.start()

    async def _publishes_to(self, owner: Owner) -> str | None:
        """The broker URL (credentials included) a destination publishes to as
        its config stands now; ``None`` when the config has it no more."""
        partner_id, destination_id = owner
        partner = await self.context.partners.get(partner_id)
        target = self.target(partner, destination_id) if partner is not None else None
        return str(broker_url(target.options["url"], target.options["credentials"])) if target is not None else None

    async def close(self) -> None:
        destinations = getattr(self, "destinations", None)
        if destinations is not None:
            await destinations.close()

    def target(self, partner: Partner, target_id: str) -> Target | None:
        for destination in (partner.channels.get(self.name) or {}).get("destinations", []):
            if destination["id"] == target_id:
                return self._target(destination)
        return None

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        if partner is None:
            return []
        return filtered_targets(event.event_type, (partner.channels.get(self.name) or {}).get("destinations", []),
                                lambda destination: self._filtered(partner.id, destination, event),
                                "shipcast_amqp_filtered_total", partner=event.partner_id, id_label="destination")

    def target_for(self, event: Event, partner: Partner | None, target_id: str) -> Target | None:
        if partner is None:
            return None
        return filtered_target(event.event_type, (partner.channels.get(self.name) or {}).get("destinations", []),
                               target_id, lambda destination: self._filtered(partner.id, destination, event))

    def _filtered(self, partner_id: str, destination: Mapping[str, Any], event: Event) -> Target | None:
        """``destination`` as a target for ``event``; ``None`` when its filter
        keeps the event out. A stored filter that does not compile holds back
        this destination's copy alone: refused at delivery, it is parked."""
        spec = destination.get("filter")
        if spec is None:
            return self._target(destination)
        compiled = self._filters.get((partner_id, destination["id"]), spec)
        if compiled.predicate is None:
            return Target(destination["id"], f"{destination['url']} exchange {destination['exchange']}",
                          {"refused": compiled.problem})
        return self._target(destination) if compiled.predicate(event) else None

    def _target(self, destination: Mapping[str, Any]) -> Target:
        url, stored = destination["url"], destination.get("userinfo_secret")
        credentials = self._box.decrypt(stored) if stored else None
        shown = masked_userinfo(url) if credentials else url
        return Target(destination["id"], f"{url} exchange {destination['exchange']}",
                      {"url": url, "credentials": credentials, "shown_url": shown,
                       "exchange": destination["exchange"], "routing_key": destination["routing_key"],
                       "secrets": valid_secrets(self._box, destination)},
                      concurrency=destination.get("max_concurrency", DEFAULT_CONCURRENCY),
                      rate_limit=destination.get("rate_limit"))

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        options = target.options
        if options.get("refused"):  # its stored filter does not compile: parked, not the destination's fault
            raise PermanentDelivery(options["refused"], target_fault=False)
        url = broker_url(options["url"], options["credentials"])
        if self._https and url.scheme != "amqps":
            raise PermanentDelivery(f"destination refused: {TLS_REQUIRED}")
        exchange, key = options["exchange"], routing_key(options["routing_key"], event)
        timestamp = int(time.time())
        headers: dict[str, Any] = {"webhook-id": event.event_id, "webhook-timestamp": str(timestamp),
                                   "webhook-signature": sign(options["secrets"], event.event_id, timestamp, body)}
        tracing.inject(headers)  # when tracing is on: the partner's consumer joins the attempt's span
        # What the attempt log shows the partner: the broker (credentials masked), where, and these headers.
        sent = {"method": "PUBLISH", "url": options["shown_url"], "exchange": exchange, "routing_key": key,
                "headers": headers}
        if len(key.encode()) > SHORT_STRING:
            raise PermanentDelivery(f"the routing key is {len(key.encode())} bytes; AMQP allows {SHORT_STRING} "
                                    "(a shorter routing_key template, or shorter order ids)", request=sent)
        properties = Basic.Properties(
            content_type="application/json", delivery_mode=2, message_id=event.event_id, message_type=event.event_type,
            timestamp=datetime.fromtimestamp(timestamp, UTC), app_id="shipcast", headers=headers)
        try:
            async with asyncio.timeout(self._timeout):
                await self.destinations.publish((event.partner_id, target.id), url, exchange, key, body, properties)
        except DestinationRefused as exc:
            raise PermanentDelivery(f"destination refused: {exc}", request=sent) from exc
        except Crowded as exc:
            raise DeferDelivery(str(exc)) from exc
        except Exception as exc:  # what the broker or the network said: worth another try
            failure = _failure(exc, url, exchange, key)
            if failure is None:
                raise
            status, reason = failure
            raise RetryableDelivery(reason, status=status, request=sent) from exc
        return Delivered(None, f"confirmed by the broker: exchange {exchange!r}, routing key {key!r}", sent)


def _failure(exc: BaseException, url: yarl.URL, exchange: str, key: str) -> tuple[int | None, str] | None:
    """What went wrong, for the partner: the AMQP reply code when there is
    one, and why in words; ``None`` for an error that is not the broker's or
    the network's (a bug: the core logs it and retries)."""
    where = host_port(url)
    vhost = virtual_host(url)
    match exc:
        case TimeoutError():
            return None, f"timed out: {where} did not answer (connect and confirm within the deadline)"
        case PublishError():
            return 312, (f"unroutable: no queue is bound to exchange {exchange!r} for routing key {key!r} "
                         f"({exc.args[0] if exc.args else 'NO_ROUTE'}); bind a queue, or change the routing_key")
        case Nacked():
            return None, f"nacked by the broker: {exc}"
        case ChannelNotFoundEntity():
            return 404, f"no such exchange on the broker: {exc}"
        case ChannelAccessRefused():
            return 403, f"the broker refused access: {exc}"
        case ChannelPreconditionFailed():
            return 406, f"the broker refused the message: {exc}"
        case ChannelClosed():
            return None, f"the broker closed the channel: {exc}"
        case ProbableAuthenticationError():
            return 403, f"{where} refused the credentials: {exc}"
        case InvalidFrameError() if "Connection.Close" in str(exc):
            return 530, f"{where} refused virtual host {vhost!r}: it does not exist, or the user may not use it"
        case IncompatibleProtocolError():
            return None, f"{where} does not speak AMQP 0-9-1"
        case ssl.SSLError():
            return None, f"TLS with {where} failed: {exc}"
        case ConnectionRefusedError():
            return None, f"connection refused by {where}: nothing listens there"
        case OSError() | AMQPError() | aiormq.exceptions.ChannelInvalidStateError():
            return None, f"connection to {where} failed: {type(exc).__name__}: {exc}"
    return None
