"""Acks in batches (``shipcast.amqp.acks``) on the real RabbitMQ: what is
acked together goes as one multiple ack, never past a delivery still being
worked on; an ack behind one goes alone at once; a nack lets the acks after
it pass; and the queue holds exactly what was not acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

from shipcast.amqp.acks import Acks

from .conftest import AMQP_HOST

pytestmark = pytest.mark.broker


class Consumed:
    """Ten messages published to a queue of their own and consumed on one
    channel, with every ack that channel wrote noted."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.messages: list[AbstractIncomingMessage] = []
        self.written: list[tuple[int, bool]] = []

    async def __aenter__(self) -> Consumed:
        self.connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{self.vhost}")
        self.channel = channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=100)
        self.queue = await channel.declare_queue("acks", durable=True)
        for n in range(1, 11):
            await channel.default_exchange.publish(aio_pika.Message(str(n).encode()), "acks")
        wire = await channel.get_underlay_channel()  # the AMQP channel the tags count on
        writes = wire.basic_ack

        async def noted(delivery_tag: int, multiple: bool = False, **options: Any) -> None:
            await writes(delivery_tag, multiple=multiple, **options)
            self.written.append((delivery_tag, multiple))  # once written

        wire.basic_ack = noted  # type: ignore[method-assign]
        got = asyncio.Event()

        async def keep(message: AbstractIncomingMessage) -> None:
            self.messages.append(message)
            if len(self.messages) == 10:
                got.set()

        self.tag = await self.queue.consume(keep)
        await asyncio.wait_for(got.wait(), 10)
        await self.queue.cancel(self.tag)
        return self

    def number(self, n: int) -> AbstractIncomingMessage:
        [message] = [m for m in self.messages if m.body == str(n).encode()]
        return message

    async def left(self) -> list[bytes]:
        """What the queue holds once the consuming channel closed."""
        await self.connection.close()
        async with await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{self.vhost}") as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("acks", durable=True)
            found = []
            while (message := await queue.get(fail=False)) is not None:
                found.append(message.body)
                await message.ack()
            return sorted(found, key=int)

    async def __aexit__(self, *exc: object) -> None:
        if not self.connection.is_closed:
            await self.connection.close()


@pytest.fixture
async def consumed(vhost: str) -> AsyncIterator[Consumed]:
    async with Consumed(vhost) as made:
        yield made


async def test_acks_settled_together_go_as_one_multiple_ack(consumed: Consumed) -> None:
    acks = Acks()
    tags = [m.delivery_tag for m in consumed.messages]
    assert tags == sorted(tags)
    await asyncio.gather(*(acks.ack(m) for m in reversed(consumed.messages)))
    assert consumed.written == [(tags[-1], True)]
    assert await consumed.left() == []


async def test_a_delivery_in_flight_is_never_acked_with_the_others(consumed: Consumed) -> None:
    acks = Acks()
    tag = {n: consumed.number(n).delivery_tag for n in range(1, 11)}
    # 3 is still being worked on, 6 is put back; the rest are done, in any order.
    done = [consumed.number(n) for n in (10, 1, 5, 2, 9, 4, 7, 8)]
    await acks.nack(consumed.number(6), requeue=True)
    await asyncio.wait_for(asyncio.gather(*(acks.ack(m) for m in done)), 10)  # none waits for 3
    assert consumed.written[0] == (tag[2], True)  # 1 and 2 at once
    assert sorted(consumed.written[1:]) == sorted((tag[n], False) for n in (4, 5, 7, 8, 9, 10))  # each alone
    await acks.ack(consumed.number(3))
    assert consumed.written[-1] == (tag[3], False)
    assert await consumed.left() == [b"6"]  # what was nacked, and nothing acked


async def test_acks_racing_a_nack_never_cover_it(consumed: Consumed) -> None:
    """The nack of 1 and the acks of 2..10 at once: the acks go past 1 only
    once its nack is written (a multiple ack first would ack 1, and the nack
    after it would close the channel)."""
    acks = Acks()
    tag = {n: consumed.number(n).delivery_tag for n in range(1, 11)}
    await asyncio.gather(acks.nack(consumed.number(1), requeue=True),
                         *(acks.ack(consumed.number(n)) for n in range(2, 11)))
    assert (tag[1], False) not in consumed.written and len(consumed.written) in (1, 9)  # together, or alone
    assert await consumed.left() == [b"1"]  # put back, not acked; the rest acked


async def test_an_ack_settled_twice_is_refused(consumed: Consumed) -> None:
    acks = Acks()
    await acks.ack(consumed.number(1))
    with pytest.raises(RuntimeError, match="settled twice"):
        await acks.ack(consumed.number(1))
    assert consumed.written == [(consumed.number(1).delivery_tag, False)]


async def test_acks_whose_channel_closed_before_they_went_all_fail_and_are_redelivered(
        consumed: Consumed) -> None:
    """2..5 are acked while 1 is in flight, and their channel closes before
    they go: each waiter gets the failure (settle then leaves the message to
    the broker), and the queue has them all again."""
    acks = Acks(linger=1.0)
    waiting = [asyncio.create_task(acks.ack(consumed.number(n))) for n in range(2, 6)]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in waiting) and consumed.written == []
    await consumed.channel.close()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    assert all(isinstance(result, ChannelInvalidStateError) for result in results), results
    assert consumed.written == []
    assert await consumed.left() == [str(n).encode() for n in range(1, 11)]


async def test_acks_that_returned_survive_their_connection_closing_at_once(consumed: Consumed) -> None:
    """What ``ack`` reported done is on the wire: a worker that stops as soon
    as its deliveries are settled closes its connection, whose writer drops
    what is only queued."""
    acks = Acks()
    await asyncio.gather(*(acks.ack(consumed.number(n)) for n in range(2, 11)))  # each alone: 1 is in flight
    await consumed.connection.close()
    assert await consumed.left() == [b"1"]
