"""The in-memory broker's topic routing is RabbitMQ's: each row of the fast
tier's table, bound and published on the real broker."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from tests.conftest import AMQP_HOST
from tests.fast.test_memory_broker import ROUTES

pytestmark = pytest.mark.broker


async def test_the_routing_table_holds_on_rabbitmq(vhost: str) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}/{vhost}")
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("parity", aio_pika.ExchangeType.TOPIC)
        routed = []
        for index, (pattern, key, _) in enumerate(ROUTES):
            queue = await channel.declare_queue(f"parity.{index}", exclusive=True)
            await queue.bind(exchange, pattern)
            await exchange.publish(aio_pika.Message(b"x"), key)
            message = None
            for _ in range(50):  # a publish without confirms: give it a moment to land
                message = await queue.get(fail=False, no_ack=True)
                if message is not None:
                    break
                await asyncio.sleep(0.01)
            routed.append(message is not None)
        assert routed == [expected for _, _, expected in ROUTES]
