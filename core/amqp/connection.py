"""The broker connection: one robust connection per process.

Publishing uses its own channel with publisher confirms; every publish has a
timeout, and an unconfirmed publish is an error, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shipcast.amqp.topology import ChannelTopology, declare, declare_exchange
from shipcast.batching import cancel
from shipcast.exceptions import BrokerUnavailable, PublishNotConfirmed, TopologyMismatch
from shipcast.settings import Settings

log = logging.getLogger(__name__)

_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)

#: What a consumer is handed each message with.
OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Consumer:
    """One channel consuming one work queue, on its own AMQP channel (its own
    prefetch). Closing the channel puts its unacked messages back."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, tag: str) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = tag

    async def cancel(self) -> None:
        """Take no more messages; those in flight may still be settled."""
        try:
            await asyncio.wait_for(self.queue.cancel(self.tag), 5)
        except Exception:  # the broker may be gone; unacked messages are redelivered
            log.debug("cancel of the consumer of %s failed", self.queue.name, exc_info=True)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.channel.close(), 5)
        except Exception:
            log.debug("close of the channel of %s failed", self.queue.name, exc_info=True)


class Broker:
    """One robust connection to RabbitMQ, opened in the background.

    ``start()`` returns at once; until the broker answers, :meth:`require`
    raises :class:`BrokerUnavailable`, so ingest can answer 503 instead of
    hanging. After a drop, aio-pika reconnects and restores channels, queues
    and consumers by itself.
    """

    def __init__(self, settings: Settings, topologies: Sequence[ChannelTopology] = ()) -> None:
        self.settings = settings
        #: The channels' queues, declared on every connect.
        self.topologies = tuple(topologies)
        self.connection: AbstractRobustConnection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._renewing = asyncio.Lock()
        self._renewed_at = 0.0
        #: Set when the broker refused our topology: retrying cannot help.
        self.fatal: TopologyMismatch | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name="shipcast-broker-connect")

    async def connect(self, timeout: float | None = None) -> Broker:
        """Start and wait until connected.

        :raises BrokerUnavailable: no connection within ``timeout``.
        :raises TopologyMismatch: the broker holds queues this version cannot use.
        """
        await self.start()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise BrokerUnavailable(f"no answer from RabbitMQ at {self._safe_url} in {timeout}s") from None
        if self.fatal is not None:
            raise self.fatal
        return self

    @property
    def _safe_url(self) -> str:
        url = aio_pika.connection.make_url(self.settings.amqp_url)
        return str(url.with_password("***")) if url.password else str(url)

    async def _open(self) -> AbstractRobustConnection:
        """A robust connection, once its first connect succeeded. aio-pika's
        ``connect_robust`` leaves a connection whose first connect failed, or
        was cancelled, unclosed in a reference cycle: one more for every retry
        while the broker is down, each closed (if ever) by a finalizer that
        cannot schedule the close when a collection runs on another thread."""
        url = aio_pika.connection.make_url(self.settings.amqp_url, reconnect_interval=1)
        connection = aio_pika.RobustConnection(url, client_properties={"connection_name": "shipcast"})
        try:
            await connection.connect()
        except BaseException:
            await asyncio.shield(connection.close())
            raise
        return connection

    async def _connect(self) -> None:
        delay = 0.2
        while self.connection is None:
            try:
                connection = await self._open()
            except _BROKER_ERRORS as exc:
                log.warning("RabbitMQ at %s unreachable (%s); retrying", self._safe_url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                channel = await connection.channel(publisher_confirms=True)
                self._exchange = await declare_exchange(channel)
                await self._declare_channels(connection)
                self._publish_channel = channel
                self.connection = connection
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                # Not an outage: a queue exists with other arguments (declared by an
                # older shipcast, or by hand). Retrying cannot fix it; say what to do.
                await connection.close()
                self.fatal = TopologyMismatch(
                    f"RabbitMQ at {self._safe_url} has a queue declared with other arguments than "
                    f"this shipcast declares ({exc}). Delete that queue (its messages first moved "
                    "elsewhere, e.g. with the management UI's shovel), then start again.")
                log.error("%s", self.fatal)
                break
            except _BROKER_ERRORS as exc:
                await connection.close()
                log.warning("RabbitMQ at %s unreachable (%s); retrying", self._safe_url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except BaseException:  # cancelled by close(): the half-made connection is not leaked
                await asyncio.shield(connection.close())
                raise
        self._ready.set()

    async def _declare_channels(self, connection: AbstractRobustConnection) -> None:
        """Every registered channel's queues exist before the first publish, so
        the archive's ``#`` binding catches every event from the start. (On a
        channel closed after: a reconnect does not declare them again, with
        arguments a migration may have changed since.)"""
        channel = await connection.channel()
        try:
            for topology in self.topologies:
                await declare(connection, channel, topology)
        finally:
            if not channel.is_closed:
                await channel.close()

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set() and not self.connection.is_closed

    @property
    def blocked(self) -> bool:
        """RabbitMQ has blocked this connection's publishing: a memory or disk
        alarm is on. (aiormq tracks the broker's ``connection.blocked`` and
        ``connection.unblocked`` in a private event; without it, a publish
        during an alarm fails only when its confirm times out.)"""
        transport = self.connection.transport if self.connection is not None else None
        unblocked = getattr(getattr(transport, "connection", None), "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    def require(self) -> AbstractRobustConnection:
        if self.fatal is not None:
            raise self.fatal
        if not self.connected:
            raise BrokerUnavailable(f"RabbitMQ at {self._safe_url} is unreachable")
        assert self.connection is not None
        return self.connection

    async def publish(self, message: aio_pika.Message, routing_key: str, *, exchange: str | None = None) -> None:
        """Publish and wait for the broker's confirm.

        ``exchange`` ``""`` sends to the queue named ``routing_key``; the default
        is the events exchange.

        :raises BrokerUnavailable: not connected.
        :raises PublishNotConfirmed: nacked, or no confirm within the timeout.
        """
        self.require()
        if self.blocked:
            raise BrokerUnavailable(f"RabbitMQ at {self._safe_url} has blocked publishing (a memory or disk alarm)")
        channel = await self._open_publish_channel()
        assert self._exchange is not None
        target = self._exchange if exchange is None else channel.default_exchange
        try:
            confirmation = await target.publish(
                message, routing_key, timeout=self.settings.publish_timeout, mandatory=True
            )
        except TimeoutError as exc:
            raise PublishNotConfirmed(f"no confirm for {routing_key} in {self.settings.publish_timeout}s") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            await self._renew_publish_channel(channel)
            raise PublishNotConfirmed(f"broker refused {routing_key}: {exc}") from exc
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"lost RabbitMQ while publishing {routing_key}: {exc}") from exc
        except RuntimeError as exc:  # aiormq's "<Connection …> closed": the broker went away under the publish
            if "closed" not in str(exc):
                raise
            raise BrokerUnavailable(f"lost RabbitMQ while publishing {routing_key}: {exc}") from exc
        except aio_pika.exceptions.ChannelInvalidStateError as exc:
            # The channel closed under the publish (a reconnect that failed half way):
            # the next publish gets a new one; this one is the caller's to post again.
            await self._renew_publish_channel(channel)
            raise BrokerUnavailable(f"RabbitMQ's publishing channel closed while publishing {routing_key}") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            # A returned message (no queue bound) is acked too, but reached nobody.
            raise PublishNotConfirmed(f"no queue is bound for {routing_key}: nothing received it")

    async def consume(self, topology: ChannelTopology, prefetch: int, on_message: OnMessage) -> Consumer:
        """Consume a channel's work queue on an AMQP channel of its own, with
        ``prefetch`` messages in flight at most; its queues are declared first.
        Declared through the robust connection, so a reconnect restores it."""
        connection = self.require()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare(connection, channel, topology)
        return Consumer(channel, queue, await queue.consume(on_message))

    async def consumers(self, queue: str) -> int:
        """How many consumers ``queue`` has now: a passive declare on a
        channel of its own, closed after, so that no other channel fails when
        the queue is gone or the answer is late (aiormq closes the channel of
        a call cut short).

        :raises BrokerUnavailable: not connected; or what the broker or the
            connection raise.
        """
        probe = await self.require().channel()
        try:
            underlay = await probe.get_underlay_channel()
            declared = await underlay.queue_declare(queue, passive=True)
        finally:
            with contextlib.suppress(*_BROKER_ERRORS, aio_pika.exceptions.ChannelInvalidStateError):
                await probe.close()
        return int(declared.consumer_count or 0)

    @property
    def publishable(self) -> bool:
        """Whether a publish can be confirmed now: connected, not blocked by an
        alarm, and the publishing channel open."""
        channel = self._publish_channel
        return self.connected and not self.blocked and channel is not None and not channel.is_closed

    async def ready_to_publish(self) -> bool:
        """:attr:`publishable`, after opening a new publishing channel if the
        connection is up but its channel was lost (a reconnect that restored
        the connection but not the channel)."""
        if self.connected and not self.blocked:
            try:
                await self._open_publish_channel()
            except BrokerUnavailable:
                return False
        return self.publishable

    async def _open_publish_channel(self) -> AbstractChannel:
        """The publishing channel, opened again if it was closed under us.

        :raises BrokerUnavailable: none could be opened (at most one try a second).
        """
        channel = self._publish_channel
        if channel is not None and not channel.is_closed:
            return channel
        if channel is not None:
            await self._renew_publish_channel(channel)
        renewed = self._publish_channel
        if renewed is None or renewed.is_closed:
            raise BrokerUnavailable(f"RabbitMQ at {self._safe_url}: no open publishing channel yet")
        return renewed

    async def _renew_publish_channel(self, refused_on: AbstractChannel) -> None:
        """Publish on a new channel after the broker refused a message.

        A RabbitMQ channel keeps one client per quorum queue it publishes to.
        One that published while the queue's leader was lost (a node killed
        and the connection failed over at once) can go on refusing every
        message to that queue, though the queue has a new leader. A new
        channel starts clean. At most one renewal a second: a full queue
        refuses too, and a new channel does not help it.
        """
        async with self._renewing:
            if self._publish_channel is not refused_on or time.monotonic() - self._renewed_at < 1.0:
                return
            self._renewed_at = time.monotonic()
            channel: AbstractChannel | None = None
            try:
                # Bounded like a publish: opening a channel waits while an alarm blocks the connection.
                async with asyncio.timeout(self.settings.publish_timeout):
                    channel = await self.require().channel(publisher_confirms=True)
                    exchange = await declare_exchange(channel)
            except (*_BROKER_ERRORS, BrokerUnavailable) as exc:
                log.warning("cannot open a new publishing channel (%s); keeping the old one", exc)
                if channel is not None:
                    with contextlib.suppress(*_BROKER_ERRORS, aio_pika.exceptions.ChannelInvalidStateError):
                        await channel.close()
                return
            self._publish_channel, self._exchange = channel, exchange
            log.warning("RabbitMQ refused a publish: publishing on a new channel")
        with contextlib.suppress(*_BROKER_ERRORS, aio_pika.exceptions.ChannelInvalidStateError):
            await refused_on.close()

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        self._ready.clear()
