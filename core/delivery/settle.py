"""Settlement: the one place a consumed message is acked or nacked.

The consumer works out a :class:`Settlement` for each message (the copies to
publish first: one per target to a retry tier or to the parking lot; or
that it goes back to the queue), and :func:`settle` carries it out. Copies
are confirmed before the original is acked, so a crash at any point
redelivers rather than loses; a copy that cannot be published puts the
original back. Acks go in batches (:mod:`shipcast.amqp.acks`): one frame for
the deliveries settled together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shipcast.amqp.acks import Acks
from shipcast.amqp.headers import copy_message

log = logging.getLogger(__name__)

Publish = Callable[[aio_pika.Message, str], Awaitable[None]]


@dataclass(frozen=True)
class Copy:
    """A copy of the message, with new headers, for the queue named."""

    queue: str
    headers: dict[str, Any]


@dataclass(frozen=True)
class Settlement:
    """How one message is settled: publish ``copies`` (confirmed), then ack;
    or, with ``requeue``, publish nothing and put it back after ``hold`` seconds."""

    copies: tuple[Copy, ...] = field(default=())
    requeue: bool = False
    hold: float = 0.0


#: Done with: nothing to publish.
ACK = Settlement()


def requeue(hold: float = 0.0) -> Settlement:
    """Back to the queue, unsettled, after ``hold`` seconds."""
    return Settlement(requeue=True, hold=hold)


async def settle(message: AbstractIncomingMessage, settlement: Settlement, publish: Publish, acks: Acks) -> bool:
    """Carry out ``settlement``: exactly one ack or nack of ``message``,
    through the consumer's ``acks``.

    Returns whether it was acked.
    """
    if _channel_closed(message):
        # The connection dropped while it was handled: the broker has it back
        # already, and its copy will be handled again. Publishing this one's
        # retry or dead copy too would start a second chain for the event.
        log.warning("cannot settle %s (its channel closed); it will be redelivered", message.message_id)
        return False
    if not settlement.requeue:
        try:
            for copy in settlement.copies:
                await publish(copy_message(message, copy.headers), copy.queue)
            await acks.ack(message)
            return True
        except (Exception, asyncio.CancelledError) as exc:  # unconfirmed, or the connection dropped: redelivered
            reraise_if_cancelled(exc)  # a publish's channel closed under it cancels the publish, not this task
            log.warning("cannot settle %s (%r); it will be redelivered", message.message_id, exc)
    elif settlement.hold:
        await asyncio.sleep(settlement.hold)
    try:
        await acks.nack(message, requeue=True)
    except (Exception, asyncio.CancelledError) as exc:  # the channel is gone: the broker has it back already
        reraise_if_cancelled(exc)
        log.debug("nack of %s failed", message.message_id, exc_info=True)
    return False


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    channel = getattr(message, "channel", None)
    return bool(getattr(channel, "is_closed", False))


def reraise_if_cancelled(exc: BaseException) -> None:
    """Raise ``exc`` again when it is this task being cancelled (a worker
    stopping past its grace), not an AMQP call of its cut short by its
    channel closing, which aiormq reports as a CancelledError too."""
    task = asyncio.current_task()
    if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
        raise exc
