"""What a running shipcast process shares: settings, the registry, store,
broker, partners.

The application builds one :class:`Services` per process from its settings;
channels see it through the narrow :class:`~shipcast.plugin.context.ChannelContext`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shipcast.amqp.connection import Broker
from shipcast.amqp.topology import CONTROL_EXCHANGE
from shipcast.app.publisher import Publisher
from shipcast.app.retention import Pruner
from shipcast.batching import Batcher
from shipcast.delivery.consumer import ParsedEvents
from shipcast.delivery.health import EndpointHealth, OperatorNotifier
from shipcast.plugin.registry import Registry
from shipcast.security.links import identifiers
from shipcast.settings import Settings
from shipcast.store import Attempt, PartnerCache, Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    registry: Registry
    store: Store
    broker: Broker
    #: Set once start-up is complete (config applied, workers consuming).
    started: bool = field(default=False, init=False)
    partners: PartnerCache = field(init=False)
    recorder: Batcher[Attempt, None] = field(init=False)
    publisher: Publisher = field(init=False)
    health: EndpointHealth = field(init=False)
    #: The events this process's channel workers parsed last, by body.
    parsed: ParsedEvents = field(init=False)
    #: How many processes of one ``shipcast run`` this one shares its limits
    #: with: an endpoint's concurrency and rate, and the resend quota, are divided by it.
    process_share: int = field(default=1, init=False)
    #: Posts operator events, in processes that run workers and have an operator endpoint.
    notifier: OperatorNotifier | None = field(default=None, init=False)
    #: Prunes what is past its retention, in processes that run workers.
    pruner: Pruner | None = field(default=None, init=False)
    #: What plugins keep per process (a live-update hub), by plugin name.
    extensions: dict[str, Any] = field(default_factory=dict, init=False)
    #: Set when the API starts shutting down: long-lived responses end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.partners = PartnerCache(self.store)
        self.recorder = Batcher(self.store.record)
        self.publisher = Publisher(broker=self.broker, settings=self.settings, registry=self.registry)
        self.health = EndpointHealth(self.settings, self.store, self.partners)
        self.parsed = ParsedEvents(self.registry.event_types)

    def start_notifier(self) -> None:
        """Post operator events to ``SHIPCAST_OPERATOR_WEBHOOK_URL``, if set."""
        if self.settings.operator_webhook_url and self.notifier is None:
            self.notifier = OperatorNotifier(self.store, self.health, self.settings.operator_webhook_url,
                                             self.settings.operator_webhook_secret)
            self.notifier.start()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, registry: Registry | None = None,
                      plugins: Iterable[object] = ()) -> Services:
        """The services of one process: the registry is built here, once,
        from ``settings`` (with ``plugins`` registered besides), unless given."""
        settings = settings or Settings()
        registry = registry or Registry(settings, plugins=plugins)
        store = Store(settings.database_url, identifiers(settings))
        return cls(settings, registry, store, Broker(settings, registry.topologies()))

    async def start(self, *, wait_for_broker: bool = False) -> None:
        await self.store.open()
        if wait_for_broker:
            await self.broker.connect(timeout=30)
        else:
            await self.broker.start()

    async def listen_for_changes(self) -> None:
        """Invalidate the partner cache whenever any process applies partners."""
        connection = self.broker.require()
        channel = await connection.channel()
        exchange = await channel.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        # Named by us: a robust channel re-declares it after a reconnect, and
        # server-named (amq.gen-*) queues cannot be re-declared by name.
        queue = await channel.declare_queue(f"{CONTROL_EXCHANGE}.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True)
        await queue.bind(exchange)

        async def on_change(message: AbstractIncomingMessage) -> None:
            self.partners.invalidate()
            await message.ack()

        await queue.consume(on_change)

    async def announce_change(self) -> None:
        """Tell every running process that partner configs changed."""
        connection = self.broker.require()
        channel = await connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
            await exchange.publish(aio_pika.Message(b"partners", content_type="text/plain"), "",
                                   timeout=self.settings.publish_timeout)
        finally:
            await channel.close()

    def start_pruner(self) -> None:
        """Prune what is past its retention every ``SHIPCAST_PRUNE_INTERVAL`` seconds."""
        if self.pruner is None:
            self.pruner = Pruner(self.store, self.settings)
            self.pruner.start()

    async def close(self) -> None:
        if self.pruner is not None:
            await self.pruner.close()
            self.pruner = None
        if self.notifier is not None:
            await self.notifier.close()
            self.notifier = None
        await self.recorder.close()
        await self.broker.close()
        await self.store.close()


def services_of(request: Any) -> Services:
    """The running services, from a request to the API (``request.app.state``)."""
    services: Services = request.app.state.services
    return services
