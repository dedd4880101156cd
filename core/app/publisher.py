"""The :class:`Publisher`: publish events from Python (the OMS side) with
ingest's guarantees; ingest publishes through it too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from shipcast import tracing
from shipcast.amqp.connection import Broker
from shipcast.amqp.headers import event_message
from shipcast.amqp.topology import EXCHANGE
from shipcast.model.envelope import Event, parse_events
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings

#: The span of each event's publish.
PUBLISH_SPAN = f"send {EXCHANGE}"


class Publisher:
    """Publish events from Python (the OMS side) with ingest's guarantees.

    Every event is validated first; a batch with one invalid event publishes
    nothing. :meth:`publish` returns the event ids only once RabbitMQ has
    confirmed every one::

        async with Publisher() as publisher:
            ids = await publisher.publish({"event_type": "OFD", ...})
    """

    def __init__(self, amqp_url: str | None = None, *, broker: Broker | None = None,
                 settings: Settings | None = None, registry: Registry | None = None,
                 connect_timeout: float = 10.0) -> None:
        if settings is None:
            settings = Settings(amqp_url=amqp_url) if amqp_url else Settings()
        self.settings = settings
        #: What events are validated against: the plugins ``settings`` load, unless given.
        self.registry = registry or Registry(settings)
        self._own = broker is None
        self.broker = broker or Broker(settings, self.registry.topologies())
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
        parsed = parse_events(list(events), self.registry.event_types)
        return await self.publish_valid(parsed)

    async def publish_valid(self, events: Sequence[Event]) -> list[str]:
        """Publish events already validated by :func:`parse_events`."""
        self.broker.require()
        if len(events) == 1:  # most OMSs post one at a time: no task and gather for it
            await self.publish_one(events[0])
        else:
            await _gather_all(self.publish_one(event) for event in events)
        return [event.event_id for event in events]

    async def publish_one(self, event: Event) -> None:
        """Publish one event already validated, in a span whose context its
        message carries; returns once RabbitMQ confirmed it.

        :raises BrokerUnavailable, PublishNotConfirmed: as :meth:`publish`.
        """
        with tracing.span(PUBLISH_SPAN, "producer") as span:
            if span is not None:
                tracing.describe(span, event, {
                    "messaging.system": "rabbitmq", "messaging.operation.type": "send",
                    "messaging.destination.name": EXCHANGE, "messaging.message.id": event.event_id,
                    "messaging.rabbitmq.destination.routing_key": event.routing_key})
            await self.broker.publish(event_message(event), event.routing_key)


async def _gather_all(coroutines: Iterable[Any]) -> None:
    """Await every coroutine; raise the first error only after all finished,
    so no publish is left running unobserved."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


#: How much larger an event can grow when it is sent on (null groups written out).
SIZE_SLACK = 1024
