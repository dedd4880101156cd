"""Scenario 8: the transactional outbox relay under faults. An OMS commits
order status changes with the event in the same transaction (the outbox
table of its own PostgreSQL database); `shipcast relay` publishes them. The
ledger is what the OMS committed: every committed event must reach the
partner, and the outbox must be empty at the end.

* 8a: two relays, one active; the active one is killed (kill -9) three times
  mid-run, each time while it holds a batch: a standby takes over.
* 8b: RabbitMQ restarted while the OMS commits: the outbox grows, then drains.
* 8c: the OMS's database restarted under two relays: the OMS's commits fail
  and are tried again, the relays lose their connections (and the active
  one its lock), and one takes over again once the database is back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.bound import example

from ..conftest import PG_ADMIN_URL, free_port, make_settings
from ..helpers import Receiver, Subprocess, applied, eventually
from .conftest import OwnBroker, OwnPostgresql
from .harness import EVENT_TYPES, Row, Target, account, recovery, stopped, summary, webhook_doc

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

N = 4_000
TABLE = "shipcast_outbox"
#: Seconds an OMS transaction (connect, insert, commit) may take before it counts as failed.
COMMIT_TIMEOUT = 5
#: Tries of one transaction, 0.2 s apart at least, before the OMS gives up: an outage of the
#: scenarios' length passes; an error that will not (a missing table) ends the OMS, said.
COMMIT_TRIES = 150


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@asynccontextmanager
async def oms_database(server_url: str = PG_ADMIN_URL) -> AsyncIterator[str]:
    """The OMS's own database, on the server of ``server_url``, with the outbox
    table as `shipcast relay sql` prints it."""
    name = f"oms_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    ddl = subprocess.run([str(Path(sys.executable).with_name("shipcast")), "relay", "sql", "--dialect", "postgresql"],
                         check=True, capture_output=True, text=True).stdout
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(ddl)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(_dsn(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class OutboxOms:
    """Commits ``n`` events over ``partners`` at ``rate`` a second, each in
    its own transaction with the outbox row, as an OMS does; a transaction
    that fails (its database restarting) is tried again with the same event.
    ``confirmed`` is the ledger: event id → when it committed. Holds after
    the share ``hold`` until :meth:`resume`, like the harness's ``Oms``."""

    def __init__(self, url: str, partners: Sequence[str], n: int, *, rate: float = 400.0,
                 hold: float | None = None) -> None:
        self.url = url
        self.rate = rate
        self.bodies = []
        for i in range(n):
            body = orjson.loads(example(EVENT_TYPES[i % len(EVENT_TYPES)], partner_id=partners[i % len(partners)],
                                        order_id=f"ORD-{i % 200}").to_json())
            body["sequence"] = None  # the relay fills it from the row's id
            self.bodies.append(body)
        self.partner_of = {b["event_id"]: b["partner_id"] for b in self.bodies}
        self.confirmed: dict[str, float] = {}
        self.refusals: Counter[str] = Counter()
        self.last_refusal = ""
        self._hold = int(n * hold) if hold is not None else n
        self._resumed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _commit(self, body: dict[str, Any]) -> None:
        for _ in range(COMMIT_TRIES):
            conn = None
            try:
                # Bounded: a statement the restart cuts off half way fails and is tried again, rather
                # than holding the OMS (and its ledger) still. Its commit may have landed: the row is
                # then in the outbox twice, with one event id, as an OMS's retry would leave it.
                async with asyncio.timeout(COMMIT_TIMEOUT):
                    conn = await asyncpg.connect(_dsn(self.url))
                    async with conn.transaction():
                        await conn.execute(
                            f"INSERT INTO {TABLE} (event_id, partner_id, order_id, payload) VALUES ($1, $2, $3, $4)",
                            body["event_id"], body["partner_id"], body["order"]["order_id"],
                            orjson.dumps(body).decode())
                    await conn.close()
            except Exception as exc:  # noqa: BLE001  # any failed transaction is tried again, as an OMS's would be
                self.refusals[type(exc).__name__] += 1
                self.last_refusal = repr(exc)
                await asyncio.sleep(0.2)
                continue
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # a close cut off by the timeout: its reply may never come
            self.confirmed[body["event_id"]] = time.monotonic()
            return
        raise AssertionError(f"event {body['event_id']} not committed in {COMMIT_TRIES} tries: {self.last_refusal}")

    async def run(self) -> None:
        start = time.monotonic()
        for sent, body in enumerate(self.bodies):
            while sent >= self._hold:
                await self._resumed.wait()
                start = time.monotonic() - sent / self.rate
            ahead = start + sent / self.rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            await self._commit(body)

    def start(self) -> OutboxOms:
        self._task = asyncio.create_task(self.run(), name="outbox-oms")
        return self

    def resume(self) -> None:
        self._hold = len(self.bodies)
        self._resumed.set()

    async def done(self, timeout: float = 180) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout)

    @property
    def sent(self) -> int:
        return len(self.confirmed)

    def stopped(self) -> str:
        return stopped(self._task)


async def pending(url: str) -> int:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
    finally:
        await conn.close()


def delivered(targets: Sequence[Target]) -> int:
    return sum(len(t.receiver.delivered) for t in targets)


def relay(settings: Any) -> Subprocess:
    """A `shipcast relay` process with an operations port of its own (its /metrics say whether it is active)."""
    port = free_port()
    process = Subprocess(settings, "relay", env={"SHIPCAST_HEALTH_PORT": str(port)})
    process.health = port  # type: ignore[attr-defined]
    return process.start()


async def relay_is_active(process: Subprocess) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            metrics = (await http.get(f"http://127.0.0.1:{process.health}/metrics")).text  # type: ignore[attr-defined]
    except httpx.TransportError:
        return False
    return any(line.startswith("shipcast_relay_active") and line.rstrip().endswith((" 1", " 1.0"))
               for line in metrics.splitlines())


async def active(relays: Sequence[Subprocess]) -> Subprocess | None:
    """The relay holding the lock, if one does; never two."""
    holding = [process for process in relays if await relay_is_active(process)]
    assert len(holding) <= 1, "two relays active at once"
    return holding[0] if holding else None


async def empty(url: str) -> bool:
    return await pending(url) == 0


async def test_8a_kill_9_of_the_active_relay_with_a_standby(vhost: str, pg_url: str, record_property: Any) -> None:
    async with oms_database() as oms_url, Receiver() as main:
        settings = make_settings(vhost, pg_url, relay_database_url=oms_url, relay_poll_interval=0.5)
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services:
            worker = Subprocess(settings, "worker", "--channel", "webhook").start()
            relays = [relay(settings), relay(settings)]
            oms = OutboxOms(oms_url, ["acme"], N).start()
            recoveries, takeovers = [], []
            try:
                for share in (0.2, 0.45, 0.7):
                    await eventually(lambda: delivered(targets) >= share * N, timeout=90)
                    holder = await eventually(lambda: active(relays), timeout=30)
                    holder.kill()  # kill -9 while it publishes: its batch is mid-flight
                    print(holder.stop())
                    killed = time.monotonic()
                    standby = [process for process in relays if process is not holder]
                    await eventually(lambda: active(standby), timeout=30)
                    takeovers.append(round(time.monotonic() - killed, 2))
                    relays[relays.index(holder)] = relay(settings)  # as a supervisor would
                    recoveries.append(await recovery(killed, targets, oms))  # type: ignore[arg-type]
                await oms.done()
                accounts = await account(oms, targets, services)  # type: ignore[arg-type]
                await eventually(lambda: empty(oms_url), timeout=60)
            finally:
                for process in (*relays, worker):
                    print(process.stop())
    Row("8a. kill -9 of the active relay, a standby beside it", oms.sent, "3 × kill -9 of the active relay",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, max(recoveries),
        f"PostgreSQL outbox; the standby took over in {max(takeovers)} s at most; 0 rows left"
        ).record(record_property)
    assert not accounts.lost, summary(accounts)
    assert accounts.parked == 0, summary(accounts)
    assert set(targets[0].delivered()) == set(oms.confirmed)


async def test_8b_rabbitmq_restarted_while_the_oms_commits(own_broker: OwnBroker, pg_url: str,
                                                           record_property: Any) -> None:
    async with oms_database() as oms_url, Receiver() as main:
        settings = own_broker.settings(pg_url, relay_database_url=oms_url, relay_poll_interval=0.5)
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services:
            worker = Subprocess(settings, "worker", "--channel", "webhook").start()
            relays = [relay(settings)]
            oms = OutboxOms(oms_url, ["acme"], N // 2, rate=300, hold=0.6).start()
            grew = 0
            try:
                await eventually(lambda: delivered(targets) >= N // 2 * 0.3, timeout=90)
                await own_broker.ctl("stop_app")
                try:
                    oms.resume()  # the OMS commits on: its rows wait in the outbox
                    await asyncio.sleep(5)
                    grew = await pending(oms_url)
                finally:
                    await own_broker.ctl("start_app")
                restarted = time.monotonic()
                recovered = await recovery(restarted, targets, timeout=90)
                await oms.done()
                accounts = await account(oms, targets, services)  # type: ignore[arg-type]
                await eventually(lambda: empty(oms_url), timeout=90)
            finally:
                for process in (*relays, worker):
                    print(process.stop())
    Row("8b. RabbitMQ restarted under the relay", oms.sent, "rabbitmqctl stop_app, 5 s down, start_app",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, recovered,
        f"the outbox grew to {grew} rows while it was down, then drained to 0").record(record_property)
    assert grew > 0, "the OMS committed nothing while RabbitMQ was down"
    assert not accounts.lost and accounts.parked == 0, summary(accounts)


async def test_8c_the_oms_database_restarted(vhost: str, own_postgresql: OwnPostgresql, tmp_path: Path,
                                             record_property: Any) -> None:
    # shipcast's own store is SQLite here: the fault is the OMS's database alone.
    async with oms_database(own_postgresql.url) as oms_url, Receiver() as main:
        settings = make_settings(vhost, f"sqlite+aiosqlite:///{tmp_path / 'shipcast.db'}",
                                 relay_database_url=oms_url, relay_poll_interval=0.5)
        targets = [Target("acme", "main", main)]
        async with applied(settings, webhook_doc(targets)) as services:
            worker = Subprocess(settings, "worker", "--channel", "webhook").start()
            relays = [relay(settings), relay(settings)]
            oms = OutboxOms(oms_url, ["acme"], N // 2, rate=300).start()
            try:
                await eventually(lambda: delivered(targets) >= N // 2 * 0.3, timeout=90)
                async with own_postgresql.stopped():
                    committed_before = oms.sent
                    await asyncio.sleep(5)
                    committed_while_down = oms.sent - committed_before
                    nobody_active = await active(relays) is None
                restarted = time.monotonic()
                recovered = await recovery(restarted, targets, oms, timeout=90)  # type: ignore[arg-type]
                await oms.done()
                accounts = await account(oms, targets, services)  # type: ignore[arg-type]
                await eventually(lambda: empty(oms_url), timeout=90)
                holder = await eventually(lambda: active(relays), timeout=30)
            finally:
                for process in (*relays, worker):
                    print(process.stop())
    Row("8c. the OMS's database restarted under the relay", oms.sent,
        "pg_ctlcluster stop -m fast, 5 s down, start; two relays",
        sum(map(len, accounts.lost.values())), accounts.duplicates, accounts.parked, recovered,
        f"{sum(oms.refusals.values())} OMS transactions failed while it was down and were committed again; "
        f"relay {relays.index(holder) + 1} of 2 active after; 0 rows left").record(record_property)
    assert committed_while_down == 0, "the OMS committed while its database was stopped"
    assert nobody_active, "a relay stayed active without its database"
    assert oms.refusals, "no OMS transaction met the outage"
    assert not accounts.lost and accounts.parked == 0, summary(accounts)
    assert set(targets[0].delivered()) == set(oms.confirmed)

