"""How deliveries fail and recover: slow and unreachable receivers,
Retry-After dates, a broker that stops confirming, a store that goes away,
and plugins that add event types and routes."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from fastapi import APIRouter

from shipcast import hookimpl
from shipcast.model.event_types import EventType
from tests.bound import example
from shipcast.model import examples

from .conftest import free_port, make_settings
from .helpers import Receiver, ShipcastProcess, TcpProxy, eventually, partners_doc

pytestmark = pytest.mark.broker


def body_of(event_type: str = "OFD") -> dict[str, Any]:
    return orjson.loads(example(event_type, partner_id="acme").to_json())


async def attempts_of(shipcast: ShipcastProcess, event_id: str, n: int) -> list[dict[str, Any]] | None:
    rows = await shipcast.services.store.list_attempts(event_id)
    return rows if len(rows) >= n else None


async def trickle(request: web.Request) -> web.StreamResponse:
    """Answers 200 at once, then sends its body one byte a second."""
    response = web.StreamResponse(status=200)
    await response.prepare(request)
    for _ in range(30):
        await response.write(b".")
        await asyncio.sleep(1)
    return response


@pytest.fixture
async def trickler() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", trickle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.mark.parametrize("case", ["slow", "trickle", "refused"])
async def test_timeouts_and_connection_errors_are_retried_with_a_clear_reason(
        shipcast: ShipcastProcess, trickler: str, case: str) -> None:
    async with Receiver(delay=3) as slow:  # webhook_timeout is 2 s in tests
        url = {"slow": slow.url, "trickle": trickler, "refused": f"http://127.0.0.1:{free_port()}/hook"}[case]
        await shipcast.apply(partners_doc("acme", url))
        event = body_of()
        started = time.monotonic()
        assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
        [first, *_] = await eventually(lambda: attempts_of(shipcast, event["event_id"], 1), timeout=20)
        assert first["outcome"] == "retry"
        if case == "refused":
            assert first["error"].startswith("connection failed:")
        else:
            assert first["error"] == "timed out after 2s"
            assert 1.9 <= time.monotonic() - started < 10


async def test_a_retry_after_date_is_honoured(shipcast: ShipcastProcess) -> None:
    # HTTP dates have whole seconds: 3 s from now is more than 2 s once truncated.
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    async with Receiver(script=[503], headers={"Retry-After": when}) as receiver:
        await shipcast.apply(partners_doc("acme", receiver.url))
        assert (await shipcast.http.post("/v1/events", json=body_of())).status_code == 202
        await eventually(lambda: receiver.answered == [503, 200], timeout=20)
        first, second = receiver.requests
        assert second.at - first.at >= 1.5  # the 2 s tier, not the 1 s one


async def test_a_broker_that_stops_confirming_gets_503_not_a_hang(vhost: str, sqlite_url: str) -> None:
    proxy = await TcpProxy().start()
    settings = make_settings(vhost, sqlite_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
                             publish_timeout=1)
    try:
        async with ShipcastProcess(settings, workers=False) as shipcast:
            await shipcast.services.broker.connect(timeout=10)
            proxy.freeze()
            started = time.monotonic()
            response = await shipcast.http.post("/v1/events", json=body_of())
            assert response.status_code == 503
            assert "no confirm" in response.json()["detail"]
            assert time.monotonic() - started < 5
            await proxy.restore()
            await eventually(lambda: _accepted(shipcast), timeout=30)
    finally:
        await proxy.close()


async def _accepted(shipcast: ShipcastProcess) -> bool:
    return (await shipcast.http.post("/v1/events", json=body_of())).status_code == 202


@pytest.mark.store
@pytest.mark.slow
async def test_deliveries_pause_while_the_store_is_down_and_nothing_is_lost(
        vhost: str, pg_database: str, receiver: Receiver) -> None:
    proxy = await TcpProxy(("127.0.0.1", 5432)).start()
    database_url = pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(vhost, database_url)
    try:
        async with ShipcastProcess(settings) as shipcast:
            await shipcast.apply(partners_doc("acme", receiver.url))
            warm = body_of()
            assert (await shipcast.http.post("/v1/events", json=warm)).status_code == 202
            await eventually(lambda: receiver.ids == [warm["event_id"]])
            await proxy.cut()
            during = [body_of(t) for t in ("OFD", "DEL", "FAIL", "RET") * 5]
            response = await shipcast.http.post("/v1/events", json=during)
            assert response.status_code == 202  # ingest does not need the store
            await asyncio.sleep(4)  # longer than every retry tier: nothing may be parked meanwhile
            assert receiver.ids == [warm["event_id"]]  # held: not sent before it can be recorded
            await proxy.restore()
            expected = {warm["event_id"], *(e["event_id"] for e in during)}
            await eventually(lambda: set(receiver.ids) == expected, timeout=60)
            assert len(receiver.ids) == len(expected)
            # The session's database holds other tests' rows too: look at this test's events.
            await eventually(lambda: _delivered(shipcast, expected), timeout=30)
            await eventually(lambda: _archived(shipcast, expected), timeout=30)
            from shipcast.amqp.parking import list_dead

            for worker in shipcast.workers:
                assert await list_dead(shipcast.services.broker, worker.topology) == []
    finally:
        await proxy.close()


async def _delivered(shipcast: ShipcastProcess, ids: set[str]) -> bool:
    rows = [await shipcast.services.store.list_deliveries(event_id=i, channel="webhook", status="delivered") for i in ids]
    return all(len(found) == 1 for found in rows)


async def _archived(shipcast: ShipcastProcess, ids: set[str]) -> bool:
    return all([await shipcast.services.store.get_event(i) is not None for i in ids])


class PickupPlugin:
    """A plugin adding an event type and a route, as a third party would."""

    @hookimpl
    def shipcast_event_types(self) -> list[EventType]:
        return [EventType("PICKED_UP", "Picked up from the merchant", frozenset({"order", "rider"}),
                          frozenset({"otp", "failure", "return", "delivery_confirmation"}))]

    @hookimpl
    def shipcast_routers(self) -> list[APIRouter]:
        router = APIRouter(prefix="/pickup")

        @router.get("/ping")
        async def ping() -> dict[str, str]:
            return {"pong": "pickup"}

        return [router]


async def test_two_differently_configured_instances_live_in_one_process(
        settings: Any, vhost: str, tmp_path: Any, management: Any, receiver: Receiver) -> None:
    """Nothing is process-wide: one instance with the pickup plugin and only
    the webhook channel, one with every built-in channel and no pickup,
    side by side in one event loop, each validating against its own registry."""
    from tests.conftest import make_settings

    second_vhost = f"{vhost}-b"
    management.put(f"/api/vhosts/{second_vhost}").raise_for_status()
    management.put(f"/api/permissions/{second_vhost}/guest",
                   json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    narrow = settings.model_copy(update={"plugins": "webhook"})
    wide = make_settings(second_vhost, f"sqlite+aiosqlite:///{tmp_path / 'wide.db'}")
    try:
        async with ShipcastProcess(narrow, plugins=[PickupPlugin()]) as one, ShipcastProcess(wide) as other:
            assert sorted(one.services.registry.channels) == ["webhook"]
            assert "sms" in other.services.registry.channels
            await one.apply(partners_doc("acme", receiver.url, events=["PICKED_UP"]))
            pickup = orjson.loads(examples.example("PICKED_UP", one.services.registry.event_types,
                                                   partner_id="acme").to_json())
            assert (await one.http.post("/v1/events", json=pickup)).status_code == 202
            refused = await other.http.post("/v1/events", json=pickup)
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["loc"] == ["event_type"]
            assert "unknown event type 'PICKED_UP'" in refused.json()["detail"][0]["msg"]
            with pytest.raises(Exception, match="unknown channel; installed: webhook"):
                await one.apply({"partners": [{"id": "acme", "name": "Acme", "channels": {"sms": {
                    "sender": "ACMEIN"}}}]})
            await eventually(lambda: receiver.ids == [pickup["event_id"]])
    finally:
        management.delete(f"/api/vhosts/{second_vhost}")


async def test_a_plugin_adds_an_event_type_and_a_route(settings: Any, receiver: Receiver) -> None:
    async with ShipcastProcess(settings, plugins=[PickupPlugin()]) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url, events=["PICKED_UP"]))
        types = shipcast.services.registry.event_types
        event = orjson.loads(examples.example("PICKED_UP", types, partner_id="acme").to_json())
        assert event["rider"] is not None and event["otp"] is None
        assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
        await eventually(lambda: receiver.ids == [event["event_id"]])
        wrong = dict(event, otp={"code": "1234"})
        response = await shipcast.http.post("/v1/events", json=wrong)
        assert response.json()["detail"] == [{"loc": ["otp"], "msg": "must be null for PICKED_UP events",
                                              "type": "event_type_row"}]
        schema = (await shipcast.http.get("/v1/schema")).json()
        assert "PICKED_UP" in schema["properties"]["event_type"]["enum"]
        assert (await shipcast.http.get("/pickup/ping")).json() == {"pong": "pickup"}
