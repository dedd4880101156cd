"""Queues and bindings as value objects, and the one declarer that makes them real.

A channel describes its work queue; everything else follows from its name:

* ``shipcast.<channel>``                  quorum work queue, bound to ``shipcast.events``
* ``shipcast.<channel>.retry.<seconds>``  one per delay tier: a quorum queue whose
  per-queue TTL dead-letters back into the work queue (no per-message TTL, no
  delayed-message plugin)
* ``shipcast.<channel>.dead``             the parking lot, replayable

Every queue says what it is in the management UI: ``x-shipcast-channel``
and ``x-shipcast-role`` (work, retry or dead; a retry queue also
``x-shipcast-delay``). Queues declare only how they are wired (type,
dead-letter routes, retry TTLs); what operators tune (length and delivery
limits, overflow, at-least-once dead-lettering) is in :data:`POLICIES`.
:func:`definitions` describes the whole topology for ``POST /api/definitions``,
with those policies and a least-privilege ``shipcast`` user whose password
hash is made from the operator's secret at deploy time (``shipcast topology``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

log = logging.getLogger(__name__)

EXCHANGE = "shipcast.events"
CONTROL_EXCHANGE = "shipcast.control"
QUEUE_PREFIX = "shipcast."
#: After this many deliveries without a settle (a crash loop), the broker
#: dead-letters the message to the parking lot by itself.
DELIVERY_LIMIT = 20
#: What earlier versions of shipcast declared as arguments, per role, and
#: now leave to policies. A queue declared with them still works as it did (they cap its
#: policy); ``shipcast queues migrate`` redeclares it without them.
LEGACY_ARGUMENTS: Mapping[str, Mapping[str, Any]] = {
    "work": {"x-delivery-limit": DELIVERY_LIMIT, "x-dead-letter-strategy": "at-least-once",
             "x-overflow": "reject-publish"},
    "retry": {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"},
}


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue: its name, arguments and the routing keys it binds."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    bindings: frozenset[str] = frozenset()

    @property
    def legacy_arguments(self) -> dict[str, Any]:
        """The arguments an earlier shipcast declared this queue with."""
        return {**self.arguments, **LEGACY_ARGUMENTS.get(self.arguments.get("x-shipcast-role", ""), {})}


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
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_name,
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


_legacy_seen: set[str] = set()


async def existing_arguments(connection: AbstractConnection, spec: QueueSpec) -> dict[str, Any] | None:
    """The arguments ``spec``'s queue is declared with: this version's (the
    queue is created if missing), an earlier shipcast's (see
    :data:`LEGACY_ARGUMENTS`; logged once), or None for neither.

    Each try is on a channel of its own, which the broker closes when the
    arguments differ: the caller's channel never fails.
    """
    legacy = spec.legacy_arguments
    for arguments in (dict(spec.arguments), legacy) if legacy != spec.arguments else (dict(spec.arguments),):
        probe = await connection.channel()
        try:
            await probe.declare_queue(spec.name, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed:
            continue
        finally:
            if not probe.is_closed:
                await probe.close()
        if arguments is legacy and spec.name not in _legacy_seen:
            _legacy_seen.add(spec.name)
            log.warning("queue %s was declared by an earlier shipcast with %s: it works as before, but those "
                        "arguments override its policy (a policy can lower its limits, not raise them). "
                        "`shipcast queues migrate` redeclares it without them.", spec.name,
                        ", ".join(sorted(set(legacy) - set(spec.arguments))))
        return arguments
    return None


async def declare_queue(channel: AbstractChannel, spec: QueueSpec,
                        arguments: Mapping[str, Any] | None = None) -> AbstractQueue:
    """Declare ``spec`` (idempotent), with ``arguments`` found by
    :func:`existing_arguments` or else this version's.

    :raises aiormq.exceptions.ChannelPreconditionFailed: the queue exists
        with other arguments; ``channel`` is closed.
    """
    return await channel.declare_queue(spec.name, durable=True, arguments=dict(arguments or spec.arguments))


async def declare(connection: AbstractConnection, channel: AbstractChannel,
                  topology: ChannelTopology) -> AbstractQueue:
    """Declare a channel's queues on ``channel`` and its static bindings
    (idempotent), each as it already exists; return the work queue."""
    exchange = await declare_exchange(channel)
    queues = []
    for spec in topology.queues:
        queue = await declare_queue(channel, spec, await existing_arguments(connection, spec))
        for key in spec.bindings:
            await queue.bind(exchange, key)
        queues.append(queue)
    return queues[0]


#: What operators tune, as policies per queue role: ``definitions`` ships
#: them, shipcast creates any that is missing when it starts (and never
#: changes one that exists), and operators change them in the UI or with
#: ``rabbitmqctl set_policy``, with no redeploy. At-least-once dead-lettering
#: needs ``reject-publish`` overflow: a policy that drops one should drop both.
#: One policy applies to a queue: one of higher priority replaces these whole.
POLICIES = (
    ("shipcast-work", r"^shipcast\.[a-z][a-z0-9_]*$",
     {"max-length": 5_000_000, "delivery-limit": DELIVERY_LIMIT, "overflow": "reject-publish",
      "dead-letter-strategy": "at-least-once"}),
    ("shipcast-retry", r"^shipcast\.[a-z][a-z0-9_]*\.retry\.[0-9]+$",
     {"max-length": 5_000_000, "overflow": "reject-publish", "dead-letter-strategy": "at-least-once"}),
    ("shipcast-dead", r"^shipcast\.[a-z][a-z0-9_]*\.dead$", {"max-length": 1_000_000, "overflow": "reject-publish"}),
)


def policy_body(name: str) -> dict[str, Any]:
    """One of :data:`POLICIES` as the management API's ``PUT /api/policies`` takes it."""
    [(pattern, definition)] = [(p, d) for n, p, d in POLICIES if n == name]
    return {"pattern": pattern, "apply-to": "queues", "priority": 0, "definition": definition}


def definitions(topologies: Iterable[ChannelTopology], *, vhost: str = "/", user: str = "shipcast",
                password_hash: str) -> dict[str, Any]:
    """The RabbitMQ definitions of shipcast's whole topology on ``vhost``:
    exchanges, queues with their arguments, static bindings, policies, and a
    ``user`` allowed only ``shipcast.*`` (plus the default exchange, which
    retries and dead letters are published through), who logs in with the
    password ``password_hash`` was made from (:func:`password_hash`)."""
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
        "policies": [{"vhost": vhost, "name": name, **policy_body(name)} for name, _, _ in POLICIES],
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` of ``password``:
    base64 of a 4-byte salt followed by SHA-256 of the salt and the password's
    UTF-8 bytes. The salt is random unless given."""
    import base64
    import hashlib
    import os

    if not password:
        # An empty password is no secret: refuse it rather than store its hash.
        raise ValueError("the RabbitMQ user needs a password: none was given")
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()
