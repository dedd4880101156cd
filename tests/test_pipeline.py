"""The pipeline end to end on the real RabbitMQ: an event posted over HTTP
arrives at a local receiver as a signed webhook; failures retry per target,
park in the dead queue, and replay."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from shipcast import metrics
from shipcast.model.event_types import GROUPS
from tests.bound import example
from shipcast.settings import Settings
from shipcast.amqp.parking import list_dead, replay_dead

from .conftest import TOKEN, make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc

pytestmark = pytest.mark.broker


def body_of(event_type: str, partner_id: str = "acme", **kwargs: Any) -> dict[str, Any]:
    return orjson.loads(example(event_type, partner_id=partner_id, **kwargs).to_json())


async def secret_of(shipcast: ShipcastProcess, partner_id: str, endpoint: str = "main") -> str:
    """The endpoint's secret, as its partner fetches it."""
    response = await shipcast.http.get(f"/v1/partners/{partner_id}/endpoints/{endpoint}/secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def queue_depth(settings: Settings, name: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def test_an_event_posted_over_http_arrives_signed_with_every_group(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    events = [body_of(t) for t in ("OFD", "DEL", "FAIL", "RET")]
    response = await shipcast.http.post("/v1/events", json=events)
    assert response.status_code == 202, response.text
    assert response.json()["ids"] == [e["event_id"] for e in events]

    await eventually(lambda: len(receiver.requests) == 4)
    verifier = Webhook(await secret_of(shipcast, "acme"))
    by_type = {}
    for request in receiver.requests:
        payload = verifier.verify(request.body, {k.lower(): v for k, v in request.headers.items()})
        assert request.headers["webhook-id"] == payload["event_id"]
        by_type[payload["event_type"]] = payload
    expected = {"OFD": {"rider", "otp"}, "DEL": {"rider", "delivery_confirmation"},
                "FAIL": {"rider", "failure"}, "RET": {"return"}}
    for event_type, groups in expected.items():
        payload = by_type[event_type]
        assert set(GROUPS) <= set(payload)
        assert {g for g in GROUPS if payload[g] is not None} == {"order"} | groups

    # The delivery log and the archive agree with the receiver.
    detail = await eventually(lambda: _delivered_detail(shipcast, events[0]["event_id"]))
    assert detail["event"]["event_id"] == events[0]["event_id"]
    assert detail["deliveries"][0]["status"] == "delivered"
    assert detail["attempts"][0]["status"] == 200 and detail["attempts"][0]["response"] == "answer 200"


async def _delivered_detail(shipcast: ShipcastProcess, event_id: str) -> dict[str, Any] | None:
    response = await shipcast.http.get(f"/v1/events/{event_id}")
    if response.status_code != 200:
        return None
    detail: dict[str, Any] = response.json()
    return detail if detail["deliveries"] and detail["attempts"] else None


async def test_a_tampered_body_fails_verification(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    assert (await shipcast.http.post("/v1/events", json=body_of("OFD"))).status_code == 202
    await eventually(lambda: receiver.requests)
    request = receiver.requests[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(await secret_of(shipcast, "acme")).verify(request.body.replace(b"4821", b"0000"), headers)


async def test_each_endpoint_gets_only_its_event_types(shipcast: ShipcastProcess) -> None:
    async with Receiver() as ops, Receiver() as finance:
        doc = {"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
            {"id": "ops", "url": ops.url, "events": ["OFD", "FAIL"]},
            {"id": "finance", "url": finance.url, "events": ["DEL"]},
        ]}}}]}
        await shipcast.apply(doc)
        for event_type in ("OFD", "DEL", "FAIL", "RET"):
            assert (await shipcast.http.post("/v1/events", json=body_of(event_type))).status_code == 202
        await eventually(lambda: len(ops.requests) == 2 and len(finance.requests) == 1)
        await asyncio.sleep(0.5)
        assert sorted(r.json["event_type"] for r in ops.requests) == ["FAIL", "OFD"]
        assert [r.json["event_type"] for r in finance.requests] == ["DEL"]


async def test_a_receiver_failing_twice_gets_exactly_one_success_after_two_retries(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    receiver.script = [500, 503]
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = body_of("OFD")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: receiver.answered == [500, 503, 200], timeout=20)
    await asyncio.sleep(2.5)  # longer than every retry tier: nothing more may arrive
    assert receiver.answered == [500, 503, 200]
    assert set(receiver.ids) == {event["event_id"]}
    attempts = await shipcast.services.store.list_attempts(event["event_id"], "webhook")
    assert [(a["outcome"], a["status"]) for a in attempts] == [("retry", 500), ("retry", 503), ("delivered", 200)]
    [delivery] = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)


async def test_one_failing_endpoint_never_resends_to_a_healthy_one(shipcast: ShipcastProcess) -> None:
    async with Receiver(default=500) as broken, Receiver() as healthy:
        doc = {"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": {"endpoints": [
            {"id": "broken", "url": broken.url}, {"id": "healthy", "url": healthy.url}]}}}]}
        await shipcast.apply(doc)
        assert (await shipcast.http.post("/v1/events", json=body_of("DEL"))).status_code == 202
        await eventually(lambda: len(broken.requests) == 3, timeout=20)
        assert len(healthy.requests) == 1


async def test_a_receiver_that_always_fails_ends_in_the_dead_queue_and_replays(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    receiver.default = 500
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = body_of("FAIL")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    topology = shipcast.workers[[w.name for w in shipcast.workers].index("webhook")].topology

    async def parked() -> list[Any]:
        return await list_dead(shipcast.services.broker, topology)

    [letter] = await eventually(parked, timeout=20)
    assert letter.event_id == event["event_id"] and letter.target == "main"
    assert letter.reason == "retries exhausted after 3 attempts: HTTP 500"
    assert len(receiver.requests) == 3
    [delivery] = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
    assert delivery["status"] == "dead" and delivery["last_status"] == 500

    receiver.default = 200
    assert await replay_dead(shipcast.services.broker, topology) == 1
    await eventually(lambda: receiver.answered[-1:] == [200])
    assert receiver.ids == [event["event_id"]] * 4
    await eventually(lambda: _status(shipcast, event["event_id"], "delivered"))
    assert await queue_depth(shipcast.settings, topology.dead.name) == 0


async def _status(shipcast: ShipcastProcess, event_id: str, status: str) -> bool:
    rows = await shipcast.services.store.list_deliveries(event_id=event_id)
    return bool(rows) and rows[0]["status"] == status


@pytest.mark.parametrize(("status", "headers", "outcome"), [
    (301, {"Location": "http://10.0.0.1/internal"}, "redirect"),
    (429, {"Retry-After": "2"}, "HTTP 429"),
    (404, {}, "HTTP 404"),
])
async def test_non_2xx_answers_are_retried(shipcast: ShipcastProcess, receiver: Receiver, status: int,
                                           headers: dict[str, str], outcome: str) -> None:
    receiver.script, receiver.headers = [status], headers
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = body_of("OFD")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: receiver.answered == [status, 200], timeout=20)
    first, second = receiver.requests
    attempts = await shipcast.services.store.list_attempts(event["event_id"])
    assert outcome in attempts[0]["error"]
    if status == 429:  # Retry-After: 2 skips the 1 s tier
        assert second.at - first.at >= 1.9


async def test_a_gone_endpoint_is_disabled(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    receiver.default = 410
    await shipcast.apply(partners_doc("acme", receiver.url))
    first, second = body_of("OFD"), body_of("DEL")
    assert (await shipcast.http.post("/v1/events", json=first)).status_code == 202
    await eventually(lambda: _status(shipcast, first["event_id"], "dead"))
    # The worker learns of the disable a moment after the delivery is logged dead.
    await eventually(lambda: shipcast.services.partners.is_disabled("webhook", "acme", "main"))
    skipped = metrics.value("shipcast_targets_skipped_total", channel="webhook", reason="disabled")
    assert (await shipcast.http.post("/v1/events", json=second)).status_code == 202
    await eventually(lambda: metrics.value("shipcast_targets_skipped_total", channel="webhook",
                                           reason="disabled") == skipped + 1)
    assert receiver.ids == [first["event_id"]]
    assert await shipcast.services.store.get_disabled_targets() == {("webhook", "acme", "main")}
    # Applying the partner again re-enables it.
    receiver.default = 200
    await shipcast.apply(partners_doc("acme", receiver.url))
    assert await shipcast.services.store.get_disabled_targets() == set()
    third = body_of("RET")
    assert (await shipcast.http.post("/v1/events", json=third)).status_code == 202
    await eventually(lambda: receiver.ids == [first["event_id"], third["event_id"]])


@pytest.mark.parametrize(("host", "reason"), [
    ("127.0.0.1", "destination refused: 127.0.0.1 is in 127.0.0.0/8 (loopback)"),
    # Via the resolver: the rule, never the address the name resolved to.
    ("localhost", "destination refused: localhost: resolves to an address that is in 127.0.0.0/8 (loopback)"),
])
async def test_a_private_destination_is_refused_at_send_unless_allowed(vhost: str, sqlite_url: str, host: str,
                                                                        reason: str) -> None:
    """Registered while its network was allowed; refused at send once it is not."""
    async with Receiver() as receiver:
        async with ShipcastProcess(make_settings(vhost, sqlite_url), channels=[]) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url.replace("127.0.0.1", host)))
        async with ShipcastProcess(make_settings(vhost, sqlite_url, webhook_allowed_networks="")) as shipcast:
            event = body_of("OFD")
            assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
            await eventually(lambda: _status(shipcast, event["event_id"], "dead"))
            [attempt] = await shipcast.services.store.list_attempts(event["event_id"])
            assert attempt["error"].startswith(reason)
            assert host == "127.0.0.1" or "127.0.0.1" not in attempt["error"]
        assert receiver.requests == []


async def test_an_event_already_delivered_is_not_sent_again(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = example("OFD", partner_id="acme")
    assert (await shipcast.http.post("/v1/events", json=orjson.loads(event.to_json()))).status_code == 202
    await eventually(lambda: _status(shipcast, event.event_id, "delivered"))
    skipped = metrics.value("shipcast_targets_skipped_total", channel="webhook", reason="delivered")
    # The OMS posts it again (after a timeout, say), and a copy arrives as a retry would.
    from shipcast.amqp.headers import TARGET as TARGET_HEADER, event_message

    assert (await shipcast.http.post("/v1/events", json=orjson.loads(event.to_json()))).status_code == 202
    await shipcast.services.broker.publish(event_message(event, headers={TARGET_HEADER: "main"}),
                                           "shipcast.webhook", exchange="")
    await eventually(lambda: metrics.value("shipcast_targets_skipped_total", channel="webhook",
                                           reason="delivered") == skipped + 2)
    assert receiver.ids == [event.event_id]
    # A replay asked for by an operator is the exception: it is sent again.
    from shipcast.delivery.replay import replay_deliveries

    assert await replay_deliveries(shipcast.services, event_id=event.event_id) == 1
    await eventually(lambda: receiver.ids == [event.event_id] * 2)


async def test_a_poison_message_is_parked_and_the_worker_keeps_serving(
        shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    connection = await aio_pika.connect(shipcast.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("shipcast.events")
        for body in (b'{"event_type": "OFD", "truncated', b"\x00\xffbinary", b'{"event_type": "NOPE"}'):
            await exchange.publish(aio_pika.Message(body, message_id="poison"), "acme.OFD")
    event = body_of("OFD")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: receiver.ids == [event["event_id"]])
    topology = next(w.topology for w in shipcast.workers if w.name == "webhook")
    letters = await eventually(lambda: _dead(shipcast, topology, 3))
    assert all(letter.reason.startswith("unparseable message") for letter in letters)
    assert any("unknown event type 'NOPE'" in letter.reason for letter in letters)


async def _dead(shipcast: ShipcastProcess, topology: Any, count: int) -> list[Any] | None:
    letters = await list_dead(shipcast.services.broker, topology)
    return letters if len(letters) >= count else None


class TestIngest:
    async def test_no_token_wrong_token_and_unset_token_are_refused(
            self, shipcast: ShipcastProcess, vhost: str, sqlite_url: str) -> None:
        event = body_of("OFD")
        for headers in ({"authorization": ""}, {"authorization": "Bearer wrong"}, {"authorization": "Basic eDp5"}):
            response = await shipcast.http.post("/v1/events", json=event, headers=headers)
            assert response.status_code == 401, headers
        unset = make_settings(vhost, sqlite_url, api_token=None)
        async with ShipcastProcess(unset, workers=False) as bare:
            response = await bare.http.post("/v1/events", json=event, headers={"authorization": "Bearer x"})
            assert response.status_code == 401
            assert "SHIPCAST_API_TOKEN is not set" in response.json()["detail"]
        assert await shipcast.services.store.list_events() == []

    async def test_the_token_is_read_as_every_route_reads_it_and_a_body_may_come_in_pieces(
            self, shipcast: ShipcastProcess, receiver: Receiver) -> None:
        """Ingest serves the operator's token itself, past FastAPI's routing
        (a lean path); it reads the token as the other routes' dependency does."""
        await shipcast.apply(partners_doc("acme", receiver.url))
        sent = []
        for header in (f"bearer {TOKEN}", f"BEARER   {TOKEN}", f"Bearer {TOKEN}"):
            event = body_of("OFD")
            response = await shipcast.http.post("/v1/events", json=event, headers={"authorization": header})
            assert response.status_code == 202 and response.json() == {"ids": [event["event_id"]]}, header
            assert response.headers["content-type"] == "application/json"
            sent.append(event["event_id"])
        for header in (f"Bearer{TOKEN}", f"Token {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
            response = await shipcast.http.post("/v1/events", json=body_of("OFD"), headers={"authorization": header})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", header
        # Of two Authorization headers, the first is the one read, by ingest as by every route.
        async with httpx.AsyncClient(base_url=shipcast.base_url) as bare:
            twice = [("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")]
            refused = await bare.post("/v1/events", json=body_of("OFD"), headers=twice)
            assert refused.status_code == 401
            assert (await bare.get("/v1/partners", headers=twice)).status_code == 401

            # A body sent in pieces (chunked, no length) is read whole.
            event = body_of("DEL")
            raw = orjson.dumps(event)

            async def pieces() -> Any:
                for start in range(0, len(raw), 100):
                    yield raw[start:start + 100]

            response = await bare.post("/v1/events", content=pieces(),
                                       headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
            assert response.status_code == 202 and response.json() == {"ids": [event["event_id"]]}
            sent.append(event["event_id"])

        # A caller gone half way through its body gets no answer, and nothing of it is published or counted.
        codes = ("202", "400", "413", "422", "500")
        counted = [metrics.value("shipcast_ingest_requests_total", code=code) for code in codes]
        cut = body_of("RET")
        raw = orjson.dumps(cut)
        reader, writer = await asyncio.open_connection("127.0.0.1", shipcast.settings.port)
        writer.write(b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer " + TOKEN.encode() + b"\r\ncontent-length: "
                     + str(len(raw)).encode() + b"\r\n\r\n" + raw[: len(raw) // 2])
        await writer.drain()
        with pytest.raises(TimeoutError):  # no answer to half a body
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.3)  # time for the server to see it gone, and answer or count if it would
        assert [metrics.value("shipcast_ingest_requests_total", code=code) for code in codes] == counted
        last = body_of("FAIL")
        assert (await shipcast.http.post("/v1/events", json=last)).status_code == 202
        sent.append(last["event_id"])
        await eventually(lambda: len(receiver.ids) >= len(sent))
        await asyncio.sleep(0.5)  # time for anything else to arrive
        assert sorted(receiver.ids) == sorted(sent)

    async def test_invalid_events_get_422_with_field_errors_and_nothing_is_published(
            self, shipcast: ShipcastProcess, receiver: Receiver) -> None:
        await shipcast.apply(partners_doc("acme", receiver.url))
        good, bad = body_of("OFD"), body_of("DEL")
        bad["otp"] = {"code": "4821"}
        bad["occurred_at"] = "2026-11-29T10:00:00"
        response = await shipcast.http.post("/v1/events", json=[good, bad])
        assert response.status_code == 422
        assert {tuple(e["loc"]) for e in response.json()["detail"]} == {(1, "otp"), (1, "occurred_at")}
        for raw in (b"{not json", b"[]", b'"a string"'):
            response = await shipcast.http.post("/v1/events", content=raw,
                                                headers={"content-type": "application/json"})
            assert response.status_code == 422, raw
        # A NUL (JSON carries it only escaped, "\u0000"), which PostgreSQL cannot store: named, alone or in a batch.
        named = body_of("OFD")
        named["order"]["customer"]["name"] = "Pri\x00ya"
        response = await shipcast.http.post("/v1/events", json=named)
        assert response.status_code == 422 and b"\\u0000" in response.request.content
        assert [e["loc"] for e in response.json()["detail"]] == [["order", "customer", "name"]]
        response = await shipcast.http.post("/v1/events", json=[body_of("OFD"), named])
        assert [e["loc"] for e in response.json()["detail"]] == [[1, "order", "customer", "name"]]
        # An event sent as a JSON string in the batch, its escape escaped: the body has no "\u0000" itself.
        hidden = orjson.dumps([orjson.dumps(named).decode()]).replace(b"\\\\u0000", b"\\u005cu0000")
        assert b"\\u0000" not in hidden and b"u005cu0000" in hidden
        response = await shipcast.http.post("/v1/events", content=hidden, headers={"content-type": "application/json"})
        assert response.status_code == 422 and [e["loc"] for e in response.json()["detail"]] == [
            [0, "order", "customer", "name"]], response.text
        # A valid event afterwards is the only one that ever arrives.
        after = body_of("RET")
        assert (await shipcast.http.post("/v1/events", json=after)).status_code == 202
        await eventually(lambda: receiver.requests)
        await asyncio.sleep(0.5)
        assert receiver.ids == [after["event_id"]]
        assert [e["event_id"] for e in await shipcast.services.store.list_events()] == [after["event_id"]]

    async def test_a_stopped_broker_gets_503_and_nothing_is_published_then_recovers(
            self, vhost: str, sqlite_url: str, receiver: Receiver) -> None:
        from .helpers import TcpProxy

        proxy = await TcpProxy().start()
        settings = make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                                 publish_timeout=2)
        try:
            async with ShipcastProcess(settings) as shipcast:
                await shipcast.apply(partners_doc("acme", receiver.url))
                await proxy.cut()
                await eventually(lambda: not shipcast.services.broker.connected)
                during = body_of("OFD")
                response = await shipcast.http.post("/v1/events", json=during)
                assert response.status_code == 503
                assert (await shipcast.http.get("/readyz")).status_code == 503

                await proxy.restore()
                await eventually(lambda: shipcast.services.broker.connected, timeout=20)
                after = body_of("DEL")
                response = await eventually(lambda: _accepted(shipcast, after), timeout=20)
                await eventually(lambda: receiver.ids == [after["event_id"]], timeout=20)
                assert during["event_id"] not in receiver.ids
                assert (await shipcast.http.get("/readyz")).status_code == 200
        finally:
            await proxy.close()


async def _accepted(shipcast: ShipcastProcess, event: dict[str, Any]) -> bool:
    return (await shipcast.http.post("/v1/events", json=event)).status_code == 202


async def test_health_metrics_and_openapi(shipcast: ShipcastProcess) -> None:
    assert (await shipcast.http.get("/healthz")).json() == {"status": "ok"}
    assert (await shipcast.http.get("/readyz")).status_code == 200
    metrics = (await shipcast.http.get("/metrics")).text
    assert "# TYPE shipcast_events_published_total counter" in metrics
    document = (await shipcast.http.get("/openapi.json")).json()
    assert "/v1/events" in document["paths"] and "Event" in document["components"]["schemas"]
    assert TOKEN not in str(document)


async def test_the_index_page_links_the_docs_and_hides_credentials(shipcast: ShipcastProcess) -> None:
    # The console is the operator's on the public port (open on the operations port).
    assert (await shipcast.http.get("/", headers={"authorization": ""})).status_code == 401
    response = await shipcast.http.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in response.text and "connected" in response.text
    assert "<code>webhook</code>" in response.text and "guest:guest" not in response.text


async def test_a_publish_nobody_receives_is_an_error_not_a_silent_drop(shipcast: ShipcastProcess) -> None:
    from shipcast.amqp.headers import event_message
    from shipcast.exceptions import PublishNotConfirmed

    with pytest.raises(PublishNotConfirmed, match="no queue is bound for shipcast.nowhere"):
        await shipcast.services.broker.publish(event_message(example("OFD")), "shipcast.nowhere", exchange="")


async def test_the_delivery_log_over_http_and_replay(shipcast: ShipcastProcess, receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = body_of("DEL")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: _status(shipcast, event["event_id"], "delivered"))
    rows = (await shipcast.http.get("/v1/deliveries", params={"partner_id": "acme", "status": "delivered"})).json()
    assert [(r["event_id"], r["channel"], r["target"], r["attempts"]) for r in rows] == [
        (event["event_id"], "webhook", "main", 1)]
    assert (await shipcast.http.get("/v1/deliveries", params={"status": "dead"})).json() == []
    replayed = await shipcast.http.post("/v1/deliveries/replay", params={"event_id": event["event_id"],
                                                                          "status": "delivered"})
    assert replayed.json() == {"replayed": 1}
    await eventually(lambda: receiver.ids == [event["event_id"]] * 2)
    assert (await shipcast.http.get("/v1/events/evt_nope")).status_code == 404
    assert (await shipcast.http.get("/v1/deliveries", headers={"authorization": ""})).status_code == 401
