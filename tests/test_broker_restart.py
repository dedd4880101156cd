"""Publishers and consumers recover from a lost broker by themselves."""

from __future__ import annotations

import asyncio
import subprocess

import aio_pika
import orjson
import pytest

from shipcast.examples import example

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


async def rabbitmqctl(*args: str) -> None:
    """Run rabbitmqctl off the event loop: shipcast keeps serving meanwhile."""
    await asyncio.to_thread(subprocess.run, ["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_a_real_broker_restart(vhost: str, sqlite_url: str) -> None:
    """RabbitMQ stopped and started under a running shipcast: nothing confirmed
    before the stop is lost, and delivery resumes without restarting shipcast."""
    settings = make_settings(vhost, sqlite_url)
    async with Receiver(delay=0.5) as receiver, ShipcastProcess(settings) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url))
        before = [orjson.loads(example("OFD", partner_id="acme", order_id=f"O{i}").to_json()) for i in range(300)]
        assert (await shipcast.http.post("/v1/events", json=before)).status_code == 202
        try:
            await rabbitmqctl("stop_app")
            await eventually(lambda: not shipcast.services.broker.connected, timeout=30)
            during = await shipcast.http.post("/v1/events", json=orjson.loads(example("OFD").to_json()))
            assert during.status_code == 503
            ready = await shipcast.http.get("/readyz")  # a load balancer takes this process out
            assert ready.status_code == 503 and ready.json()["broker"] == "down"
        finally:
            await rabbitmqctl("start_app")
        await eventually(lambda: shipcast.services.broker.connected, timeout=60)
        await eventually(lambda: _ready(shipcast), timeout=30)  # and puts it back
        after = orjson.loads(example("RET", partner_id="acme").to_json())
        response = await eventually(lambda: _post(shipcast, after), timeout=30)
        assert response
        expected = {e["event_id"] for e in before} | {after["event_id"]}
        await eventually(lambda: expected <= set(receiver.ids), timeout=60)


async def _ready(shipcast: ShipcastProcess) -> bool:
    return (await shipcast.http.get("/readyz")).status_code == 200


async def _post(shipcast: ShipcastProcess, body: dict[str, object]) -> bool:
    return (await shipcast.http.post("/v1/events", json=body)).status_code == 202
