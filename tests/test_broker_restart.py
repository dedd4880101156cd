"""Publishers and consumers recover from a lost broker by themselves. (A
real RabbitMQ restart under load is scenario 2 of tests/reliability/.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from shipcast import metrics
from shipcast.model.envelope import Event
from shipcast.settings import Settings
from tests.bound import example

from .conftest import make_settings
from .helpers import TcpProxy, Receiver, ShipcastProcess, eventually, partners_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def publish_directly(amqp_url: str, routing_key: str, body: bytes, message_id: str | None = None) -> None:
    """Publish around shipcast, straight to the real broker."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("shipcast.events")
        await exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                message_id=message_id), routing_key)


@contextlib.asynccontextmanager
async def through_a_proxy(vhost: str, sqlite_url: str,
                          **overrides: Any) -> AsyncIterator[tuple[TcpProxy, Settings, str]]:
    """A TCP proxy in front of RabbitMQ, settings that reach the broker
    through it, and the broker's own URL (to publish around shipcast)."""
    proxy = await TcpProxy().start()
    try:
        yield (proxy, make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                                    **overrides), make_settings(vhost, sqlite_url).amqp_url)
    finally:
        await proxy.close()


async def held_in_flight(amqp_url: str, receiver: Receiver, n: int) -> list[Event]:
    """Publish ``n`` OFDs of as many orders around shipcast, and wait until
    ``receiver`` has each one's POST."""
    events = [example("OFD", partner_id="acme", order_id=f"ORD-{i}") for i in range(n)]
    for event in events:
        await publish_directly(amqp_url, "acme.OFD", event.to_json(), message_id=event.event_id)
    await eventually(lambda: len(receiver.requests) == n)
    return events


async def test_consumers_resume_after_the_connection_is_cut(vhost: str, sqlite_url: str) -> None:
    async with through_a_proxy(vhost, sqlite_url) as (proxy, settings, direct):
        async with Receiver() as receiver, ShipcastProcess(settings) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url))
            for _ in range(2):
                await proxy.cut()
                await eventually(lambda: not shipcast.services.broker.connected)
                event = example("DEL", partner_id="acme")
                await publish_directly(direct, "acme.DEL", event.to_json())  # waits in the queue
                await proxy.restore()
                await eventually(lambda: event.event_id in receiver.ids, timeout=30)


#: Seconds the receiver holds each POST (within the webhook timeout): every one
#: of a few is in flight at once, also on a loaded machine.
HOLD = 5.0


async def test_deliveries_in_flight_when_the_connection_drops_finish_and_are_never_sent_twice(
        vhost: str, sqlite_url: str) -> None:
    """The connection lost while deliveries are in flight (RabbitMQ
    restarting, a network cut, a protocol error closing it): their acks
    fail and the broker delivers them again. The deliveries themselves run
    to the end and are recorded, so the copies that come back find them
    delivered and nothing is sent twice. (aiormq cancels a consumer's
    callbacks when its channel closes; a delivery cancelled after its POST
    left, before it was recorded, went out a second time.)"""
    async with through_a_proxy(vhost, sqlite_url, webhook_timeout=3 * HOLD) as (proxy, settings, direct):
        async with Receiver(delay=HOLD) as receiver, ShipcastProcess(settings) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url))
            skipped = metrics.value("shipcast_targets_skipped_total", channel="webhook", reason="delivered")
            events = await held_in_flight(direct, receiver, 8)
            assert receiver.answered == []
            await proxy.cut()  # every POST in flight, none answered yet
            await eventually(lambda: len(receiver.answered) == len(events))
            await proxy.restore()
            found_delivered = lambda: metrics.value(  # noqa: E731
                "shipcast_targets_skipped_total", channel="webhook", reason="delivered") - skipped
            # Each copy back from the broker is found delivered, or is sent again.
            await eventually(lambda: found_delivered() == len(events) or len(receiver.requests) > len(events),
                             timeout=30)
            assert Counter(receiver.ids) == {event.event_id: 1 for event in events}
            for event in events:
                outcomes = [row["outcome"] for row in await shipcast.services.store.list_attempts(event.event_id)]
                assert outcomes == ["delivered"], (event.event_id, outcomes)


async def test_a_failure_in_flight_when_the_connection_drops_is_parked_once(vhost: str, sqlite_url: str) -> None:
    """Deliveries that fail after the connection they came on dropped: the
    broker has each message back already, so the worker publishes no dead
    letter (or retry copy) for them, though a new connection would take it;
    the copy handed out again fails and is parked. One dead letter per
    event, not one per copy (for a retry, two chains of retries)."""
    from shipcast.amqp.parking import list_dead

    async with through_a_proxy(vhost, sqlite_url, webhook_timeout=3 * HOLD) as (proxy, settings, direct):
        async with Receiver(default=400, delay=HOLD) as receiver, ShipcastProcess(settings) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url))
            [topology] = [worker.topology for worker in shipcast.workers if worker.name == "webhook"]
            events = await held_in_flight(direct, receiver, 4)
            # Every POST in flight; the connection is back (a new one) before each is answered 400.
            await proxy.cut()
            await proxy.restore()
            await eventually(lambda: shipcast.services.broker.publishable, timeout=10)
            assert receiver.answered == []
            await eventually(lambda: len(receiver.answered) == 2 * len(events), timeout=30)  # each copy again

            async def parked() -> list[str] | None:
                letters = [letter.event_id for letter in await list_dead(shipcast.services.broker, topology)]
                return letters if len(letters) >= len(events) else None

            await eventually(parked, timeout=30)
            await asyncio.sleep(1.0)  # a second letter for an event, were there one, lands meanwhile
            assert Counter(await parked()) == {event.event_id: 1 for event in events}


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
