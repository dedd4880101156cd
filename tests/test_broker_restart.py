"""Publishers and consumers recover from a lost broker by themselves. (A
real RabbitMQ restart under load is scenario 2 of tests/reliability/.)"""

from __future__ import annotations

from typing import Any

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


async def test_a_publishing_channel_lost_under_a_live_connection_is_opened_again(shipcast: Any) -> None:
    """A reconnect that restores the connection but not its publishing
    channel must not leave ingest failing while /readyz says ready: the next
    publish, or the next probe, opens a new channel."""
    import asyncio

    broker = shipcast.services.broker
    for _ in range(2):
        assert broker._publish_channel is not None
        await broker._publish_channel.close()  # as a restore that failed half way leaves it
        await asyncio.sleep(1.1)  # past the one-renewal-a-second guard
        ready = await shipcast.http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["broker"] == "up", ready.text
        response = await shipcast.http.post("/v1/events", content=example("OFD", partner_id="acme").to_json(),
                                            headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
    await broker._publish_channel.close()
    await asyncio.sleep(1.1)
    response = await shipcast.http.post("/v1/events", content=example("OFD", partner_id="acme").to_json(),
                                        headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text  # healed by the publish itself, never a 500
