"""Queues and bindings as value objects, and the one declarer that makes them real.

A channel describes its work queue; everything else follows from its name:

* ``shipcast.<channel>``                  quorum work queue, bound to ``shipcast.events``
* ``shipcast.<channel>.retry.<seconds>``  one per delay tier: a quorum queue whose
  per-queue TTL dead-letters back into the work queue (no per-message TTL, no
  delayed-message plugin)
* ``shipcast.<channel>.dead``             the parking lot, replayable
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

EXCHANGE = "shipcast.events"
CONTROL_EXCHANGE = "shipcast.control"
QUEUE_PREFIX = "shipcast."
#: After this many deliveries without a settle (a crash loop), the broker
#: dead-letters the message to the parking lot by itself.
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue: its name, arguments and the routing keys it binds."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    bindings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ChannelTopology:
    """The queues of one channel."""

    channel: str
    work: QueueSpec
    retries: tuple[tuple[int, QueueSpec], ...]
    dead: QueueSpec

    @classmethod
    def build(
        cls,
        channel: str,
        delays: Iterable[int],
        *,
        arguments: Mapping[str, Any] | None = None,
        bindings: Iterable[str] = (),
    ) -> ChannelTopology:
        work_name = f"{QUEUE_PREFIX}{channel}"
        dead_name = f"{work_name}.dead"
        quorum = {"x-queue-type": "quorum"}
        work = QueueSpec(
            work_name,
            {
                **quorum,
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                **(arguments or {}),
            },
            frozenset(bindings),
        )
        retries = tuple(
            (
                delay,
                QueueSpec(
                    f"{work_name}.retry.{delay}",
                    {
                        **quorum,
                        "x-message-ttl": delay * 1000,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": work_name,
                        # at-least-once dead-lettering needs reject-publish overflow
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    },
                ),
            )
            for delay in sorted(set(delays))
        )
        dead = QueueSpec(dead_name, dict(quorum))
        return cls(channel, work, retries, dead)

    def retry_queue(self, delay: int) -> str:
        return f"{self.work.name}.retry.{delay}"

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        return (self.work, *(spec for _, spec in self.retries), self.dead)


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    return await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))


async def declare(channel: AbstractChannel, topology: ChannelTopology) -> AbstractQueue:
    """Declare a channel's queues and its static bindings (idempotent);
    return the work queue."""
    exchange = await declare_exchange(channel)
    queues = []
    for spec in topology.queues:
        queue = await declare_queue(channel, spec)
        for key in spec.bindings:
            await queue.bind(exchange, key)
        queues.append(queue)
    return queues[0]
