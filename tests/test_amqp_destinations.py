"""AMQP destinations against the real broker: a second virtual host on the
local RabbitMQ stands for the partner's own broker. Delivered (and verified
with a Standard Webhooks library), refused by the broker (no exchange, no
queue bound) and parked, unreachable, recovered once the exchange exists,
refused destinations, and credentials kept out of the store, the API and the
portal."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from shipcast.exceptions import ConfigError
from tests.bound import example

from .conftest import AMQP_HOST, make_settings
from .helpers import ShipcastProcess, TcpProxy, eventually, run_cli, settled
from .portal import Visitor, signed_in

pytestmark = pytest.mark.broker


@dataclass
class PartnerBroker:
    """A virtual host of the local RabbitMQ, with a user of its own: the partner's broker."""

    vhost: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{AMQP_HOST}/{self.vhost}"

    async def connect(self) -> aio_pika.abc.AbstractRobustConnection:
        return await aio_pika.connect_robust(self.url)

    async def inbox(self, exchange: str = "orders", queue: str = "inbox", binding: str = "#",
                    arguments: dict[str, Any] | None = None) -> None:
        """The partner's side: a topic exchange and a queue bound to it."""
        async with await self.connect() as connection:
            channel = await connection.channel()
            declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            inbox = await channel.declare_queue(queue, durable=True, arguments=arguments)
            await inbox.bind(declared, binding)

    async def received(self, queue: str = "inbox") -> list[aio_pika.abc.AbstractIncomingMessage]:
        found = []
        async with await self.connect() as connection:
            channel = await connection.channel()
            inbox = await channel.get_queue(queue)
            while (message := await inbox.get(fail=False, no_ack=True)) is not None:
                found.append(message)
        return found


@pytest.fixture
def partner_broker(management: httpx.Client) -> Iterator[PartnerBroker]:
    vhost, user = f"shipcast-partner-{uuid.uuid4().hex[:10]}", f"partner-{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    management.put(f"/api/vhosts/{vhost}").raise_for_status()
    management.put(f"/api/users/{user}", json={"password": password, "tags": ""}).raise_for_status()
    management.put(f"/api/permissions/{vhost}/{user}",
                   json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    yield PartnerBroker(vhost, user, password)
    management.delete(f"/api/vhosts/{vhost}")
    management.delete(f"/api/users/{user}")


def amqp_doc(url: str, **destination: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme", "channels": {"amqp": {"destinations": [
        {"id": "main", "url": url, "exchange": "orders", **destination}]}}}]}


async def post(shipcast: ShipcastProcess, event_type: str = "OFD") -> dict[str, Any]:
    event = orjson.loads(example(event_type, partner_id="acme").to_json())
    response = await shipcast.http.post("/v1/events", json=[event])
    assert response.status_code == 202, response.text
    return dict(event)


async def attempts(shipcast: ShipcastProcess, event_id: str) -> list[dict[str, Any]]:
    return await shipcast.services.store.list_attempts(event_id, "amqp")


async def test_an_event_reaches_the_partners_queue_signed(vhost: str, sqlite_url: str,
                                                          partner_broker: PartnerBroker) -> None:
    await partner_broker.inbox()
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(partner_broker.url, routing_key="{partner_id}.{event_type}.{order_id}"))
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "delivered" and row["channel"] == "amqp", row
        secret = (await shipcast.http.get("/v1/partners/acme/amqp/destinations/main/secret")).json()["secret"]
        [attempt] = await attempts(shipcast, event["event_id"])
    [message] = await partner_broker.received()
    assert orjson.loads(message.body) == event
    assert message.routing_key == f"acme.OFD.{event['order']['order_id']}" and message.exchange == "orders"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT and message.message_id == event["event_id"]
    assert message.content_type == "application/json" and message.type == "OFD"
    headers = {name: str(value) for name, value in message.headers.items()}
    assert headers["webhook-id"] == event["event_id"]
    Webhook(secret).verify(message.body, headers)  # raises if forged or stale
    # The attempt log says where it went, never with the credentials.
    assert attempt["outcome"] == "delivered" and attempt["request"]["exchange"] == "orders"
    assert attempt["request"]["routing_key"] == message.routing_key
    assert partner_broker.password not in str(attempt)


async def test_a_filter_keeps_events_from_a_destination_without_an_attempt(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    from shipcast import metrics

    await partner_broker.inbox()
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(partner_broker.url, filter={"any": [{"event_type": "DEL"},
                                                                           {"order.payment.method": "prepaid"}]}))
        before = metrics.value("shipcast_amqp_filtered_total", partner="acme", destination="main")
        kept_out, sent = await post(shipcast, "OFD"), await post(shipcast, "DEL")
        [row] = await eventually(settled(shipcast, sent["event_id"]))
        assert row["status"] == "delivered"
        await eventually(lambda: metrics.value("shipcast_amqp_filtered_total", partner="acme",
                                               destination="main") == before + 1)
        assert await attempts(shipcast, kept_out["event_id"]) == []
    assert [orjson.loads(m.body)["event_id"] for m in await partner_broker.received()] == [sent["event_id"]]


async def test_traced_a_message_carries_its_attempts_context_and_the_trace_names_destinations_filtered(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    """As a webhook request does: the message published carries the attempt
    span's ``traceparent`` (the attempt log shows it), and the channel's span
    names each destination whose filter kept the event out."""
    from .otlp import OtlpReceiver, tracing_to

    await partner_broker.inbox()
    doc = amqp_doc(partner_broker.url)
    doc["partners"][0]["channels"]["amqp"]["destinations"].append(
        {"id": "returns", "url": partner_broker.url, "exchange": "orders", "filter": {"event_type": "RET"}})
    async with OtlpReceiver() as otlp:
        async with tracing_to(otlp, "worker"), ShipcastProcess(make_settings(vhost, sqlite_url),
                                                               channels=["amqp"]) as shipcast:
            await shipcast.apply(doc)
            event = await post(shipcast)
            [row] = await eventually(settled(shipcast, event["event_id"]))
            assert row["status"] == "delivered" and row["target"] == "main", row
            [attempt] = await attempts(shipcast, event["event_id"])
    [message] = await partner_broker.received()
    [process] = otlp.named("process shipcast.amqp")
    [deliver] = otlp.named("deliver amqp")
    assert process.attributes["shipcast.filtered_endpoints"] == ["returns"]
    assert process.attributes["shipcast.targets"] == 1
    sent = str(message.headers["traceparent"])
    assert sent.split("-")[1:3] == [deliver.trace_id, deliver.span_id] and deliver.parent_id == process.span_id
    assert attempt["request"]["headers"]["traceparent"] == sent


@pytest.mark.parametrize(("prepare", "status", "reason"), [
    ("nothing", 404, "no such exchange on the broker: NOT_FOUND - no exchange 'orders'"),
    ("exchange without a queue", 312, "unroutable: no queue is bound to exchange 'orders' for routing key 'acme.OFD'"),
    ("a full queue that rejects publishes", None, "nacked by the broker: it did not take the message"),
])
async def test_a_broker_that_refuses_is_retried_then_parked(vhost: str, sqlite_url: str,
                                                            partner_broker: PartnerBroker, prepare: str,
                                                            status: int | None, reason: str) -> None:
    if prepare == "exchange without a queue":
        await partner_broker.inbox(binding="nothing.matches.this")
    elif prepare == "a full queue that rejects publishes":  # routed, and nacked: the queue takes nothing
        await partner_broker.inbox(arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(partner_broker.url))
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=30)
        assert row["status"] == "dead" and reason in row["last_error"], row
        tried = await attempts(shipcast, event["event_id"])
        # The first try and one per retry tier ("1,2"), each saying why; then the parking lot.
        assert [a["outcome"] for a in tried] == ["retry", "retry", "dead"], tried
        assert all(reason in a["error"] and a["status"] == status for a in tried), tried
        # The log says dead as the message is parked: the parking lot holds it a moment later, once.
        await eventually(lambda: _parked_once(shipcast), timeout=10)


async def _parked_once(shipcast: ShipcastProcess) -> bool:
    channel = await shipcast.services.broker.require().channel()
    try:
        queue = await channel.declare_queue("shipcast.amqp.dead", passive=True)
        return queue.declaration_result.message_count == 1
    finally:
        await channel.close()


async def test_an_unreachable_broker_is_retried_with_a_clear_reason(vhost: str, sqlite_url: str) -> None:
    from .conftest import free_port

    closed = f"amqp://someone:pw@127.0.0.1:{free_port()}/orders"
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(closed))
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=30)
        assert row["status"] == "dead"
        tried = await attempts(shipcast, event["event_id"])
        assert len(tried) == 3 and all("connection refused by 127.0.0.1:" in a["error"] for a in tried), tried
        assert all("pw" not in (a["error"] or "") and "someone" not in str(a) for a in tried)


async def test_wrong_credentials_are_retried_and_say_so(vhost: str, sqlite_url: str,
                                                        partner_broker: PartnerBroker) -> None:
    await partner_broker.inbox()
    wrong = partner_broker.url.replace(partner_broker.password, "not-the-password")
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(wrong))
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=30)
        assert row["status"] == "dead" and "refused the credentials" in row["last_error"], row
    assert await partner_broker.received() == []


async def test_a_destination_recovers_when_its_exchange_appears(vhost: str, sqlite_url: str,
                                                                 partner_broker: PartnerBroker) -> None:
    settings = make_settings(vhost, sqlite_url, retry_schedule="1,1,1,1,1,1,1,1")
    async with ShipcastProcess(settings, channels=["amqp"]) as shipcast:
        await shipcast.apply(amqp_doc(partner_broker.url))
        event = await post(shipcast)

        async def failed_once() -> bool:
            return any(a["outcome"] == "retry" for a in await attempts(shipcast, event["event_id"]))

        await eventually(failed_once)
        await partner_broker.inbox()  # the partner creates its exchange and queue
        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=30)
        assert row["status"] == "delivered", row
        tried = await attempts(shipcast, event["event_id"])
        assert tried[0]["outcome"] == "retry" and tried[-1]["outcome"] == "delivered"
    # Exactly once in the partner's queue: nothing lost, nothing doubled.
    assert [orjson.loads(m.body)["event_id"] for m in await partner_broker.received()] == [event["event_id"]]


class SilentBroker:
    """A port that takes connections and never says a word: a broker that hangs."""

    def __init__(self) -> None:
        self.open: set[asyncio.StreamWriter] = set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open.add(writer)
        try:
            await reader.read()  # until shipcast gives up and closes
        finally:
            self.open.discard(writer)
            writer.close()

    async def __aenter__(self) -> SilentBroker:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in list(self.open):
            writer.close()


async def test_a_hanging_broker_does_not_hold_back_another_partners(vhost: str, sqlite_url: str,
                                                                   partner_broker: PartnerBroker) -> None:
    await partner_broker.inbox()
    settings = make_settings(vhost, sqlite_url, amqp_destination_connect_timeout=12)
    async with SilentBroker() as silent, ShipcastProcess(settings, channels=["amqp"]) as shipcast:
        doc = amqp_doc(f"amqp://u:p@127.0.0.1:{silent.port}/x")
        doc["partners"].append({**amqp_doc(partner_broker.url)["partners"][0], "id": "globex", "name": "Globex"})
        await shipcast.apply(doc)
        stuck = await post(shipcast)
        await eventually(lambda: silent.open)  # acme's connect is waiting on the silent broker
        event = orjson.loads(example("OFD", partner_id="globex").to_json())
        assert (await shipcast.http.post("/v1/events", json=[event])).status_code == 202
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "delivered"
        assert silent.open, "globex was delivered while acme's broker still hung"
        [failed] = await eventually(lambda: attempts(shipcast, stuck["event_id"]))
        assert failed["outcome"] == "retry" and "timed out" in failed["error"], failed
    assert [orjson.loads(m.body)["event_id"] for m in await partner_broker.received()] == [event["event_id"]]


async def test_connections_are_shared_per_broker_bounded_and_closed_when_moved_or_idle(
        vhost: str, partner_broker: PartnerBroker) -> None:
    import ipaddress

    from pamqp.commands import Basic

    from shipcast.plugins.amqp.config import broker_url
    from shipcast.plugins.amqp.connections import Destinations

    await partner_broker.inbox(binding="#")
    other = f"amqp://guest:guest@{AMQP_HOST}/{vhost}"  # a second broker: shipcast's own test vhost
    async with await aio_pika.connect_robust(other) as connection:
        channel = await connection.channel()
        await channel.declare_exchange("orders", aio_pika.ExchangeType.FANOUT)
        await (await channel.declare_queue("inbox")).bind("orders")
    first, second = broker_url(partner_broker.url, None), broker_url(other, None)
    pool = Destinations([ipaddress.ip_network("127.0.0.0/8")], connect_timeout=5, publish_timeout=5,
                        idle=3600, limit=1)
    await pool.start()

    async def publish(on: Destinations, owner: tuple[str, str], url: Any) -> None:
        await on.publish(owner, url, "orders", "acme.OFD", b"{}",
                           Basic.Properties(message_id=uuid.uuid4().hex, delivery_mode=2))

    try:
        await publish(pool, ("acme", "a"), first)
        await publish(pool, ("acme", "b"), first)  # the same broker: the same connection, a channel each
        [shared] = pool.brokers.values()
        assert set(shared.channels) == {("acme", "a"), ("acme", "b")}
        # One connection at most: a third destination on another broker closes the unused one.
        await publish(pool, ("globex", "c"), second)
        assert shared.connection is None and list(pool.brokers) == [str(second)]
        # A destination that moves to another broker leaves its old connection closed.
        moved = pool.brokers[str(second)]
        await publish(pool, ("globex", "c"), first)
        assert moved.connection is None and list(pool.brokers) == [str(first)]
    finally:
        await pool.close()
    # Unused past the idle time: closed by the sweeper.
    brief = Destinations([ipaddress.ip_network("127.0.0.0/8")], connect_timeout=5, publish_timeout=5,
                         idle=0.05, limit=1)
    await brief.start()
    try:
        await publish(brief, ("acme", "a"), first)
        [used] = brief.brokers.values()
        await eventually(lambda: not brief.brokers)
        assert used.connection is None
    finally:
        await brief.close()
    assert len(await partner_broker.received()) == 4


def upstream() -> tuple[str, int]:
    host, port = AMQP_HOST.rsplit(":", 1)
    return host, int(port)


def pool_of(limit: int, idle: float = 3600) -> Any:
    import ipaddress

    from shipcast.plugins.amqp.connections import Destinations

    return Destinations([ipaddress.ip_network("127.0.0.0/8")], connect_timeout=5, publish_timeout=5, idle=idle,
                        limit=limit)


async def publish_on(pool: Any, owner: tuple[str, str], url: str) -> None:
    from pamqp.commands import Basic

    from shipcast.plugins.amqp.config import broker_url

    await pool.publish(owner, broker_url(url, None), "orders", "acme.OFD", b"{}",
                       Basic.Properties(message_id=uuid.uuid4().hex, delivery_mode=2))


def pool_key(url: str) -> str:
    """How the pool names a broker's connection: its URL as the client connects with it."""
    from shipcast.plugins.amqp.config import broker_url

    return str(broker_url(url, None))


def through(proxy: TcpProxy, broker: PartnerBroker) -> str:
    """The partner's broker reached through ``proxy``: another URL, so another connection."""
    return f"amqp://{broker.user}:{broker.password}@127.0.0.1:{proxy.port}/{broker.vhost}"


async def test_two_first_publishes_at_the_connection_cap_open_one_connection(partner_broker: PartnerBroker) -> None:
    """At the cap, with one idle connection: two publishes at once to a new
    broker close it, and share the one connection the first of them opens."""
    await partner_broker.inbox()
    proxy = await TcpProxy(upstream()).start()
    try:
        pool = pool_of(limit=1)
        try:
            await publish_on(pool, ("acme", "a"), partner_broker.url)  # the cap's one connection, idle now
            await asyncio.gather(publish_on(pool, ("acme", "b"), through(proxy, partner_broker)),
                                 publish_on(pool, ("acme", "b"), through(proxy, partner_broker)))
            assert proxy.connections == 1
            assert list(pool.brokers) == [pool_key(through(proxy, partner_broker))]
        finally:
            await pool.close()
        await eventually(lambda: proxy.connections == 0)  # closed with the pool: none left behind
    finally:
        await proxy.close()
    assert len(await partner_broker.received()) == 3


async def test_the_idle_sweep_keeps_a_connection_picked_up_while_it_closed_another(
        partner_broker: PartnerBroker) -> None:
    """Two idle connections; the first one's broker stops answering as it is
    closed, and meanwhile the second is used again: it is no longer idle, and stays open."""
    await partner_broker.inbox()
    proxy = await TcpProxy(upstream()).start()
    pool = pool_of(limit=4)
    try:
        await publish_on(pool, ("acme", "slow"), through(proxy, partner_broker))
        await publish_on(pool, ("acme", "direct"), partner_broker.url)
        slow, direct = pool.brokers.values()
        pool.idle = 0  # both idle from now on
        proxy.freeze()
        sweep = asyncio.create_task(pool.close_idle())
        await eventually(lambda: slow.connection is None)  # closing the first, waiting for its broker's answer
        await publish_on(pool, ("acme", "direct"), partner_broker.url)
        await proxy.restore()
        await sweep
        assert list(pool.brokers.values()) == [direct]
        assert direct.connection is not None and not direct.connection.is_closed
    finally:
        await pool.close()
        await proxy.close()
    assert len(await partner_broker.received()) == 3


async def test_a_destination_taken_out_of_the_config_has_its_channel_closed(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    """Two destinations share a connection; one goes from the config, and its
    channel closes while the other's stays; with both gone, the connection closes."""
    await partner_broker.inbox()
    both = amqp_doc(partner_broker.url)
    both["partners"][0]["channels"]["amqp"]["destinations"].append(
        {"id": "second", "url": partner_broker.url, "exchange": "orders"})
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply(both)
        event = await post(shipcast)

        async def both_delivered() -> bool:
            rows = await settled(shipcast, event["event_id"], ("delivered",))()
            return len(rows) == 2

        await eventually(both_delivered)
        [worker] = shipcast.workers
        pool = worker.channel.destinations
        [broker] = pool.brokers.values()
        kept, dropped = broker.channels[("acme", "main")], broker.channels[("acme", "second")]

        await shipcast.apply(amqp_doc(partner_broker.url))

        async def pruned() -> bool:
            await pool.prune()
            return bool(dropped.is_closed)

        await eventually(pruned)
        assert not kept.is_closed and broker.connection is not None and not broker.connection.is_closed
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme"}]})

        async def gone() -> bool:
            await pool.prune()
            return not pool.brokers

        await eventually(gone)
        assert kept.is_closed and broker.connection is None
    assert len(await partner_broker.received()) == 2


async def test_a_destination_shipcast_may_not_reach_is_refused_at_apply_and_at_send(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    await partner_broker.inbox()
    closed = make_settings(vhost, sqlite_url, webhook_allowed_networks="")
    async with ShipcastProcess(closed, channels=[]) as shipcast:
        with pytest.raises(ConfigError) as caught:
            await shipcast.apply(amqp_doc(partner_broker.url))
        assert "partner 'acme': channels.amqp.destinations.0.url" in str(caught.value)
        assert "127.0.0.0/8 (loopback)" in str(caught.value)
        assert await shipcast.services.store.get_partner("acme") is None
        # The partner API refuses it too, naming the field.
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme"}]})
        response = await shipcast.http.put("/v1/partners/acme/config/channels/amqp", json={"destinations": [
            {"id": "main", "url": "amqp://169.254.169.254/", "exchange": "orders"}]})
        assert response.status_code == 422, response.text
        assert "169.254.0.0/16 (link-local)" in response.json()["errors"]["channels.amqp.destinations.0.url"][0]
    # Applied while allowed, then sent by a worker that may not reach it: refused at connect, not retried.
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=[]) as shipcast:
        await shipcast.apply(amqp_doc(partner_broker.url))
    async with ShipcastProcess(closed, channels=["amqp"]) as shipcast:
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "dead" and "destination refused" in row["last_error"], row
        assert len(await attempts(shipcast, event["event_id"])) == 1
    assert await partner_broker.received() == []


async def test_tls_can_be_required(vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    strict = make_settings(vhost, sqlite_url, webhook_require_https=True)
    async with ShipcastProcess(strict, channels=[]) as shipcast:
        with pytest.raises(ConfigError, match=r"destinations\.0\.url: destination refused: amqps:// is required"):
            await shipcast.apply(amqp_doc(partner_broker.url))


async def test_credentials_and_secrets_are_never_stored_or_shown_in_plaintext(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    await partner_broker.inbox()
    given = "whsec_" + "A" * 43 + "="
    bare = f"amqp://{AMQP_HOST}/{partner_broker.vhost}"
    async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=["amqp"]) as shipcast:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme"}]})
        # The partner sets its destination itself, through the partner API.
        response = await shipcast.http.put("/v1/partners/acme/config/channels/amqp", json=amqp_doc(
            partner_broker.url, secret=given)["partners"][0]["channels"]["amqp"])
        assert response.status_code == 200, response.text
        engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT config FROM partners")).scalar_one()
        engine.dispose()
        assert partner_broker.password not in stored and given not in stored and "A" * 43 not in stored
        assert '"userinfo_secret": "enc:' in stored.replace('":"', '": "') and '"enc:' in stored
        for path in ("/v1/partners", "/v1/partners/acme", "/v1/partners/acme/config"):
            response = await shipcast.http.get(path)
            assert response.status_code == 200, path
            assert partner_broker.password not in response.text and given not in response.text
            assert "enc:" not in response.text, path
        config = (await shipcast.http.get("/v1/partners/acme/config")).json()
        [shown] = config["channels"]["amqp"]["destinations"]
        assert shown["url"] == bare and shown["secret"] == "…redacted…"
        # Delivered with the credentials kept aside, signed with the secret given.
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "delivered", row
        assert partner_broker.password not in str(await attempts(shipcast, event["event_id"]))
        # The routing key changed without repeating the credentials or the secret: both kept.
        response = await shipcast.http.put("/v1/partners/acme/config/channels/amqp", json={"destinations": [
            {"id": "main", "url": bare, "exchange": "orders", "routing_key": "again.{event_type}"}]})
        assert response.status_code == 200, response.text
        assert (await shipcast.http.get("/v1/partners/acme/amqp/destinations/main/secret")).json()["secret"] == given
        second = await post(shipcast, "DEL")
        [row] = await eventually(settled(shipcast, second["event_id"]))
        assert row["status"] == "delivered", row
    keys = [m.routing_key for m in await partner_broker.received()]
    assert keys == ["acme.OFD", "again.DEL"]


def fingerprint(secret: str) -> str:
    """What the store keeps to tell a secret given again: shown nowhere, it would confirm a guess of it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


async def test_a_destination_read_and_sent_back_changed_keeps_its_secret_and_credentials(
        vhost: str, sqlite_url: str, partner_broker: PartnerBroker) -> None:
    """GET, change, PUT or PATCH: what GET shows (secrets masked) goes back
    as is, and what it masked stays as stored. What GET, the answers, the
    operator's listings, the command line and the audit log show is the
    destination's own fields, never what is stored beside them."""
    from .test_partner_config import partner_client

    await partner_broker.inbox()
    first, second = "whsec_" + "A" * 43 + "=", "whsec_" + "B" * 43 + "="
    section = "/v1/partners/acme/config/channels/amqp"
    settings = make_settings(vhost, sqlite_url)
    async with ShipcastProcess(settings, channels=["amqp"]) as shipcast:
        await shipcast.apply({"partners": [{"id": "acme", "name": "Acme"}]})
        async with await partner_client(shipcast) as merchant:
            answers = [await merchant.put(section, json={"destinations": [
                {"id": "main", "url": partner_broker.url, "exchange": "orders", "secret": first}]})]
            # A second secret rotates the first out: it signs beside the new one for a while.
            bare = f"amqp://{AMQP_HOST}/{partner_broker.vhost}"
            answers.append(await merchant.put(section, json={"destinations": [
                {"id": "main", "url": bare, "exchange": "orders", "secret": second}]}))
            assert [a.status_code for a in answers] == [200, 200], answers[-1].text
            shown = (await merchant.get("/v1/partners/acme/config")).json()
            [destination] = shown["channels"]["amqp"]["destinations"]
            assert destination == {"id": "main", "url": bare, "exchange": "orders", "events": ["*"],
                                   "routing_key": "{partner_id}.{event_type}", "secret": "…redacted…"}
            # Nothing changed, and the whole section as shown, sent back: both taken, nothing changes.
            answers.append(await merchant.patch(section, json={}))
            answers.append(await merchant.put(section, json=shown["channels"]["amqp"]))
            assert [a.status_code for a in answers[2:]] == [200, 200], answers[-1].text
            # One field changed, by PATCH and by PUT, the rest as GET showed it.
            destination["routing_key"] = "again.{event_type}"
            answers.append(await merchant.patch(section, json={"destinations": [destination]}))
            assert answers[-1].status_code == 200, answers[-1].text
            again = answers[-1].json()["channels"]["amqp"]
            again["destinations"][0]["description"] = "the ERP's queue"
            answers.append(await merchant.put(section, json=again))
            assert answers[-1].status_code == 200, answers[-1].text
            assert answers[-1].json()["channels"]["amqp"]["destinations"][0] == {
                **destination, "description": "the ERP's queue"}
            kept = (await merchant.get("/v1/partners/acme/amqp/destinations/main/secret")).json()
            assert kept["secret"] == second and kept["previous_secret_valid_until"] is not None
            answers += [await shipcast.http.get("/v1/partners"), await shipcast.http.get("/v1/partners/acme")]
        event = await post(shipcast)
        [row] = await eventually(settled(shipcast, event["event_id"]))
        assert row["status"] == "delivered", row  # with the credentials kept aside
        audit = await shipcast.services.store.list_audit("acme", action="partner.config")
    listed = run_cli(settings, "partners", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [d["description"] for d in orjson.loads(listed.stdout)[0]["channels"]["amqp"]["destinations"]] == [
        "the ERP's queue"]
    assert len(audit) == 4 and audit[-1]["after"]["destinations"][0]["id"] == "main"
    for text in [a.text for a in answers] + [listed.stdout, orjson.dumps(audit).decode()]:
        for stored_beside in ("given_fingerprint", fingerprint(first), fingerprint(second), "previous_secrets",
                              "userinfo_secret", "enc:", partner_broker.password, first, second):
            assert stored_beside not in text, (stored_beside, text)
    [message] = await partner_broker.received()
    assert message.routing_key == "again.OFD"
    Webhook(second).verify(message.body, {name: str(value) for name, value in message.headers.items()})


@pytest.fixture
async def portal_shipcast(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with ShipcastProcess(make_settings(vhost, sqlite_url), workers=False) as running:
        await eventually(lambda: running.services.broker.connected)
        await running.apply({"partners": [{"id": "acme", "name": "Acme"}]})
        yield running


async def test_the_portal_sets_a_destination_with_its_secrets_redacted(
        portal_shipcast: ShipcastProcess, partner_broker: PartnerBroker) -> None:
    shipcast = portal_shipcast
    admin: Visitor = await signed_in(shipcast, "owner@acme.example.com", "acme", "admin")
    try:
        listing = await admin.get("/portal/p/acme/channels")
        assert 'href="/portal/p/acme/channels/amqp"' in listing.text
        form = await admin.get("/portal/p/acme/channels/amqp")
        assert form.status_code == 200 and "Your RabbitMQ brokers" in form.text
        assert "Send a test message" not in form.text and "What customers get" not in form.text
        wrong = await admin.post("/portal/p/acme/channels/amqp", {"destinations": orjson.dumps([
            {"id": "main", "url": partner_broker.url, "exchange": "orders", "routing_key": "{phone}"}]).decode()})
        assert wrong.status_code == 422 and "routing_key: unknown placeholder {phone}" in wrong.text
        saved = await admin.post("/portal/p/acme/channels/amqp", {"destinations": orjson.dumps([
            {"id": "main", "url": partner_broker.url, "exchange": "orders"}]).decode()})
        assert saved.status_code == 303, saved.text[:500]
        partner = await shipcast.services.store.get_partner("acme")
        assert partner is not None
        stored = partner.channels["amqp"]["destinations"][0]
        secret = stored["secret"]
        assert stored["secret"].startswith("enc:") and stored["userinfo_secret"].startswith("enc:")
        page = await admin.get("/portal/p/acme/channels/amqp")
        shown = re.search(r'<textarea id="f-destinations"[^>]*>([^<]*)</textarea>', page.text)
        assert shown is not None
        assert partner_broker.password not in page.text and "enc:" not in page.text
        text = shown.group(1).replace("&#34;", '"')
        destinations = orjson.loads(text)
        assert destinations == [{"id": "main", "url": f"amqp://{AMQP_HOST}/{partner_broker.vhost}", "exchange": "orders",
                                 "routing_key": "{partner_id}.{event_type}", "events": ["*"],
                                 "secret": "…redacted…"}]
        # Saved back as shown, with one change: the secret and the credentials stay.
        destinations[0]["exchange"] = "orders-2"
        again = await admin.post("/portal/p/acme/channels/amqp", {"destinations": orjson.dumps(destinations).decode()})
        assert again.status_code == 303, again.text[:500]
        partner = await shipcast.services.store.get_partner("acme")
        assert partner is not None
        kept = partner.channels["amqp"]["destinations"][0]
        assert kept["exchange"] == "orders-2" and kept["secret"] == secret
        assert kept["userinfo_secret"] == stored["userinfo_secret"]
    finally:
        await admin.aclose()
