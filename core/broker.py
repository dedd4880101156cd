"""The broker connection and the :class:`Publisher`.

One robust connection per process. Publishing uses its own channel with
publisher confirms; every publish has a timeout, and an unconfirmed publish is
an error, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from .batching import cancel
from .envelope import Event, parse_events
from .exceptions import BrokerUnavailable, PublishNotConfirmed, TopologyMismatch
from .settings import Settings
from .topology import declare, declare_exchange

log = logging.getLogger(__name__)

#: Header naming the target a retried or dead-lettered copy is for.
TARGET_HEADER = "x-shipcast-target"
#: Header counting the retry tiers a copy has been through.
ATTEMPT_HEADER = "x-shipcast-attempt"
#: Header saying why a message was dead-lettered.
REASON_HEADER = "x-shipcast-reason"

_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


#: When the event was published, in milliseconds since the epoch (the AMQP
#: timestamp has whole seconds): delivery latency is measured from it.
PUBLISHED_HEADER = "x-shipcast-published-ms"


def event_message(event: Event, body: bytes | None = None, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """The AMQP message carrying an event: persistent JSON, id and type in
    properties, and the time of publishing in a header."""
    return aio_pika.Message(
        body if body is not None else event.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        type=event.event_type,
        timestamp=datetime.now(UTC),
        app_id="shipcast",
        headers={PUBLISHED_HEADER: int(time.time() * 1000), **(headers or {})},
    )


def header_int(value: Any) -> int | None:
    """An integer header, tolerating strings and junk from foreign publishers."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def header_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def copy_message(message: aio_pika.abc.AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a consumed message with new headers (for a retry
    tier, the parking lot, or a replay)."""
    return aio_pika.Message(
        message.body, headers=headers, content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
        type=message.type, timestamp=message.timestamp, app_id="shipcast")


class Broker:
    """One robust connection to RabbitMQ, opened in the background.

    ``start()`` returns at once; until the broker answers, :meth:`require`
    raises :class:`BrokerUnavailable`, so ingest can answer 503 instead of
    hanging. After a drop, aio-pika reconnects and restores channels, queues
    and consumers by itself.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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

    async def _connect(self) -> None:
        delay = 0.2
        while self.connection is None:
            try:
                connection = await aio_pika.connect_robust(
                    self.settings.amqp_url, reconnect_interval=1, client_properties={"connection_name": "shipcast"}
                )
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
        from .plugin_manager import channels

        channel = await connection.channel()
        try:
            for channel_class in channels().values():
                await declare(connection, channel, channel_class.topology(self.settings.retry_delays))
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
        channel = self._publish_channel
        assert channel is not None and self._exchange is not None
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
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            # A returned message (no queue bound) is acked too, but reached nobody.
            raise PublishNotConfirmed(f"no queue is bound for {routing_key}: nothing received it")

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


class Publisher:
    """Publish events from Python (the OMS side) with ingest's guarantees.

    Every event is validated first; a batch with one invalid event publishes
    nothing. :meth:`publish` returns the event ids only once RabbitMQ has
    confirmed every one::

        async with Publisher() as publisher:
            ids = await publisher.publish({"event_type": "OFD", ...})
    """

    def __init__(self, amqp_url: str | None = None, *, broker: Broker | None = None,
                 settings: Settings | None = None, connect_timeout: float = 10.0) -> None:
        if settings is None:
            settings = Settings(amqp_url=amqp_url) if amqp_url else Settings()
        self.settings = settings
        self._own = broker is None
        self.broker = broker or Broker(settings)
        self.connect_timeout = connect_timeout

    async def __aenter__(self) -> Publisher:
        if self._own:
            await self.broker.connect(self.connect_timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own:
            await self.broker.close()

    async def publish(self, *events: Event | dict[str, Any]) -> list[str]:
        """Validate and publish events; return their ids once all are confirmed.

        :raises InvalidEvent: any event invalid (nothing is published).
        :raises BrokerUnavailable, PublishNotConfirmed: not all were confirmed;
            some may have been, and publishing the same ids again is safe
            because consumers deduplicate on ``event_id``.
        """
        parsed = parse_events(list(events))
        return await self.publish_valid(parsed)

    async def publish_valid(self, events: Sequence[Event]) -> list[str]:
        """Publish events already validated by :func:`parse_events`."""
        self.broker.require()
        await _gather_all(self.broker.publish(event_message(event), event.routing_key) for event in events)
        return [event.event_id for event in events]


async def _gather_all(coroutines: Iterable[Any]) -> None:
    """Await every coroutine; raise the first error only after all finished,
    so no publish is left running unobserved."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
