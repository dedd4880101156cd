"""The Python Publisher (the OMS side) keeps ingest's guarantees in-process."""

from __future__ import annotations

import aio_pika
import orjson
import pytest

from shipcast.app.publisher import Publisher
from tests.bound import example
from shipcast.exceptions import BrokerUnavailable, InvalidEvent
from shipcast.settings import Settings

from .conftest import make_settings

pytestmark = pytest.mark.broker


async def drain(settings: Settings, queue: str) -> list[bytes]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        bodies = []
        while message := await q.get(no_ack=True, fail=False):
            bodies.append(message.body)
        return bodies


async def test_publish_returns_ids_once_confirmed_and_the_event_is_in_the_queue(settings: Settings) -> None:
    event = example("OFD", partner_id="acme")
    async with Publisher(settings=settings) as publisher:
        ids = await publisher.publish(event, orjson.loads(example("DEL").to_json()))
    assert ids[0] == event.event_id and len(ids) == 2
    bodies = await drain(settings, "shipcast.archive")  # the archive binds every event
    assert [orjson.loads(b)["event_id"] for b in bodies] == ids
    assert bodies[0] == event.to_json()


async def test_an_invalid_event_in_a_batch_publishes_nothing(settings: Settings) -> None:
    bad = orjson.loads(example("DEL").to_json())
    bad["otp"] = {"code": "1234"}
    async with Publisher(settings=settings) as publisher:
        with pytest.raises(InvalidEvent) as exc:
            await publisher.publish(example("OFD"), bad)
    assert exc.value.errors[0]["loc"] == [1, "otp"]
    assert await drain(settings, "shipcast.archive") == []


async def test_an_unreachable_broker_is_an_error_not_a_hang(vhost: str, sqlite_url: str) -> None:
    from .conftest import free_port

    settings = make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    with pytest.raises(BrokerUnavailable, match="no answer from RabbitMQ"):
        async with Publisher(settings=settings, connect_timeout=1):
            pass


async def test_a_queue_with_other_arguments_is_a_clear_error_not_an_endless_retry(settings: Settings) -> None:
    from shipcast.exceptions import TopologyMismatch

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("shipcast.webhook", durable=True)  # classic, as by hand
    with pytest.raises(TopologyMismatch, match="declared with other arguments.*Delete that queue"):
        async with Publisher(settings=settings, connect_timeout=10):
            pass
