"""The floor: the same job with nothing but aio-pika and aiohttp.

Publish persistent events with publisher confirms to a topic exchange; consume
them from one quorum queue with manual acks; POST each to the receiver. No
validation, no signing, no log: the physical limit of this machine for this job.

Run as a process: ``python -m tests.benchmarks.floor AMQP_URL RECEIVER_URL PREFETCH``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import aiohttp

EXCHANGE = "floor.events"
QUEUE = "floor.webhook"


async def declare(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(exchange, "#")
    return exchange


async def publish(amqp_url: str, bodies: Sequence[tuple[str, bytes]], window: int = 100) -> None:
    """Publish ``(event_id, body)`` pairs, ``window`` confirmed at a time."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare(channel)
        for start in range(0, len(bodies), window):
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(body, message_id=event_id,
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                  content_type="application/json"), "acme.OFD", timeout=30)
                for event_id, body in bodies[start:start + window]))


def post_and_ack(session: aiohttp.ClientSession, url: str) -> Callable[[aio_pika.abc.AbstractIncomingMessage],
                                                                       Awaitable[None]]:
    """The floor's webhook: POST the body as it came, ack on a 2xx, else back to the queue."""
    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with session.post(url, data=message.body, headers={
                "content-type": "application/json", "x-event-id": message.message_id or ""}) as response:
            await response.read()
        if 200 <= response.status < 300:
            await message.ack()
        else:
            await message.nack(requeue=True)
    return on_message


async def consume(amqp_url: str, url: str, prefetch: int) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        await declare(channel)
        queue = await channel.get_queue(QUEUE)

        await queue.consume(post_and_ack(session, url))
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    import uvloop

    uvloop.run(consume(sys.argv[1], sys.argv[2], int(sys.argv[3])))
