"""The connections one worker keeps to partners' brokers: one per broker URL
(credentials included), opened on first use with a deadline, checked by the
destination guard on the address actually connected to, closed when unused
for a while, when the destinations that used it move elsewhere or go, or to
make room under the cap. Each destination publishes on a channel of its own,
so a broker closing one destination's channel (no such exchange) leaves the
others on the same broker alone; a destination that moves or goes has its
channel closed.

What goes wrong is raised as the client's own errors, or as
:class:`~shipcast.security.guard.DestinationRefused` and :class:`Crowded`;
the channel maps them to retries and refusals in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiormq
import yarl
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.connection import TransportFactory
from aiormq.exceptions import DeliveryError
from pamqp.commands import Basic

from shipcast.delivery.isolation import KeyedLock
from shipcast.security.guard import GuardedResolver, Network

log = logging.getLogger(__name__)

#: A destination: (partner id, destination id).
Owner = tuple[str, str]
#: The broker URL (credentials included) a destination publishes to now, ``None`` when it is gone.
PublishesTo = Callable[[Owner], Awaitable[str | None]]
#: How partners' brokers see shipcast's connections.
CLIENT_PROPERTIES: dict[str, Any] = {"connection_name": "shipcast"}


class Crowded(Exception):
    """Every connection this worker may keep is in use: a new broker waits."""


class Nacked(Exception):
    """The broker answered a publish with a nack: it did not take the message."""


#: What a nack says, for the partner: AMQP gives no reason with it.
NACKED = ("it did not take the message (a queue bound for it may be full and reject publishes, "
          "x-overflow reject-publish, or the broker could not store it)")


class GuardedTransport(TransportFactory):
    """Opens the TCP (or TLS) stream to a broker on an address the guard
    allows: the name is resolved here, refused addresses dropped, and the
    stream opened to an address that is left, so what is checked is what is
    connected to. TLS still verifies the certificate against the name."""

    def __init__(self, resolver: GuardedResolver) -> None:
        self.resolver = resolver

    async def create(self, url: yarl.URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        host, port = url.host or "", url.port or 0
        found = await self.resolver.resolve(host, port, socket.AF_UNSPEC)  # DestinationRefused: none allowed
        tls = await provider.get_context() if url.scheme == "amqps" and provider is not None else None
        failure: OSError | None = None
        for address in found:
            try:
                return await asyncio.open_connection(address["host"], address["port"] or port, ssl=tls,
                                                     server_hostname=host if tls is not None else None, **kwargs)
            except OSError as exc:
                failure = exc
        assert failure is not None, "the guard returns at least one address"
        raise failure


class PartnerBroker:
    """One partner broker's connection, and a publishing channel (confirms
    on, returns raised) per destination on it."""

    def __init__(self, url: yarl.URL, transport: GuardedTransport) -> None:
        self.url = url
        self.transport = transport
        self.connection: AbstractConnection | None = None
        self.channels: dict[Owner, AbstractChannel] = {}
        self.users = 0
        self.last_used = time.monotonic()
        self._connecting: asyncio.Task[AbstractConnection] | None = None
        self._opening = KeyedLock()

    @property
    def shown(self) -> str:
        """The URL without its credentials, for logs."""
        return str(self.url.with_user(None))

    async def _connection(self, timeout: float) -> AbstractConnection:
        connection = self.connection
        if connection is not None and not connection.is_closed:
            return connection
        # One attempt at a time per broker, shared by every delivery waiting for it.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect(timeout), name=f"amqp-connect {self.shown}")
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _connect(self, timeout: float) -> AbstractConnection:
        async with asyncio.timeout(timeout):
            connection = await aiormq.connect(str(self.url), transport_factory=self.transport,
                                              client_properties=CLIENT_PROPERTIES)
        self.connection = connection
        self.channels.clear()
        return connection

    async def channel(self, owner: Owner, timeout: float) -> AbstractChannel:
        """The destination's publishing channel, opened (and the connection with it) when there is none."""
        channel = self.channels.get(owner)
        if channel is not None and not channel.is_closed:
            return channel
        await self._opening.acquire(owner)
        try:
            channel = self.channels.get(owner)
            if channel is not None and not channel.is_closed:
                return channel
            connection = await self._connection(timeout)
            async with asyncio.timeout(timeout):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.channels[owner] = channel
            return channel
        finally:
            self._opening.release(owner)

    async def forget(self, owner: Owner) -> None:
        """Close the destination's channel: it publishes elsewhere now."""
        channel = self.channels.pop(owner, None)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        connection, self.connection = self.connection, None
        self.channels.clear()
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5)
            except Exception:  # the broker may be gone already
                log.debug("closing the connection to %s failed", self.shown, exc_info=True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A connect nobody waits for any more (they timed out) fails quietly."""
    if not task.cancelled():
        task.exception()


class Destinations:
    """Every partner broker one worker publishes to, at most ``limit`` connections."""

    def __init__(self, allowed: Sequence[Network], *, connect_timeout: float, publish_timeout: float,
                 idle: float, limit: int, publishes_to: PublishesTo | None = None) -> None:
        self.resolver = GuardedResolver(allowed)
        self.transport = GuardedTransport(self.resolver)
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.idle = idle
        self.limit = limit
        #: Where a destination publishes now, from its config: a destination gone, or moved, has its channel closed.
        self.publishes_to = publishes_to
        #: By URL, credentials included: two destinations on one broker and user share a connection.
        self.brokers: dict[str, PartnerBroker] = {}
        self._where: dict[Owner, str] = {}
        self._sending = KeyedLock()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="amqp-destinations-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        brokers, self.brokers = list(self.brokers.values()), {}
        self._where.clear()
        await asyncio.gather(*(broker.close() for broker in brokers))
        await self.resolver.close()

    async def publish(self, owner: Owner, url: yarl.URL, exchange: str, routing_key: str, body: bytes,
                      properties: Basic.Properties) -> None:
        """Publish ``body`` for one destination, mandatory, and wait for the broker's confirm.

        :raises DestinationRefused: the broker's address is one shipcast may not reach.
        :raises Crowded: no connection can be opened now without closing one in use.
        :raises Nacked: the broker did not take it.
        :raises aiormq.exceptions.AMQPError, OSError, TimeoutError: as the client raises them.
        """
        broker = await self._broker(owner, url)
        broker.users += 1
        try:
            channel = await broker.channel(owner, self.connect_timeout)
            # A returned message is matched to its publish by message id: one at a time per id on a channel.
            key = (owner, properties.message_id)
            await self._sending.acquire(key)
            try:
                confirmation = await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                                           properties=properties, mandatory=True,
                                                           timeout=self.publish_timeout)
            except DeliveryError as exc:  # the client raises a nack as a failed delivery
                if isinstance(exc.frame, Basic.Nack):
                    raise Nacked(NACKED) from exc
                raise
            finally:
                self._sending.release(key)
        finally:
            broker.users -= 1
            broker.last_used = time.monotonic()
        if not isinstance(confirmation, Basic.Ack):
            raise Nacked(NACKED)

    async def _broker(self, owner: Owner, url: yarl.URL) -> PartnerBroker:
        key = str(url)
        before = self._where.get(owner)
        if before is not None and before != key:  # the destination moved: its old connection may go
            del self._where[owner]
            await self._forget(owner, before)
        # Looked up again after making room: another publish may have opened this broker meanwhile, or
        # taken the room made. Between the lookup and the creation nothing awaits.
        while (broker := self.brokers.get(key)) is None:
            if len(self.brokers) < self.limit:
                broker = self.brokers[key] = PartnerBroker(url, self.transport)
                break
            await self._make_room()
        self._where[owner] = key
        return broker

    async def _forget(self, owner: Owner, key: str) -> None:
        """Close ``owner``'s channel on the broker at ``key``, and that
        broker's connection when no other destination uses it and no publish is under way on it."""
        old = self.brokers.get(key)
        if old is None:
            return
        await old.forget(owner)
        if key not in self._where.values() and old.users == 0 and self.brokers.get(key) is old:
            del self.brokers[key]
            await old.close()

    async def prune(self) -> None:
        """Close the channel of each destination whose config is gone or
        names another broker now (:attr:`publishes_to`), and a connection no
        destination is left on."""
        if self.publishes_to is None:
            return
        for owner, key in list(self._where.items()):
            now = await self.publishes_to(owner)
            if now != key and self._where.get(owner) == key:  # not moved by a publish meanwhile
                del self._where[owner]
                await self._forget(owner, key)

    async def _make_room(self) -> None:
        unused = sorted((b for b in self.brokers.values() if b.users == 0), key=lambda b: b.last_used)
        if not unused:
            raise Crowded(f"this worker already keeps {self.limit} connections to partners' brokers, all in use "
                          "(SHIPCAST_AMQP_DESTINATION_MAX_CONNECTIONS)")
        await self._drop(unused[0])

    async def _drop(self, broker: PartnerBroker) -> None:
        key = str(broker.url)
        if self.brokers.get(key) is broker:
            del self.brokers[key]
        for owner in [owner for owner, where in self._where.items() if where == key]:
            del self._where[owner]
        await broker.close()

    async def close_idle(self) -> None:
        """Close connections nobody used for :attr:`idle` seconds."""
        cutoff = time.monotonic() - self.idle
        for broker in list(self.brokers.values()):
            # Looked at again before each: while an earlier one closed, a publish may have picked this one up.
            if broker.users == 0 and broker.last_used < cutoff and self.brokers.get(str(broker.url)) is broker:
                log.info("closing the idle connection to %s", broker.shown)
                await self._drop(broker)

    async def _sweep(self) -> None:
        """Now and then, close what destinations gone and idle connections left open."""
        while True:
            await asyncio.sleep(min(self.idle / 2, 30.0))
            try:
                await self.prune()
            except Exception:  # the partner configs could not be read now (the store is down): next time
                log.warning("could not look up which AMQP destinations are gone", exc_info=True)
            await self.close_idle()
