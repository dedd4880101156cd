"""The connections one worker keeps to partners' brokers: one per broker URL
(credentials included), opened on first use with a deadline, checked by the
destination guard on the address actually connected to, closed when unused
for a while, when the destination that used it moves elsewhere, or to make
room under the cap. Each destination publishes on a channel of its own, so a
broker closing one destination's channel (no such exchange) leaves the
others on the same broker alone.

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
from collections.abc import Sequence
from typing import Any

import aiormq
import yarl
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.connection import TransportFactory
from pamqp.commands import Basic

from shipcast.delivery.isolation import KeyedLock
from shipcast.security.guard import GuardedResolver, Network

log = logging.getLogger(__name__)

#: A destination: (partner id, destination id).
Owner = tuple[str, str]
#: How partners' brokers see shipcast's connections.
CLIENT_PROPERTIES: dict[str, Any] = {"connection_name": "shipcast"}


class Crowded(Exception):
    """Every connection this worker may keep is in use: a new broker waits."""


class Nacked(Exception):
    """The broker answered a publish with a nack: it did not take the message."""


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
                 idle: float, limit: int) -> None:
        self.resolver = GuardedResolver(allowed)
        self.transport = GuardedTransport(self.resolver)
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.idle = idle
        self.limit = limit
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
            finally:
                self._sending.release(key)
        finally:
            broker.users -= 1
            broker.last_used = time.monotonic()
        if not isinstance(confirmation, Basic.Ack):
            raise Nacked(f"the broker did not take the message ({type(confirmation).__name__})")

    async def _broker(self, owner: Owner, url: yarl.URL) -> PartnerBroker:
        key = str(url)
        before = self._where.get(owner)
        if before is not None and before != key:  # the destination moved: its old connection may go
            self._where.pop(owner)
            old = self.brokers.get(before)
            if old is not None:
                await old.forget(owner)
                if before not in self._where.values() and old.users == 0:
                    del self.brokers[before]
                    await old.close()
        broker = self.brokers.get(key)
        if broker is None:
            if len(self.brokers) >= self.limit:
                await self._make_room()
            broker = self.brokers[key] = PartnerBroker(url, self.transport)
        self._where[owner] = key
        return broker

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

    async def _sweep(self) -> None:
        """Close connections nobody used for :attr:`idle` seconds."""
        while True:
            await asyncio.sleep(min(self.idle / 2, 30.0))
            cutoff = time.monotonic() - self.idle
            for broker in [b for b in self.brokers.values() if b.users == 0 and b.last_used < cutoff]:
                log.info("closing the idle connection to %s", broker.shown)
                await self._drop(broker)
