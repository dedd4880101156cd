"""What a running shipcast process shares: settings, store, broker, partners.

Channels receive a :class:`Services` and reach everything through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .broker import Broker, Publisher
from .health import EndpointHealth, OperatorNotifier
from .partners import Partner
from .settings import Settings
from .batching import Batcher
from .store import Attempt, Store
from .topology import CONTROL_EXCHANGE

log = logging.getLogger(__name__)


class PartnerCache:
    """Applied partner configs and disabled targets, kept in memory.

    Reloaded from the store when a ``partners apply`` anywhere announces a
    change on the ``shipcast.control`` exchange, and at least every
    ``max_age`` seconds in case an announcement was missed.
    """

    def __init__(self, store: Store, *, max_age: float = 30.0) -> None:
        self.store = store
        self.max_age = max_age
        self._partners: dict[str, Partner] = {}
        self._disabled: set[tuple[str, str, str]] = set()
        #: Targets failing without a success, and since when.
        self.failing: dict[tuple[str, str, str], datetime] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def reload(self, *, if_older_than: float | None = None) -> None:
        """Load every partner config; with ``if_older_than``, skip it when
        another caller reloaded while this one waited for the lock."""
        async with self._lock:
            if if_older_than is not None and time.monotonic() - self._loaded_at <= if_older_than:
                return
            partners = await self.store.get_partners()
            self._disabled = await self.store.get_disabled_targets()
            self.failing = await self.store.get_failing()
            self._partners = {partner.id: partner for partner in partners}
            self._loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def get(self, partner_id: str) -> Partner | None:
        age = time.monotonic() - self._loaded_at
        if age > self.max_age:
            await self.reload(if_older_than=self.max_age)
        elif partner_id not in self._partners and age > 1.0:
            # An unknown partner may have just been applied: look again, at most once a second.
            await self.reload(if_older_than=1.0)
        return self._partners.get(partner_id)

    def is_disabled(self, channel: str, partner_id: str, target: str) -> bool:
        return (channel, partner_id, target) in self._disabled

    def mark_disabled(self, channel: str, partner_id: str, target: str) -> None:
        self._disabled.add((channel, partner_id, target))


@dataclass
class Services:
    settings: Settings
    store: Store
    broker: Broker
    #: Set once start-up is complete (config applied, workers consuming).
    started: bool = field(default=False, init=False)
    partners: PartnerCache = field(init=False)
    recorder: Batcher[Attempt, None] = field(init=False)
    publisher: Publisher = field(init=False)
    health: EndpointHealth = field(init=False)
    #: Posts operator events, in processes that run workers and have an operator endpoint.
    notifier: OperatorNotifier | None = field(default=None, init=False)
    #: What plugins keep per process (a live-update hub), by plugin name.
    extensions: dict[str, Any] = field(default_factory=dict, init=False)
    #: Set when the API starts shutting down: long-lived responses end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.partners = PartnerCache(self.store)
        self.recorder = Batcher(self.store.record)
        self.publisher = Publisher(broker=self.broker, settings=self.settings)
        self.health = EndpointHealth(self)

    def start_notifier(self) -> None:
        """Post operator events to ``SHIPCAST_OPERATOR_WEBHOOK_URL``, if set."""
        if self.settings.operator_webhook_url and self.notifier is None:
            self.notifier = OperatorNotifier(self, self.settings.operator_webhook_url,
                                             self.settings.operator_webhook_secret)
            self.notifier.start()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Services:
        settings = settings or Settings()
        return cls(settings, Store(settings.database_url), Broker(settings))

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

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
            self.notifier = None
        await self.recorder.close()
        await self.broker.close()
        await self.store.close()
