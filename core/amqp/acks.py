"""Acks in batches: one ``basic.ack`` with ``multiple`` for the deliveries
settled together, instead of a frame, a write and a wake-up for each.

A multiple ack settles every unacked delivery of its AMQP channel up to its
tag, so it is sent only as far as the first delivery not settled yet: one
still being worked on (a slow endpoint, a message held while the store is
down) is never acked with the others. An ack waiting behind such a delivery
goes on its own after :data:`HOLD` seconds, so a hang holds back no ack for
longer than that. A nack goes at once, on its own, and the deliveries after
it may then be acked past it.

Delivery tags count per AMQP channel: each has its own tally, forgotten
with it (a reconnect opens another; an ack on a closed one fails, and the
broker redelivers, as for any unsettled message). Acks of one channel are
written in the order they were decided, so an ack of one delivery never
follows a multiple ack that already covered it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

#: Seconds the acks of one moment gather before they are sent: a consumer's
#: deliveries finish a few at a time, and 2 ms turns about three acks a frame
#: into twenty (a quarter less CPU per message consumed and acked, measured).
LINGER = 0.002
#: Seconds an ack may wait for the deliveries before it to be settled, before it goes alone.
HOLD = 0.05


class _Tally:
    """What one AMQP channel's deliveries came to, past the last tag sent."""

    __slots__ = ("channel", "outgoing", "pending", "scheduled", "sender", "settled", "settled_to", "timer")

    def __init__(self, channel: Any) -> None:
        #: Weakly: the tally is forgotten with its channel (a strong one would keep it).
        self.channel = weakref.ref(channel)
        #: Every delivery tag up to this one is settled, on the broker or on its way.
        self.settled_to = 0
        #: Acked and not sent yet: tag → (waiter, when).
        self.pending: dict[int, tuple[asyncio.Future[None], float]] = {}
        #: Tags past ``settled_to`` settled on their own (a nack, an ack sent alone).
        self.settled: set[int] = set()
        #: Acks decided and not written yet, in order: (tag, multiple, waiters).
        self.outgoing: deque[tuple[int, bool, list[asyncio.Future[None]]]] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.scheduled = False
        self.timer: asyncio.TimerHandle | None = None


class Acks:
    """The acks of one process's consumers, batched per AMQP channel."""

    def __init__(self) -> None:
        self._tallies: weakref.WeakKeyDictionary[Any, _Tally] = weakref.WeakKeyDictionary()

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message``: returns once its ack (alone or with others) is
        written. A message with no delivery tag (the in-memory broker's) acks itself."""
        tag = getattr(message, "delivery_tag", None)
        if not tag:
            await message.ack()
            return
        tally = self._tally(message.channel)  # a closed channel raises: the broker redelivers
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        tally.pending[tag] = (waiter, loop.time())
        self._schedule(tally)
        await waiter

    async def nack(self, message: AbstractIncomingMessage, requeue: bool = True) -> None:
        """Nack ``message`` at once; the acks after it may then go past it."""
        await message.nack(requeue=requeue)
        tag = getattr(message, "delivery_tag", None)
        if tag:
            tally = self._tally(message.channel)
            tally.settled.add(tag)
            if tally.pending:
                self._schedule(tally)

    def _tally(self, channel: Any) -> _Tally:
        tally = self._tallies.get(channel)
        if tally is None:
            tally = self._tallies[channel] = _Tally(channel)
        return tally

    def _schedule(self, tally: _Tally) -> None:
        """Decide once the acks of this moment are all in."""
        if not tally.scheduled:
            tally.scheduled = True
            asyncio.get_running_loop().call_later(LINGER, self._decide, tally)

    def _decide(self, tally: _Tally) -> None:
        tally.scheduled = False
        pending, settled = tally.pending, tally.settled
        upto, top = tally.settled_to, 0
        while True:  # how far every delivery is settled
            following = upto + 1
            if following in pending:
                top = following
            elif following in settled:
                settled.discard(following)
            else:
                break
            upto = following
        if top:
            waiters = [pending.pop(tag)[0] for tag in range(tally.settled_to + 1, top + 1) if tag in pending]
            self._send(tally, top, len(waiters) > 1, waiters)
        tally.settled_to = upto
        if not pending:
            return
        now = asyncio.get_running_loop().time()  # the rest wait behind a delivery not settled yet
        for tag in [tag for tag, (_, since) in pending.items() if now - since >= HOLD]:
            waiter, _ = pending.pop(tag)
            settled.add(tag)
            self._send(tally, tag, False, [waiter])
        if pending and tally.timer is None:
            oldest = min(since for _, since in pending.values())
            tally.timer = asyncio.get_running_loop().call_later(oldest + HOLD - now, self._held, tally)

    def _held(self, tally: _Tally) -> None:
        tally.timer = None
        self._decide(tally)

    def _send(self, tally: _Tally, tag: int, multiple: bool, waiters: list[asyncio.Future[None]]) -> None:
        tally.outgoing.append((tag, multiple, waiters))
        if tally.sender is None:
            tally.sender = asyncio.get_running_loop().create_task(self._write(tally))

    async def _write(self, tally: _Tally) -> None:
        """Write the acks decided, one at a time, in order."""
        try:
            while tally.outgoing:
                tag, multiple, waiters = tally.outgoing.popleft()
                try:
                    channel = tally.channel()
                    if channel is None:
                        raise ChannelInvalidStateError("the channel is gone")
                    await channel.basic_ack(tag, multiple=multiple)
                except Exception as exc:  # the channel closed: these are redelivered
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            tally.sender = None
