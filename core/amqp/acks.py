"""Acks in batches: one ``basic.ack`` with ``multiple`` for the deliveries
settled together, instead of a frame (and, on a quorum queue, a settle
command in its log) for each.

The acks of one moment gather for :data:`LINGER` seconds. A multiple ack
settles every unacked delivery of its AMQP channel up to its tag, so it
goes only as far as the first delivery not settled yet: one still being
worked on (a slow endpoint, a message held while the store is down) is
never acked with the others. The acks past it go at once, each alone, as
every ack did before: a delivery finishing out of order waits for no other,
and holds its prefetch slot no longer than the gathering. A nack goes at
once, alone, and the deliveries after it may then be acked past it.

Delivery tags count per AMQP channel: each has its own tally, forgotten
with it (a reconnect opens another; an ack on a closed one fails, and the
broker redelivers, as for any unsettled message). The acks of one channel
are written in the order they were decided, after any nack already written,
so no ack ever follows a multiple ack that covered it; an ack returns once it
is written, as ``message.ack()`` did, so a worker that stops when its
deliveries are settled loses no ack in its connection's queue.
"""

from __future__ import annotations

import asyncio
import copy
import weakref
from collections import deque

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError

#: Seconds the acks of one moment gather before they are decided: a
#: consumer's deliveries finish a few at a time, and 2 ms turns about three
#: acks a frame into twenty when they finish in order (measured).
LINGER = 0.002


class _Tally:
    """What one AMQP channel's deliveries came to, past the last tag acked."""

    __slots__ = ("channel", "outgoing", "pending", "scheduled", "sender", "settled", "settled_to")

    def __init__(self, channel: AbstractChannel) -> None:
        #: Weakly: the tally is forgotten with its channel (a strong one would keep it).
        self.channel = weakref.ref(channel)
        #: Every delivery tag up to this one is settled, on the broker or on its way.
        self.settled_to = 0
        #: Acked and not decided yet: tag → waiter.
        self.pending: dict[int, asyncio.Future[None]] = {}
        #: Tags past ``settled_to`` settled on their own (a nack, an ack sent alone).
        self.settled: set[int] = set()
        #: Acks decided and not queued yet, in order: (tag, multiple, waiters).
        self.outgoing: deque[tuple[int, bool, list[asyncio.Future[None]]]] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.scheduled = False


class Acks:
    """The acks of a consumer's deliveries, batched per AMQP channel."""

    def __init__(self, linger: float = LINGER) -> None:
        self.linger = linger
        self._tallies: weakref.WeakKeyDictionary[AbstractChannel, _Tally] = weakref.WeakKeyDictionary()

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message``: returns once its ack (alone or with others) is
        written. A message with no delivery tag (the in-memory broker's) acks
        itself.

        :raises RuntimeError: ``message`` was settled already.
        """
        tag = getattr(message, "delivery_tag", None)
        if not tag:
            await message.ack()
            return
        tally = self._tally(message.channel)  # a closed channel raises: the broker redelivers
        if tag <= tally.settled_to or tag in tally.settled or tag in tally.pending:
            raise RuntimeError(f"message {message.message_id} (delivery {tag}) settled twice")
        waiter = asyncio.get_running_loop().create_future()
        tally.pending[tag] = waiter
        self._schedule(tally)
        await waiter

    async def nack(self, message: AbstractIncomingMessage, requeue: bool = True) -> None:
        """Nack ``message`` at once; the acks after it may then go past it.
        Only once the nack is written (awaited, not ``wait=False``) does its
        tag count as settled: a multiple ack decided later cannot reach the
        broker before it."""
        await message.nack(requeue=requeue)
        tag = getattr(message, "delivery_tag", None)
        if tag:
            tally = self._tally(message.channel)
            tally.settled.add(tag)
            if tally.pending:
                self._schedule(tally)

    def _tally(self, channel: AbstractChannel) -> _Tally:
        tally = self._tallies.get(channel)
        if tally is None:
            tally = self._tallies[channel] = _Tally(channel)
        return tally

    def _schedule(self, tally: _Tally) -> None:
        if not tally.scheduled:
            tally.scheduled = True
            asyncio.get_running_loop().call_later(self.linger, self._decide, tally)

    def _decide(self, tally: _Tally) -> None:
        """One multiple ack as far as every delivery is settled; each ack past
        a delivery not settled yet alone."""
        tally.scheduled = False
        pending, settled = tally.pending, tally.settled
        upto, top, together = tally.settled_to, 0, []
        while True:
            following = upto + 1
            waiter = pending.pop(following, None)
            if waiter is not None:
                together.append(waiter)
                top = following  # the last acked: a nacked tag is never acked
            elif following in settled:
                settled.discard(following)
            else:
                break
            upto = following
        if together:
            tally.outgoing.append((top, len(together) > 1, together))
        tally.settled_to = upto
        for tag, waiter in pending.items():
            settled.add(tag)
            tally.outgoing.append((tag, False, [waiter]))
        pending.clear()
        if tally.outgoing and tally.sender is None:
            tally.sender = asyncio.get_running_loop().create_task(self._write(tally))

    async def _write(self, tally: _Tally) -> None:
        """Write the acks decided, in order: each queued for the connection's
        writer, the last awaited until it is written, and with it every one
        before (a connection closing drops what is only queued: an ack is
        never reported done before it is on the wire)."""
        try:
            while tally.outgoing:
                batch = list(tally.outgoing)
                tally.outgoing.clear()
                waiters = [waiter for _, _, some in batch for waiter in some]
                try:
                    channel = tally.channel()
                    if channel is None:
                        raise ChannelInvalidStateError("the channel is gone")
                    for index, (tag, multiple, _) in enumerate(batch):
                        await channel.basic_ack(tag, multiple=multiple, wait=index == len(batch) - 1)
                except BaseException as exc:  # the channel closed (aiormq may say so with a CancelledError)
                    failure = exc if isinstance(exc, Exception) \
                        else ChannelInvalidStateError(f"acks not written: {exc!r}")
                    for waiter in waiters:  # every one answered: a waiter left pending would hang its delivery
                        if not waiter.done():
                            waiter.set_exception(copy.copy(failure))  # one each: a traceback each
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            tally.sender = None
