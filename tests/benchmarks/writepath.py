"""The OMS's write path (scenario 10): an OMS-like workload committing order
status changes at a steady rate on PostgreSQL, measured three ways in one
run: with no events at all (the baseline), with the event written to the
outbox table in the same transaction while `shipcast relay` publishes it, and
with a synchronous ``POST /v1/events`` inside the transaction. Then the relay's
throughput against direct ingest of batches.

Each transaction locks its order's row, changes its status and, by the mode,
writes the event; its time is from BEGIN to COMMIT returning, as the OMS's
request handler waits for it. With the relay, each event's time from commit
to the partner's webhook is measured too.

shipcast (API, relay, webhook worker) runs throughout, as it would beside a
real OMS, and the three modes take turns in rounds; the partner's receiver
is a process of its own. The machine's two cores are shared by all of them,
PostgreSQL and RabbitMQ: the outbox's figure includes what the busy relay and
worker take from the OMS's CPU, which a relay on its own host would not.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from .common import BIN, ReceiverProcess, Vhost, answering, events, percentile

#: Orders the workload spreads its changes over (each transaction locks one).
ORDERS = 500
#: Concurrent OMS request handlers, each with its own database connection.
HANDLERS = 16
TABLE = "shipcast_outbox"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _prepare(url: str) -> None:
    """The OMS's orders, and the outbox table as `shipcast relay sql` prints it."""
    ddl = subprocess.run([str(BIN / "shipcast"), "relay", "sql", "--dialect", "postgresql"], check=True,
                         capture_output=True, text=True).stdout
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, "
                           "updated_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute("INSERT INTO orders (id, status) SELECT g, 'CREATED' FROM generate_series(0, $1) g",
                           ORDERS - 1)
        await conn.execute(ddl)
    finally:
        await conn.close()


Step = Callable[[asyncpg.Connection, Any], Awaitable[None]]


async def oms(url: str, rate: int, seconds: int, step: Step, committed: dict[str, float] | None = None,
              ) -> list[float]:
    """Run the workload: ``rate`` transactions a second for ``seconds``, each
    doing ``step`` (the event, by the mode) before it commits. Returns each
    transaction's milliseconds; ``committed`` gets each event's commit time."""
    pool = await asyncpg.create_pool(_asyncpg_dsn(url), min_size=HANDLERS, max_size=HANDLERS)
    batch = events(rate * seconds, ["acme"], "OFD")
    durations: list[float] = []

    async def transaction(i: int, event: Any) -> None:
        order = i % ORDERS
        event = event.model_copy(update={"order": event.order.model_copy(update={"order_id": f"ORD-{order}"})})
        started = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchval("SELECT id FROM orders WHERE id = $1 FOR UPDATE", order)
            await conn.execute("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1", order,
                               event.event_type)
            await step(conn, event)
        done = time.perf_counter()
        durations.append((done - started) * 1000)
        if committed is not None:
            committed[event.event_id] = done

    try:
        started = time.perf_counter()
        tasks = []
        for i, event in enumerate(batch):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(transaction(i, event)))
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    return durations


async def no_event(conn: asyncpg.Connection, event: Any) -> None:
    return None


async def outbox_row(conn: asyncpg.Connection, event: Any) -> None:
    payload = orjson.loads(event.to_json())
    payload["sequence"] = None  # the relay fills it from the row's id
    await conn.execute(f"INSERT INTO {TABLE} (event_id, partner_id, order_id, payload) VALUES ($1, $2, $3, $4)",
                       event.event_id, event.partner_id, event.order.order_id, orjson.dumps(payload).decode())


def posting(http: aiohttp.ClientSession) -> Step:
    async def post(conn: asyncpg.Connection, event: Any) -> None:
        async with http.post("/v1/events", data=event.to_json()) as response:
            assert response.status == 202, await response.text()
    return post


async def active(base: str, proc: Any) -> None:
    """Wait until the relay holds the lock (its /metrics say so): ready is not yet active."""
    async with aiohttp.ClientSession(base) as http:
        for _ in range(300):
            async with http.get("/metrics") as answer:
                if "shipcast_relay_active 1" in await answer.text():
                    return
            proc.check()
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the relay at {base} never became active")


async def pending(url: str) -> int:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE failed_at IS NULL"))
    finally:
        await conn.close()


async def writepath(tmp: Path, quick: bool) -> None:
    from .run import Shipcast, postgres_database, report, wait_consuming, webhook_doc

    rate, seconds = 100, (10 if quick else 30)
    rounds = 2 if quick else 3
    modes = ("no events", "outbox row, relay running", "synchronous POST /v1/events", "outbox row, relay paused")
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    committed: dict[str, float] = {}
    # The partner's server in a process of its own: the OMS's event loop serves the OMS alone.
    async with ReceiverProcess() as receiver, postgres_database() as oms_url:
        await _prepare(oms_url)
        with Vhost() as vhost:
            ship = Shipcast(vhost, tmp)
            health = free_port()
            ship.env["SHIPCAST_RELAY_DATABASE_URL"] = oms_url
            try:
                await ship.apply(webhook_doc(["acme"], lambda p: receiver.url()))
                ship.start("worker", "--channel", "webhook")
                await wait_consuming(vhost, "shipcast.webhook")
                ship.env["SHIPCAST_HEALTH_PORT"] = str(health)  # the relay's operations port, its alone
                relay = ship.start("relay")
                del ship.env["SHIPCAST_HEALTH_PORT"]
                await answering(f"http://127.0.0.1:{health}", relay)
                await active(f"http://127.0.0.1:{health}", relay)
                api = ship.start("api")
                await answering("http://127.0.0.1:18123", api)
                headers = {"authorization": "Bearer bench", "content-type": "application/json"}
                async with aiohttp.ClientSession("http://127.0.0.1:18123", headers=headers,
                                                 connector=aiohttp.TCPConnector(limit=HANDLERS)) as http:
                    steps: dict[str, Step] = {modes[0]: no_event, modes[1]: outbox_row, modes[2]: posting(http),
                                              modes[3]: outbox_row}
                    # Everything runs through every phase, as it would beside a real OMS, and the
                    # phases take turns, so a slow moment of the machine does not fall on one mode.
                    # With the relay paused (SIGSTOP) the OMS pays for its own writes alone, not for
                    # the CPU the relay and the worker take beside it: what a relay on its own host costs.
                    for _ in range(rounds):
                        for mode in modes:
                            paused = mode == modes[3]
                            if paused:
                                os.kill(relay.process.pid, signal.SIGSTOP)
                            try:
                                results[mode] += await oms(oms_url, rate, seconds // rounds, steps[mode],
                                                           committed if mode == modes[1] else None)
                            finally:
                                if paused:
                                    os.kill(relay.process.pid, signal.SIGCONT)
                            while paused and await pending(oms_url):  # drained before the next phase
                                await asyncio.sleep(0.2)
                arrived = await receiver.wait_for(set(committed), 120)
                end_to_end = [(arrived[i] - t) * 1000 for i, t in committed.items()]
                ship.profile()  # BENCH_PROFILE=FOLDER: the throughput runs under py-spy
                throughput = await relay_against_ingest(ship, oms_url, relay, 2000 if quick else 10000)
            finally:
                ship.stop()
    base = results["no events"]
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        floor = percentile(base, q)
        report(f"10. OMS transaction at {rate}/s, no events (relay idle), {name}", floor, "ms")
        for mode in modes[1:]:
            report(f"10. OMS transaction, {mode}, {name}", percentile(results[mode], q), "ms", floor,
                   "no events", "≤ 1.05× at p99" if mode == modes[1] and name == "p99" else "")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        report(f"10. commit to webhook through the relay at {rate}/s, {name}", percentile(end_to_end, q), "ms",
               target="p99 < 100 ms" if name == "p99" else "")
    direct, relayed = throughput
    report("10. direct ingest: POST /v1/events, batches of 100 (4 clients)", direct, "ev/s")
    report("10. the relay draining the outbox (published, confirmed, deleted)", relayed, "ev/s", direct,
           "direct ingest")


async def relay_against_ingest(ship: Any, oms_url: str, relay: Any, n: int) -> tuple[float, float]:
    """Events a second into RabbitMQ, confirmed: POSTed in batches of 100 by 4
    clients, and drained by the relay from ``n`` rows committed at once."""
    batch = over_orders(events(n, ["acme"], "OFD"))
    bodies = [b"[" + b",".join(e.to_json() for e in batch[i:i + 100]) + b"]" for i in range(0, n, 100)]
    headers = {"authorization": "Bearer bench", "content-type": "application/json"}
    async with aiohttp.ClientSession("http://127.0.0.1:18123", headers=headers) as http:
        semaphore = asyncio.Semaphore(4)

        async def post(body: bytes) -> None:
            async with semaphore, http.post("/v1/events", data=body) as response:
                assert response.status == 202, await response.text()

        started = time.perf_counter()
        await asyncio.gather(*(post(body) for body in bodies))
        direct = n / (time.perf_counter() - started)
    # ``n`` rows committed at once (one COPY) while the relay, already running, waits: timed from the commit.
    rows = []
    for event in over_orders(events(n, ["acme"], "OFD")):
        payload = orjson.loads(event.to_json())
        payload["sequence"] = None
        rows.append((event.event_id, event.partner_id, event.order.order_id, orjson.dumps(payload).decode()))
    conn = await asyncpg.connect(_asyncpg_dsn(oms_url))
    try:
        await conn.copy_records_to_table(TABLE, records=rows, columns=["event_id", "partner_id", "order_id", "payload"])
    finally:
        await conn.close()
    started = time.perf_counter()
    while await pending(oms_url):
        relay.check()
        await asyncio.sleep(0.02)
    return direct, n / (time.perf_counter() - started)


def over_orders(batch: list[Any]) -> list[Any]:
    """The events spread over the workload's orders, as an OMS's outbox holds them."""
    return [event.model_copy(update={"order": event.order.model_copy(update={"order_id": f"ORD-{i % ORDERS}"})})
            for i, event in enumerate(batch)]
