"""Publishers and consumers recover from a lost broker by themselves. (A
real RabbitMQ restart under load is scenario 2 of tests/reliability/.)"""

from __future__ import annotations

import aio_pika
import pytest

from tests.bound import example

from .conftest import make_settings
from .helpers import TcpProxy, Receiver, ShipcastProcess, eventually, partners_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def publish_directly(amqp_url: str, routing_key: str, body: bytes) -> None:
    """Publish around shipcast, straight to the real broker."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("shipcast.events")
        await exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key)


async def test_consumers_resume_after_the_connection_is_cut(vhost: str, sqlite_url: str) -> None:
    proxy = await TcpProxy().start()
    settings = make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
    direct = make_settings(vhost, sqlite_url).amqp_url
    try:
        async with Receiver() as receiver, ShipcastProcess(settings) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url))
            for _ in range(2):
                await proxy.cut()
                await eventually(lambda: not shipcast.services.broker.connected)
                event = example("DEL", partner_id="acme")
                await publish_directly(direct, "acme.DEL", event.to_json())  # waits in the queue
                await proxy.restore()
                await eventually(lambda: event.event_id in receiver.ids, timeout=30)
    finally:
        await proxy.close()
