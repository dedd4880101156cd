"""Acks in batches (``shipcast.amqp.acks``) on the real RabbitMQ: what is
acked together goes as one multiple ack, never past a delivery still being
worked on; an ack behind one goes alone soon after; a nack lets the acks
after it pass; and the queue holds exactly what was not acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shipcast.amqp.acks import Acks

from .conftest import AMQP_HOST

pytestmark = pytest.mark.broker


class Consumed:
    """Ten messages published to a queue of their own and consumed on one
    channel, with every ack that channel writes noted (and written)."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.messages: list[AbstractIncomingMessage] = []
        self.written: list[tuple[int, bool]] = []

    async def __aenter__(self) -> Consumed:
        self.connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{self.vhost}")
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=100)
        self.queue = await channel.declare_queue("acks", durable=True)
        for n in range(1, 11):
            await channel.default_exchange.publish(aio_pika.Message(str(n).encode()), "acks")
        wire = await channel.get_underlay_channel()  # the AMQP channel the tags count on
        writes = wire.basic_ack

        async def noted(delivery_tag: int, multiple: bool = False, **options: Any) -> None:
            self.written.append((delivery_tag, multiple))
            await writes(delivery_tag, multiple=multiple, **options)

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
    nack = acks.nack(consumed.number(6), requeue=True)
    await asyncio.wait_for(asyncio.gather(nack, *(acks.ack(m) for m in done)), 10)  # none waits for 3
    assert consumed.written[0] == (tag[2], True)  # 1 and 2 at once
    assert sorted(consumed.written[1:]) == sorted((tag[n], False) for n in (4, 5, 7, 8, 9, 10))  # each alone
    await acks.ack(consumed.number(3))
    assert consumed.written[-1] == (tag[3], False)
    assert await consumed.left() == [b"6"]  # what was nacked, and nothing acked


async def test_acks_after_a_nack_go_past_it_together(consumed: Consumed) -> None:
    acks = Acks()
    tag = {n: consumed.number(n).delivery_tag for n in range(1, 11)}
    await acks.nack(consumed.number(1), requeue=False)
    await asyncio.gather(*(acks.ack(consumed.number(n)) for n in range(2, 11)))
    assert consumed.written == [(tag[10], True)]
    assert await consumed.left() == []  # 1 was dropped, the rest acked


async def test_an_ack_on_a_closed_channel_fails_and_the_broker_has_it_again(consumed: Consumed) -> None:
    acks = Acks()
    first = consumed.number(1)
    await consumed.connection.close()
    with pytest.raises(Exception):  # noqa: B017 - aio-pika's or aiormq's: the channel is gone
        await acks.ack(first)
    assert len(await consumed.left()) == 10
