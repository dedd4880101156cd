"""An in-memory stand-in for RabbitMQ, for tests that run without a broker.

It does what shipcast relies on the broker for, no more: the events exchange
routes topic keys the way RabbitMQ does (``*`` one word, ``#`` zero or
more), a publish that reaches no queue is refused, a consumer gets at most
``prefetch`` unacked messages, a nack with requeue puts a message back (and
so does closing the consumer, for each it left unacked), and a retry tier's
messages go back to their work queue when the tier's time is up
(:meth:`MemoryBroker.expire`, rather than waiting). It stands where
:class:`~shipcast.amqp.connection.Broker` does, so the worker under test is
the real one; every behaviour it shows is also proven on the real broker.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aiormq.exceptions import ChannelInvalidStateError

from shipcast.amqp.connection import OnMessage
from shipcast.amqp.topology import EXCHANGE, ChannelTopology
from shipcast.exceptions import PublishNotConfirmed


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a binding ``pattern`` matches routing ``key``, as a topic exchange judges it."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


@dataclass
class MemoryMessage:
    """A message as a consumer gets it: the parts shipcast reads, and settlement."""

    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    message_id: str | None
    type: str | None
    timestamp: datetime | None
    routing_key: str
    redelivered: bool = False
    #: The consumer that handed it out, standing for its AMQP channel (``is_closed``).
    channel: MemoryConsumer | None = field(default=None, repr=False)
    _queue: MemoryQueue | None = field(default=None, repr=False)
    _settled: str | None = field(default=None, repr=False)

    async def ack(self) -> None:
        self._settle("ack")

    async def nack(self, requeue: bool = True) -> None:
        self._settle("nack")
        if requeue and self._queue is not None:
            self.redelivered = True
            self._queue.put_back(self)

    async def reject(self, requeue: bool = False) -> None:
        await self.nack(requeue=requeue)

    def _settle(self, how: str) -> None:
        if self.channel is not None and self.channel.is_closed:
            raise ChannelInvalidStateError(f"the channel that handed out {self.message_id} is closed")
        if self._settled is not None:
            raise RuntimeError(f"message {self.message_id} settled twice ({self._settled}, then {how})")
        self._settled = how
        if self._queue is not None:
            self._queue.unacked.pop(id(self), None)
            self._queue.wake()

    @classmethod
    def of(cls, message: aio_pika.Message, routing_key: str) -> MemoryMessage:
        return cls(message.body, dict(message.headers or {}), message.content_type, message.message_id,
                   message.type, message.timestamp, routing_key)

    def fresh(self) -> MemoryMessage:
        """The same message, unsettled, as a queue hands it out again."""
        return MemoryMessage(self.body, self.headers, self.content_type, self.message_id, self.type,
                             self.timestamp, self.routing_key, self.redelivered)


@dataclass
class MemoryQueue:
    name: str
    #: For a retry tier: the queue its messages go back to when their time is up.
    dead_letter_to: str | None = None
    ready: deque[MemoryMessage] = field(default_factory=deque)
    #: Handed out and not settled yet, by id.
    unacked: dict[int, MemoryMessage] = field(default_factory=dict)
    bindings: set[str] = field(default_factory=set)
    consumer: MemoryConsumer | None = None

    def put(self, message: MemoryMessage) -> None:
        message._queue = self
        self.ready.append(message)
        self.wake()

    def put_back(self, message: MemoryMessage) -> None:
        again = message.fresh()
        again._queue = self
        self.ready.appendleft(again)
        self.wake()

    def wake(self) -> None:
        if self.consumer is not None:
            self.consumer.wake()


class MemoryConsumer:
    """Hands a queue's messages to a callback, ``prefetch`` unacked at most."""

    def __init__(self, queue: MemoryQueue, prefetch: int, on_message: OnMessage) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.on_message = on_message
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False
        self.is_closed = False
        self._loop = asyncio.create_task(self._run(), name=f"memory-consumer-{queue.name}")

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._cancelled:
            while self.queue.ready and len(self.queue.unacked) < self.prefetch and not self._cancelled:
                message = self.queue.ready.popleft()
                self.queue.unacked[id(message)] = message
                message.channel = self
                task: asyncio.Task[None] = asyncio.create_task(self.on_message(message))  # type: ignore[arg-type]
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wake.clear()
            await self._wake.wait()

    async def cancel(self) -> None:
        self._cancelled = True
        self._wake.set()
        await asyncio.gather(self._loop, return_exceptions=True)

    async def close(self) -> None:
        """Like closing an AMQP channel: unacked messages go back to the queue."""
        await self.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.queue.consumer = None
        self.is_closed = True  # settling what it handed out fails from now on, as on a closed AMQP channel
        left, self.queue.unacked = self.queue.unacked, {}
        for message in reversed(left.values()):  # each to the front: the first handed out ends up first
            message.redelivered = True
            self.queue.put_back(message)


class MemoryBroker:
    """The broker's part of :class:`~shipcast.amqp.connection.Broker`, in memory."""

    def __init__(self) -> None:
        self.queues: dict[str, MemoryQueue] = {}
        #: Every message confirmed, as (queue, message), in order: what a test asserts on.
        self.published: list[tuple[str, MemoryMessage]] = []
        self.connected = True
        self.blocked = False
        self.fatal = None
        self._ids = itertools.count(1)

    # -- what Broker offers -------------------------------------------------

    async def start(self) -> None:
        return None

    async def connect(self, timeout: float | None = None) -> MemoryBroker:
        return self

    def require(self) -> MemoryBroker:
        return self

    async def close(self) -> None:
        for queue in self.queues.values():
            if queue.consumer is not None:
                await queue.consumer.close()

    async def publish(self, message: aio_pika.Message, routing_key: str, *, exchange: str | None = None) -> None:
        """Route and store ``message``; refused, as RabbitMQ returns a
        mandatory message, when no queue receives it."""
        if exchange == "":
            targets = [self.queues[routing_key]] if routing_key in self.queues else []
        elif exchange is None or exchange == EXCHANGE:
            targets = [queue for queue in self.queues.values()
                       if any(topic_matches(pattern, routing_key) for pattern in queue.bindings)]
        else:
            raise PublishNotConfirmed(f"no exchange {exchange!r} in the in-memory broker")
        if not targets:
            raise PublishNotConfirmed(f"no queue is bound for {routing_key}: nothing received it")
        for queue in targets:
            copy = MemoryMessage.of(message, routing_key)
            self.published.append((queue.name, copy))
            queue.put(copy)

    async def consumers(self, queue: str) -> int:
        """How many consumers ``queue`` has: one at most here."""
        return 0 if self.queues[queue].consumer is None else 1

    async def consume(self, topology: ChannelTopology, prefetch: int, on_message: OnMessage) -> MemoryConsumer:
        self.declare(topology)
        queue = self.queues[topology.work.name]
        queue.consumer = MemoryConsumer(queue, prefetch, on_message)
        return queue.consumer

    # -- what a test does -----------------------------------------------------

    def declare(self, topology: ChannelTopology) -> None:
        """A channel's work queue, retry tiers (each going back to the work
        queue) and parking lot, with its static bindings."""
        work = self.queues.setdefault(topology.work.name, MemoryQueue(topology.work.name))
        work.bindings |= set(topology.work.bindings)
        for _, retry in topology.retries:
            self.queues.setdefault(retry.name, MemoryQueue(retry.name, dead_letter_to=topology.work.name))
        self.queues.setdefault(topology.dead.name, MemoryQueue(topology.dead.name))

    def bind(self, queue: str, keys: Iterable[str]) -> None:
        self.queues[queue].bindings |= set(keys)

    def messages(self, queue: str) -> list[MemoryMessage]:
        """What waits in ``queue`` (not handed out)."""
        return list(self.queues[queue].ready)

    async def expire(self, pattern: str = r".*\.retry\.\d+$") -> int:
        """Send every message waiting in the retry tiers named by ``pattern``
        back to its work queue, as their TTL would; returns how many."""
        moved = 0
        for queue in list(self.queues.values()):
            if queue.dead_letter_to is None or not re.fullmatch(pattern, queue.name):
                continue
            while queue.ready:
                message = queue.ready.popleft()
                back = message.fresh()
                self.queues[queue.dead_letter_to].put(back)
                moved += 1
        return moved

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every consumed queue has nothing ready or unacked."""
        async with asyncio.timeout(timeout):
            while any(queue.consumer is not None and (queue.ready or queue.unacked)
                      for queue in self.queues.values()):
                await asyncio.sleep(0.005)
