"""Redeclaring queues an earlier shipcast declared with tunables as arguments.

Quorum queues cannot change their arguments: a queue declared with
``x-delivery-limit`` keeps it, and it overrides the ``shipcast-work``
policy. :func:`migrate` moves such a queue's messages to a holding queue,
deletes it, declares it again as this version does, and moves them back.
Events published meanwhile go to the holding queue, then on to the new one
(an event published just as a binding moves reaches both; one copy is kept).
Every message moves with a publisher confirm before it is acked, so nothing
is lost if the migration stops half way: run it again to finish.

The channel's workers must be stopped: a consumer would be cut off when its
queue is deleted. The API may keep running. One migration runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from shipcast.amqp.headers import TARGET as TARGET_HEADER
from shipcast.amqp.headers import copy_message
from shipcast.amqp.management import Management
from shipcast.amqp.topology import ChannelTopology, QueueSpec, declare_exchange, existing_arguments
from shipcast.exceptions import ManagementRefused, MigrationRefused

log = logging.getLogger(__name__)

#: An exclusive queue held while a migration runs: one at a time.
LOCK = "shipcast.migration.lock"
#: The message that proves a queue refuses new messages before it is deleted.
MARKER = "shipcast-migration-seal"
SEAL_TRIES = 100
#: A sealed queue is deleted only once a drain this long after the last one
#: finds nothing: a publish in flight when the seal took hold has landed.
SETTLE = 1.0


@dataclass(frozen=True)
class Migrated:
    queue: str
    #: The legacy arguments the queue no longer has.
    dropped: tuple[str, ...]
    moved: int


async def migrate(connection: AbstractConnection, management: Management,
                  topologies: list[ChannelTopology]) -> list[Migrated]:
    """Migrate every legacy queue of ``topologies`` (and finish any migration
    that stopped half way): retry tiers first, whose messages expire into the
    work queue, then each work queue, which is missing only for a moment.

    :raises MigrationRefused: before anything moves, when a channel's
        workers still consume, shipcast's policies lack what the queues will
        depend on, a queue has arguments no shipcast declared, or another
        migration is running.
    """
    lock = await connection.channel()
    try:
        await lock.declare_queue(LOCK, exclusive=True, arguments={"x-queue-type": "classic"})
    except aiormq.exceptions.ChannelLockedResource:
        raise MigrationRefused("another `shipcast queues migrate` is running; let it finish") from None
    try:
        return await _migrate(connection, management, topologies)
    finally:
        if not lock.is_closed:
            await lock.queue_delete(LOCK)
            await lock.close()


async def _migrate(connection: AbstractConnection, management: Management,
                   topologies: list[ChannelTopology]) -> list[Migrated]:
    plans = []
    for topology in topologies:
        plan = []
        for spec in (*(spec for _, spec in topology.retries), topology.work):
            arguments = await existing_arguments(connection, spec)
            if arguments is None:
                raise MigrationRefused(f"{spec.name} has arguments neither this nor an earlier shipcast declared; "
                                       "move its messages elsewhere and delete it")
            was_legacy = arguments != spec.arguments
            if was_legacy or await _consumers(connection, _holding(spec)) is not None:
                plan.append((spec, was_legacy))
        if plan:
            await _refuse_if_consumed(connection, topology.work)
            plans.append(plan)
    if plans:
        await _refuse_without_policies(management)
    done = []
    for plan in plans:
        for spec, was_legacy in plan:
            done.append(await _migrate_queue(connection, management, spec, was_legacy))
    return done


async def _refuse_without_policies(management: Management) -> None:
    """Without the arguments, the queues dead-letter at least once and refuse
    rather than drop only if the policies say so: complete them first."""
    try:
        await management.ensure_policies()  # completes every one, or is refused
    except ManagementRefused as exc:
        raise MigrationRefused(f"migrating needs a management user tagged policymaker or administrator "
                               f"(SHIPCAST_MANAGEMENT_URL): {exc}") from exc


def _holding(spec: QueueSpec) -> str:
    return f"{spec.name}.migrating"


def _seal(queue: str) -> str:
    """The policy that makes ``queue`` refuse new messages."""
    return f"shipcast-migrating-{queue}"


async def _consumers(connection: AbstractConnection, name: str) -> int | None:
    """How many consume queue ``name``; None when there is no such queue."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.consumer_count or 0
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()


async def _refuse_if_consumed(connection: AbstractConnection, spec: QueueSpec) -> None:
    if consumers := await _consumers(connection, spec.name):
        raise MigrationRefused(
            f"{spec.name} has {consumers} consumer(s): stop the workers of channel "
            f"{spec.arguments.get('x-shipcast-channel')!r}, then migrate")


async def _migrate_queue(connection: AbstractConnection, management: Management, spec: QueueSpec,
                         was_legacy: bool) -> Migrated:
    channel = await connection.channel(publisher_confirms=True)
    for name in (spec.name, _holding(spec)):  # left by a migration that stopped half way
        await management.delete_policy(_seal(name))
    try:
        exchange = await declare_exchange(channel)
        holding = await channel.declare_queue(
            _holding(spec), durable=True,
            arguments={"x-queue-type": "quorum", "x-shipcast-channel": spec.arguments.get("x-shipcast-channel"),
                       "x-shipcast-role": "migrating"})
        keys = await management.queue_bindings(holding.name)
        moved = 0
        if was_legacy:
            old = await channel.declare_queue(spec.name, durable=True, arguments=spec.legacy_arguments)
            keys |= await management.queue_bindings(spec.name)
            # Events published from now on wait in the holding queue. One published while a key
            # is bound to both is in both: the move back keeps one.
            for key in sorted(keys):
                await holding.bind(exchange, key)
                await old.unbind(exchange, key)
            moved = await _drain_and_delete(channel, management, old, holding.name)
        new = await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
        for key in sorted(spec.bindings - keys):
            await new.bind(exchange, key)
        for key in sorted(keys):
            await new.bind(exchange, key)
            await holding.unbind(exchange, key)
        # An event published while a key was bound to both is in the new queue already.
        back = await _drain_and_delete(channel, management, holding, new.name,
                                       seen=await _peek(connection, new.name))
    finally:
        if not channel.is_closed:
            await channel.close()
    moved = moved if was_legacy else back
    dropped = tuple(sorted(set(spec.legacy_arguments) - set(spec.arguments)))
    log.info("migrated %s: %d messages kept; declared again without %s", spec.name, moved, ", ".join(dropped))
    return Migrated(spec.name, dropped, moved)


def _identity(message: AbstractIncomingMessage) -> tuple[str, Any] | None:
    """One delivery to make (an event, and the target a retry is for); None
    for a message without an id, which is never taken for another."""
    if not message.message_id:
        return None
    return message.message_id, (message.headers or {}).get(TARGET_HEADER)


async def _peek(connection: AbstractConnection, name: str) -> set[tuple[str, Any]]:
    """The deliveries queue ``name`` holds; every message stays."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        found = set()
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if (identity := _identity(message)) is not None:
                found.add(identity)
        return found
    finally:
        await channel.close()  # unacked: every message goes back, in order


async def _drain_and_delete(channel: AbstractChannel, management: Management, source: AbstractQueue,
                            destination: str, seen: set[tuple[str, Any]] | None = None) -> int:
    """Move every message from ``source`` to ``destination`` in order, each
    acked only once its copy is confirmed, then delete ``source``. With
    ``seen`` (the deliveries ``destination`` holds), a second copy of a
    delivery is dropped.

    Quorum queues cannot be deleted "if empty", and a retry tier may still
    dead-letter into ``source`` by name. So ``source`` is sealed first: a
    policy of its own refuses every new message (a dead-lettering queue keeps
    what is refused and tries again later), a marker refused proves the seal
    holds, and the queue is deleted only once a drain :data:`SETTLE` seconds
    after the one before finds nothing.
    """
    seal = _seal(source.name)
    await management.put_policy(seal, {"pattern": f"^{re.escape(source.name)}$", "apply-to": "queues",
                                       "priority": 1000, "definition": {"max-length": 0,
                                                                        "overflow": "reject-publish"}})
    try:
        for _ in range(SEAL_TRIES):
            try:
                await channel.default_exchange.publish(aio_pika.Message(b"", message_id=MARKER), source.name)
            except aio_pika.exceptions.DeliveryError:
                break  # refused: sealed
            await asyncio.sleep(0.1)
        else:
            raise MigrationRefused(f"{source.name} still takes messages under its seal policy {seal!r} (is a "
                                   "policy of priority over 1000 applied to it?); nothing was lost")
        taken, moved = await _drain(channel, source, destination, seen)
        while True:  # a publish in flight as the seal took hold lands in time
            await asyncio.sleep(SETTLE)
            taken, more = await _drain(channel, source, destination, seen)
            moved += more
            if not taken:
                break
        await source.delete(if_unused=False, if_empty=False)
    finally:
        await management.delete_policy(seal)
    return moved


async def _drain(channel: AbstractChannel, source: AbstractQueue, destination: str,
                 seen: set[tuple[str, Any]] | None) -> tuple[int, int]:
    """Move what ``source`` holds now; how many messages it held, and how
    many of them moved (not markers or second copies)."""
    taken = moved = 0
    while (message := await source.get(no_ack=False, fail=False)) is not None:
        taken += 1
        identity = _identity(message)
        if message.message_id != MARKER and (seen is None or identity is None or identity not in seen):
            await channel.default_exchange.publish(copy_message(message, dict(message.headers or {})), destination)
            if seen is not None and identity is not None:
                seen.add(identity)
            moved += 1
        await message.ack()
    return taken, moved
