"""The in-memory broker routes topic keys the way RabbitMQ does (the same
table is checked against the real RabbitMQ in tests/test_memory_broker_parity.py),
and a consumer's close gives back what it left unacked, as closing an AMQP
channel does (on the real broker: tests/test_broker_restart.py)."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelInvalidStateError

from shipcast.amqp.acks import Acks
from shipcast.amqp.memory import MemoryBroker, topic_matches
from shipcast.amqp.topology import ChannelTopology
from shipcast.delivery.settle import Copy, Settlement, settle

from ..helpers import eventually

pytestmark = pytest.mark.fast

#: (binding pattern, routing key, whether RabbitMQ's topic exchange routes it)
ROUTES = [
    ("acme.OFD", "acme.OFD", True),
    ("acme.OFD", "acme.DEL", False),
    ("acme.*", "acme.OFD", True),
    ("acme.*", "globex.OFD", False),
    ("acme.*", "acme", False),             # * is exactly one word
    ("acme.*", "acme.OFD.extra", False),
    ("*.OFD", "acme.OFD", True),
    ("#", "acme.OFD", True),
    ("#", "acme", True),
    ("acme.#", "acme", True),              # # is zero or more words
    ("acme.#", "acme.OFD.x.y", True),
    ("#.OFD", "acme.OFD", True),
    ("#.OFD", "OFD", True),
    ("#.OFD", "acme.DEL", False),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False),
    ("*.*", "acme.OFD", True),
    ("*.*", "acme", False),
    ("my-shop_2.RESCHEDULE_REQUESTED", "my-shop_2.RESCHEDULE_REQUESTED", True),
]


@pytest.mark.parametrize(("pattern", "key", "routed"), ROUTES)
def test_topic_routing(pattern: str, key: str, routed: bool) -> None:
    assert topic_matches(pattern, key) is routed


async def test_closing_a_consumer_puts_back_what_it_left_unacked_and_a_late_settle_publishes_nothing() -> None:
    broker = MemoryBroker()
    topology = ChannelTopology.build("w", [5])
    handed: list[Any] = []

    async def keep(message: Any) -> None:
        handed.append(message)

    consumer = await broker.consume(topology, 10, keep)
    await broker.publish(aio_pika.Message(b"one", message_id="m1"), topology.work.name, exchange="")
    await broker.publish(aio_pika.Message(b"two", message_id="m2"), topology.work.name, exchange="")
    await eventually(lambda: len(handed) == 2, timeout=5)
    assert [m.message_id for m in handed] == ["m1", "m2"] and not broker.messages(topology.work.name)
    await handed[0].ack()
    await consumer.close()
    # As an AMQP channel's close: the unacked one is back, marked redelivered; the acked one is gone.
    [back] = broker.messages(topology.work.name)
    assert back.message_id == "m2" and back.redelivered
    # Settling it through the closed consumer publishes no copy (a second chain) and acks nothing.
    retry = Settlement((Copy(topology.retry_queue(5), {"x": 1}),))

    async def publish(message: aio_pika.Message, queue: str) -> None:
        await broker.publish(message, queue, exchange="")

    assert await settle(handed[1], retry, publish, Acks()) is False
    assert not broker.messages(topology.retry_queue(5))
    with pytest.raises(ChannelInvalidStateError, match="m2"):
        await handed[1].ack()
