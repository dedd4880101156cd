"""The parking lot (``shipcast.<channel>.dead``): look at it, and replay it."""

from __future__ import annotations

from dataclasses import dataclass

from shipcast import tracing
from shipcast.amqp import headers as h
from shipcast.amqp.connection import Broker
from shipcast.amqp.topology import QUEUE_PREFIX, ChannelTopology, declare_queue
from shipcast.model.envelope import Event


@dataclass(frozen=True)
class DeadLetter:
    event_id: str | None
    target: str | None
    reason: str | None
    attempts: int | None
    failed_at: str | None
    body: bytes
    #: When the first attempt failed, and the last failure's own reason.
    first_failed_at: str | None = None
    last_error: str | None = None
    channel: str | None = None


async def list_dead(broker: Broker, topology: ChannelTopology, limit: int = 100) -> list[DeadLetter]:
    """Peek at the parking lot; every message stays where it is."""
    channel = await broker.require().channel()
    try:
        queue = await declare_queue(channel, topology.dead)
        found: list[DeadLetter] = []
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            failure = h.Failure.of(dict(message.headers or {}))
            found.append(DeadLetter(message.message_id, failure.target, failure.reason, failure.attempts,
                                    failure.failed_at, message.body, failure.first_failed_at,
                                    failure.last_error, failure.channel))
    finally:
        await channel.close()  # closing without acks puts every message back
    return found


async def park(broker: Broker, channel: str, event: Event, target: str, reason: str,
               status: int | None = None) -> None:
    """Put one target's copy of ``event`` in the channel's parking lot, as the
    worker parks a failed delivery: for a failure that comes to light after
    the delivery (a provider's later report that it could not deliver)."""
    headers = h.dead_headers({h.TARGET: target}, channel, reason, status=status)
    await broker.publish(h.event_message(event, headers=headers), f"{QUEUE_PREFIX}{channel}.dead", exchange="")


async def replay_dead(broker: Broker, topology: ChannelTopology, *, limit: int | None = None,
                      event_ids: set[str] | None = None) -> int:
    """Move parked messages back into the work queue with a fresh retry count.

    Each copy keeps its target, so only the target that failed is tried again.
    A message is removed from the parking lot only once its copy is confirmed.
    Returns how many were replayed.

    When tracing is on, each copy is a trace of its own, linked to the
    original's when it had one; when off, it keeps the original's context.
    """
    channel = await broker.require().channel()
    replayed = 0
    try:
        queue = await declare_queue(channel, topology.dead)
        while limit is None or replayed < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            if event_ids is not None and message.message_id not in event_ids:
                continue  # left unacked: back in the parking lot when the channel closes
            headers = h.replay_headers(dict(message.headers or {}))
            original, target = h.trace_context(headers), h.header_text(headers.get(h.TARGET))
            with tracing.sent_again(topology.work.name, "replay", message.message_id,
                                    {tracing.CHANNEL: topology.channel, tracing.TARGET: target}, link=original) as span:
                if span is not None:
                    headers = h.traced(headers)
                await broker.publish(h.copy_message(message, headers), topology.work.name, exchange="")
            await message.ack()
            replayed += 1
    finally:
        await channel.close()
    return replayed
