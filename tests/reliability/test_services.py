"""Scenarios 2, 5 and 6: the services shipcast stands on fail under it.
RabbitMQ is restarted, PostgreSQL is stopped for 30 s, SQLite is locked,
and RabbitMQ raises its memory and disk alarms, each while events flow.

Each stops or alarms a server of its own (a RabbitMQ node, a PostgreSQL
cluster), never the machine's: the rest of the suite goes on beside it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tests.bound import example
from shipcast.app.services import Services
from shipcast.settings import Settings

from ..conftest import make_settings
from ..helpers import Receiver, applied, eventually
from .conftest import OwnBroker, OwnPostgresql
from .harness import Accounts, Oms, Row, Target, account, processes, ready, recovery, summary, webhook_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

N = 10_000
#: For the scenarios that stop or alarm RabbitMQ.
N_ALONE = 5_000
WORKERS = ("worker", "--channel", "webhook", "--channel", "archive")


def delivered(targets: Sequence[Target]) -> int:
    return sum(len(t.receiver.delivered) for t in targets)


async def readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.get("/readyz")
        return response.status_code, response.json()


async def archived(services: Services) -> int:
    from shipcast.store.tables import events

    assert services.store.engine is not None
    async with services.store.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one())


async def recorded(services: Services) -> set[str]:
    """Event ids the store has as delivered to the webhook target."""
    rows = await services.store.list_deliveries(channel="webhook", status="delivered", limit=10 * N)
    return {row["event_id"] for row in rows}


async def test_2_rabbitmq_restarted_during_a_run(own_broker: OwnBroker, pg_url: str, record_property: Any) -> None:
    settings = own_broker.settings(pg_url)
    base_url = f"http://127.0.0.1:{settings.port}"
    async with Receiver() as main:
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services, processes(settings, ("api",), WORKERS):
            await ready(base_url)
            # Held at 60% until the broker is down, so it has events to post while it is.
            oms = Oms(base_url, settings.api_token or "", ["acme"], N_ALONE, rate=500, hold=0.6).start()
            await eventually(lambda: oms.sent >= N_ALONE * 0.4 and delivered(targets), timeout=60)
            try:
                await own_broker.ctl("stop_app")
                # While it is down, ingest refuses (the OMS posts again) and a load balancer takes the API out.
                code, body = await eventually(lambda: _unready(base_url), timeout=30)
                assert body["broker"] == "down"
                oms.resume()
                await asyncio.sleep(5)
            finally:
                await own_broker.ctl("start_app")
            restarted = time.monotonic()
            await ready(base_url, timeout=60)
            recovered = await recovery(restarted, targets, oms)
            await oms.done()
            accounts = await account(oms, targets, services)
            assert await eventually(lambda: _archived_all(services, oms.sent), timeout=60)
    refused = sum(oms.refusals.values())
    Row("2. RabbitMQ restarted", oms.sent, "rabbitmqctl stop_app, 5 s down, start_app; shipcast not restarted",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, recovered,
        f"{refused} posts refused while it was down, posted again; /readyz 503 meanwhile").record(record_property)
    assert not accounts.lost and accounts.parked == 0, summary(accounts)
    assert set(targets[0].delivered()) == set(oms.confirmed)


async def _unready(base_url: str) -> tuple[int, dict[str, Any]] | None:
    code, body = await readyz(base_url)
    return (code, body) if code == 503 else None


async def _archived_all(services: Services, n: int) -> bool:
    return await archived(services) == n


async def store_outage(settings: Settings, rate: float, outage: AbstractAsyncContextManager[None],
                       seconds: float) -> tuple[Oms, Accounts, float, int]:
    """N events, with the store unreachable for ``seconds`` inside ``outage``
    from a fifth of the deliveries on. Deliveries pause and resume; at the end the archive
    holds every confirmed event, and the store's record of what was delivered
    is what the receiver got: nothing was acked to the broker unrecorded.

    Returns the OMS, the accounts, the time to recover, and how many
    deliveries were made during the outage."""
    base_url = f"http://127.0.0.1:{settings.port}"
    async with Receiver() as main:
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services, processes(settings, ("api",), WORKERS):
            await ready(base_url)
            oms = Oms(base_url, settings.api_token or "", ["acme"], N, rate=rate).start()
            await eventually(lambda: delivered(targets) >= N * 0.2, timeout=60)
            async with outage:
                began = delivered(targets)
                await asyncio.sleep(seconds)
                during = delivered(targets) - began
            ended = time.monotonic()
            recovered = await recovery(ended, targets)
            await oms.done()
            accounts = await account(oms, targets, services)
            assert await eventually(lambda: _archived_all(services, oms.sent), timeout=60)
            assert await eventually(lambda: _recorded_all(services, set(main.ids)), timeout=30)
    assert not accounts.lost, summary(accounts)
    assert accounts.parked == 0, summary(accounts)  # a healthy receiver: nothing had a reason to be parked
    return oms, accounts, recovered, during


async def _recorded_all(services: Services, ids: set[str]) -> bool:
    return await recorded(services) == ids


@asynccontextmanager
async def sqlite_locked(database: Path) -> AsyncIterator[None]:
    """Another process's write lock on the database (it waits for the store's
    own writes in flight to finish first)."""
    locker = await asyncio.to_thread(sqlite3.connect, database, timeout=30, isolation_level=None,
                                     check_same_thread=False)
    try:
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        yield
    finally:
        locker.execute("COMMIT")
        locker.close()


async def test_5_postgresql_stopped_for_30_s(vhost: str, own_postgresql: OwnPostgresql,
                                             record_property: Any) -> None:
    oms, accounts, recovered, during = await store_outage(make_settings(vhost, own_postgresql.url), 250,
                                                          own_postgresql.stopped(), 30)
    Row("5. PostgreSQL stopped", oms.sent, "pg_ctlcluster stop -m fast, 30 s down, start",
        0, accounts.duplicates, accounts.parked, recovered,
        f"{during} deliveries while it was down (in flight when it stopped); archive complete; store and "
        "receiver agree").record(record_property)
    assert during <= 512, "deliveries went on without a store"  # at most the prefetch in flight when it stopped


async def test_5_sqlite_locked(vhost: str, tmp_path: Path, record_property: Any) -> None:
    database = tmp_path / "shipcast.db"
    oms, accounts, recovered, during = await store_outage(
        make_settings(vhost, f"sqlite+aiosqlite:///{database}"), 500, sqlite_locked(database), 15)
    Row("5. SQLite locked", oms.sent, "another process holds the write lock (BEGIN EXCLUSIVE) for 15 s",
        0, accounts.duplicates, accounts.parked, recovered,
        f"{during} deliveries while it was locked (in flight when it locked); archive complete; store and "
        f"receiver agree; {accounts.duplicates / oms.sent:.2%} repeated (sent, then not recorded in the "
        "lock's busy timeout)").record(record_property)
    assert during <= 512, "deliveries went on without a store"


ALARMS = {
    "memory": (("set_vm_memory_high_watermark", "0.000001"), ("set_vm_memory_high_watermark", "0.4")),
    "disk": (("set_disk_free_limit", "1000000GB"), ("set_disk_free_limit", "50MB")),
}


async def test_6_memory_and_disk_alarms(own_broker: OwnBroker, pg_url: str, record_property: Any) -> None:
    """While an alarm blocks publishers, ingest answers 503 at once rather
    than hanging; when it clears, everything flows again."""
    settings = own_broker.settings(pg_url)
    base_url = f"http://127.0.0.1:{settings.port}"
    answers: dict[str, tuple[int, float, str]] = {}
    async with Receiver() as main:
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services, processes(settings, ("api",), WORKERS):
            await ready(base_url)
            # Held before each alarm until it is on, so it has events to post while it is and after.
            oms = Oms(base_url, settings.api_token or "", ["acme"], N_ALONE, rate=400, hold=0.4).start()
            recoveries = []
            for alarm, (raise_it, clear_it) in ALARMS.items():
                await eventually(lambda: oms.sent >= (0.2, 0.6)[len(answers)] * N_ALONE and delivered(targets),
                                 timeout=60)
                try:
                    await own_broker.ctl(*raise_it)
                    await eventually(lambda: _alarm_on(own_broker, alarm), timeout=30)
                    oms.resume(until=0.8 if not answers else None)
                    # RabbitMQ tells a connection it is blocked once it publishes: the first post
                    # after the alarm may wait out the confirm timeout (documented); the next is refused at once.
                    await _refused_at_once(base_url, settings.api_token or "")
                    answers[alarm] = await eventually(lambda: _refused_at_once(base_url, settings.api_token or ""),
                                                      timeout=30)
                    await asyncio.sleep(3)
                finally:
                    await own_broker.ctl(*clear_it)
                # Cleared once the command returns. Each look at the alarms starts a CLI of its own, seconds
                # on a loaded machine: the OMS may post all it holds meanwhile, delivered before a later mark.
                cleared = time.monotonic()
                await eventually(lambda: _alarm_off(own_broker), timeout=30)
                recoveries.append(await recovery(cleared, targets))
            await oms.done()
            accounts = await account(oms, targets, services)
    refused = sum(oms.refusals.values())
    Row("6. RabbitMQ memory and disk alarms", oms.sent, "memory alarm, then disk alarm, 3 s or more each",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, max(recoveries),
        "a new post got " + ", ".join(f"{code} in {took * 1000:.0f} ms ({alarm})"
                                      for alarm, (code, took, _) in answers.items())
        + f"; {refused} posts refused, posted again; a post already publishing waited for the alarm to clear"
        ).record(record_property)
    assert not accounts.lost and accounts.parked == 0, summary(accounts)
    # Refused for the alarm at once, not after waiting out a confirm that never came.
    assert all(code == 503 and "blocked publishing" in detail for code, _, detail in answers.values()), answers


async def _alarm_on(node: OwnBroker, kind: str) -> bool:
    return kind in (await node.diagnostics("-q", "alarms")).lower()


async def _alarm_off(node: OwnBroker) -> bool:
    return "no alarms" in (await node.diagnostics("-q", "alarms")).lower()


async def _refused_at_once(base_url: str, token: str) -> tuple[int, float, str] | None:
    """An ingest post during the alarm: its answer, how long it took (the
    client gives up after 30 s, which would be a hang), and why."""
    body = orjson.loads(example("OFD", partner_id="acme").to_json())
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        start = time.monotonic()
        response = await client.post("/v1/events", json=body, headers={"authorization": f"Bearer {token}"})
        took = time.monotonic() - start
    return (response.status_code, took, response.text) if response.status_code != 202 else None



#: Seconds RabbitMQ stays down on each restart: from half a second to ten, in turn.
DOWN_TIMES = (0.5, 1, 2, 3, 5, 8, 10, 0.5, 2, 4)
#: Restarts in a row: every down time twice.
RESTARTS = 20
#: Restarts that stop it again while shipcast is still reconnecting (0.3 s after start_app).
AGAIN_WHILE_RECONNECTING = {4, 11, 18}
#: How soon, after the broker is up, ingest must publish again.
RECOVERY_BOUND = 5.0


@pytest.mark.timeout(900)
async def test_2b_rabbitmq_restarted_20_times(own_broker: OwnBroker, sqlite_url: str, record_property: Any) -> None:
    """After every one of 20 restarts (0.5 to 10 s down, some while shipcast
    is still reconnecting), ingest publishes again within 5 s of the broker
    being up, /readyz is 200 only when a publish with confirm succeeds, and
    every confirmed event is archived."""
    settings = own_broker.settings(sqlite_url)
    base_url = f"http://127.0.0.1:{settings.port}"
    headers = {"authorization": f"Bearer {settings.api_token}"}
    confirmed: list[str] = []
    worst = 0.0

    async with applied(settings, webhook_doc([])) as services, \
            processes(settings, ("api",), ("worker", "--channel", "archive")), \
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as http:
        await ready(base_url)

        async def post() -> int:
            event = example("OFD", partner_id="acme")
            try:
                response = await http.post("/v1/events", content=event.to_json(),
                                           headers={"content-type": "application/json"})
            except httpx.TransportError:
                return 0
            if response.status_code == 202:
                confirmed.append(event.event_id)
            return response.status_code

        for restart in range(RESTARTS):
            await own_broker.ctl("stop_app")
            await eventually(lambda: _unready(base_url), timeout=30)
            assert await post() == 503  # refused while down, never accepted unconfirmed
            await asyncio.sleep(DOWN_TIMES[restart % len(DOWN_TIMES)])
            if restart in AGAIN_WHILE_RECONNECTING:
                await own_broker.ctl("start_app")
                await asyncio.sleep(0.3)
                await own_broker.ctl("stop_app")
                await asyncio.sleep(1)
            await own_broker.ctl("start_app")
            up = time.monotonic()
            # Ready must mean a publish can be confirmed: every 200 is followed at once by a 202.
            while time.monotonic() - up < RECOVERY_BOUND + 10:
                code, _ = await readyz(base_url)
                if code == 200:
                    status = await post()
                    assert status == 202, f"restart {restart + 1}: /readyz 200 but ingest answered {status}"
                    break
                await asyncio.sleep(0.1)
            took = time.monotonic() - up
            worst = max(worst, took)
            assert took <= RECOVERY_BOUND, f"restart {restart + 1}: ingest published again only after {took:.1f}s"
        await eventually(lambda: _archived_all(services, len(confirmed)), timeout=60)
        archived_ids = {row["event_id"] for row in await services.store.list_events(limit=10 * len(confirmed))}
        lost = [event_id for event_id in confirmed if event_id not in archived_ids]
    Row(f"2b. RabbitMQ restarted {RESTARTS} times", len(confirmed),
        f"rabbitmqctl stop_app / start_app {RESTARTS} times on a node of its own, 0.5 to 10 s down, "
        f"{len(AGAIN_WHILE_RECONNECTING)} stopped again while reconnecting",
        len(lost), 0, 0, round(worst, 1),
        "ingest publishes again within 5 s of each start; /readyz 200 only when a publish is confirmed"
        ).record(record_property)
    assert not lost
