"""Queues and bindings as value objects, and the one declarer that makes them real.

A channel describes its work queue; everything else follows from its name:

* ``shipcast.<channel>``                  quorum work queue, bound to ``shipcast.events``
* ``shipcast.<channel>.retry.<seconds>``  one per delay tier: a quorum queue whose
  per-queue TTL dead-letters back into the work queue (no per-message TTL, no
  delayed-message plugin)
* ``shipcast.<channel>.dead``             the parking lot, replayable

Every queue says what it is in the management UI: ``x-shipcast-channel``
and ``x-shipcast-role`` (work, retry or dead; a retry queue also
``x-shipcast-delay``). :func:`definitions` describes the whole topology for
``POST /api/definitions``, with the policies operators tune and a
least-privilege ``shipcast`` user (``deploy/rabbitmq/definitions.json``).
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
        quorum = {"x-queue-type": "quorum", "x-shipcast-channel": channel}
        work = QueueSpec(
            work_name,
            {
                **quorum,
                "x-shipcast-role": "work",
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
                        "x-shipcast-role": "retry",
                        "x-shipcast-delay": delay,
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
        dead = QueueSpec(dead_name, {**quorum, "x-shipcast-role": "dead"})
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


#: Policies for what operators tune, per queue role (``definitions`` ships them;
#: change them in the UI or with ``rabbitmqctl set_policy``, no redeploy).
#: A queue's own argument wins over a policy for overflow and dead-lettering;
#: for length and delivery limits the lower of the two applies.
POLICIES = (
    ("shipcast-work", r"^shipcast\.[a-z][a-z0-9_]*$",
     {"max-length": 5_000_000, "delivery-limit": DELIVERY_LIMIT}),
    ("shipcast-retry", r"^shipcast\.[a-z][a-z0-9_]*\.retry\.[0-9]+$", {"max-length": 5_000_000}),
    ("shipcast-dead", r"^shipcast\.[a-z][a-z0-9_]*\.dead$", {"max-length": 1_000_000, "overflow": "reject-publish"}),
)


def definitions(topologies: Iterable[ChannelTopology], *, vhost: str = "/", user: str = "shipcast",
                password_hash: str = "") -> dict[str, Any]:
    """The RabbitMQ definitions of shipcast's whole topology on ``vhost``:
    exchanges, queues with their arguments, static bindings, policies, and a
    ``user`` allowed only ``shipcast.*`` (plus the default exchange, which
    retries and dead letters are published through)."""
    exchanges = [(EXCHANGE, "topic"), (CONTROL_EXCHANGE, "fanout"), ("shipcast.tracking.live", "fanout")]
    queues, bindings = [], []
    for topology in topologies:
        for spec in topology.queues:
            queues.append({"name": spec.name, "vhost": vhost, "durable": True, "auto_delete": False,
                           "arguments": dict(spec.arguments)})
            bindings += [{"source": EXCHANGE, "vhost": vhost, "destination": spec.name, "destination_type": "queue",
                          "routing_key": key, "arguments": {}} for key in sorted(spec.bindings)]
    return {
        "rabbit_version": "3.10", "vhosts": [{"name": vhost}],
        "users": [{"name": user, "password_hash": password_hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"]}],
        "permissions": [{"user": user, "vhost": vhost, "configure": r"^shipcast\.",
                         "write": r"^(shipcast\.|amq\.default$)", "read": r"^shipcast\."}],
        "exchanges": [{"name": name, "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}} for name, kind in exchanges],
        "queues": queues, "bindings": bindings,
        "policies": [{"vhost": vhost, "name": name, "pattern": pattern, "apply-to": "queues", "priority": 0,
                      "definition": definition} for name, pattern, definition in POLICIES],
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` of ``password``."""
    import base64
    import hashlib
    import os

    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()
