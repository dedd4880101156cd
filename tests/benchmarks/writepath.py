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
real OMS, and the modes take turns in rounds; the partner's receiver is a
process of its own. It all runs twice, in two layouts of the machine:

* shared: every process on every core, PostgreSQL and RabbitMQ too: the
  outbox's figure includes what the busy relay and worker take from the OMS's
  CPU;
* hosts apart: the OMS and PostgreSQL on the first core, shipcast, RabbitMQ
  and the partner on the others, as a relay on its own host would run: the
  relay still costs the OMS's database its reads and deletes, which run on the
  database's core.

Each p99 ratio comes with a 95% bootstrap interval, the spread of the ratio
over resamples of the run's own transactions: a target inside it is below
what the run can tell apart. Each mode's WAL flushes per transaction (from
``pg_stat_wal``, the server's count) show what the relay's own commits add to
the OMS's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

from .common import BIN, ReceiverProcess, Vhost, answering, events, percentile

#: Orders the workload spreads its changes over (each transaction locks one).
ORDERS = 500
#: Concurrent OMS request handlers, each with its own database connection.
HANDLERS = 16
TABLE = "shipcast_outbox"
#: The machine's two layouts (the module's docstring).
SHARED, APART = "shared cores", "hosts apart"
#: Resamples behind each ratio's interval.
RESAMPLES = 1000
#: Seconds to wait for the backends' WAL counts to reach pg_stat_wal: a busy
#: backend reports at most once a second; a long-lived one that goes idle (the
#: relay's) may keep its last second's for up to ten, which the next phase's
#: count then takes.
STATS_LAG = 1.2


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
    return await _fetch_int(url, f"SELECT count(*) FROM {TABLE} WHERE failed_at IS NULL")


async def _fetch_int(url: str, query: str) -> int:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def writepath(tmp: Path, quick: bool) -> None:
    from .run import Shipcast, postgres_database, report, wait_consuming, webhook_doc

    rate, seconds = 100, (10 if quick else 30)
    rounds = 2 if quick else 5
    modes = ("no events", "outbox row, relay running", "synchronous POST /v1/events", "outbox row, relay paused")
    runs = [(layout, mode) for layout in (SHARED, APART) for mode in modes]
    results: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    flushes: dict[tuple[str, str], int] = dict.fromkeys(runs, 0)
    committed: dict[str, dict[str, float]] = {SHARED: {}, APART: {}}
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
                    shipcast_side = [proc.process.pid for proc in ship.procs] + [receiver.proc.pid]
                    can_set_hosts_apart()  # before the first layout's minutes, not after them
                    counted = await wal_syncs(oms_url) is not None
                    for layout in (SHARED, APART):
                        with (hosts_apart(shipcast_side) if layout == APART else contextlib.nullcontext()):
                            # Everything runs through every phase, as it would beside a real OMS, and the
                            # phases take turns, so a slow moment of the machine does not fall on one mode.
                            # With the relay paused (SIGSTOP) the OMS pays for its own writes alone, not
                            # for the CPU the relay and the worker take beside it.
                            for _ in range(rounds):
                                for mode in modes:
                                    paused = mode == modes[3]
                                    before = await wal_syncs(oms_url)
                                    try:
                                        if paused:
                                            os.kill(relay.process.pid, signal.SIGSTOP)
                                        results[layout, mode] += await oms(
                                            oms_url, rate, seconds // rounds, steps[mode],
                                            committed[layout] if mode == modes[1] else None)
                                    finally:
                                        if paused:
                                            os.kill(relay.process.pid, signal.SIGCONT)
                                    while paused and await pending(oms_url):  # drained before the next phase
                                        await asyncio.sleep(0.2)
                                    if counted:  # the backends' counts reach pg_stat_wal late: STATS_LAG
                                        await asyncio.sleep(STATS_LAG)
                                        flushes[layout, mode] += (await wal_syncs(oms_url) or 0) - (before or 0)
                arrived = await receiver.wait_for({i for ids in committed.values() for i in ids}, 120)
                ship.profile()  # BENCH_PROFILE=FOLDER: the throughput runs under py-spy
                throughput = await relay_against_ingest(ship, oms_url, relay, 2000 if quick else 10000)
            finally:
                ship.stop()
    for layout in (SHARED, APART):
        base = results[layout, "no events"]
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            floor = percentile(base, q)
            report(f"10. {layout}: OMS transaction at {rate}/s, no events, {name}", floor, "ms")
            for mode in modes[1:]:
                spread = ratio_interval(results[layout, mode], base, q)
                report(f"10. {layout}: OMS transaction, {mode}, {name}", percentile(results[layout, mode], q),
                       "ms", floor, f"no events (95%: {spread[0]:.2f}–{spread[1]:.2f}×)",
                       "≤ 1.05× at p99" if mode == modes[1] and name == "p99" else "")
        for mode in modes if counted else ():
            report(f"10. {layout}: WAL flushes per 100 OMS transactions, {mode}",
                   100 * flushes[layout, mode] / len(results[layout, mode]), "")
        end_to_end = [(arrived[i] - t) * 1000 for i, t in committed[layout].items()]
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            report(f"10. {layout}: commit to webhook through the relay at {rate}/s, {name}",
                   percentile(end_to_end, q), "ms", target="p99 < 100 ms" if name == "p99" else "")
    direct, relayed = throughput
    report("10. direct ingest: POST /v1/events, batches of 100 (4 clients)", direct, "ev/s")
    report("10. the relay draining the outbox (published, confirmed, deleted)", relayed, "ev/s", direct,
           "direct ingest")


def ratio_interval(values: Sequence[float], base: Sequence[float], q: float) -> tuple[float, float]:
    """The 95% bootstrap interval of ``values``' quantile ``q`` over ``base``'s:
    both resampled with replacement, ``RESAMPLES`` times."""
    draw = random.Random(10)  # the same resamples every run: the interval moves only with the data
    ratios = sorted(percentile(draw.choices(values, k=len(values)), q) /
                    percentile(draw.choices(base, k=len(base)), q) for _ in range(RESAMPLES))
    return ratios[int(0.025 * RESAMPLES)], ratios[int(0.975 * RESAMPLES) - 1]


async def wal_syncs(url: str) -> int | None:
    """The server's WAL flushes so far (``pg_stat_wal``: all its databases, its
    WAL writer too); ``None`` on a server that no longer counts them there."""
    try:
        return await _fetch_int(url, "SELECT wal_sync FROM pg_stat_wal")
    except asyncpg.UndefinedColumnError:  # PostgreSQL 18 moved them to pg_stat_io
        return None


def servers() -> list[tuple[int, str]]:
    """The PostgreSQL and RabbitMQ processes of this machine: (pid, name)."""
    return [(proc.pid, proc.info["name"]) for proc in psutil.process_iter(["name"])
            if proc.info["name"] in ("postgres", "beam.smp")]


def can_set_hosts_apart() -> None:
    """:raises RuntimeError: the hosts-apart layout cannot be made here."""
    found = dict((name, pid) for pid, name in servers())
    if set(found) != {"postgres", "beam.smp"} or len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the hosts-apart layout needs two CPUs, and PostgreSQL and RabbitMQ on this machine")
    try:
        for pid in found.values():  # setting a server's CPUs as they are: allowed (root, or CAP_SYS_NICE)?
            os.sched_setaffinity(pid, os.sched_getaffinity(pid))
    except PermissionError as exc:
        raise RuntimeError(f"the hosts-apart layout cannot move PostgreSQL and RabbitMQ: {exc}") from None


@contextlib.contextmanager
def hosts_apart(shipcast_side: Iterable[int]) -> Iterator[None]:
    """The OMS (this process) and PostgreSQL on the first CPU, ``shipcast_side``
    (shipcast's processes, the partner's) and RabbitMQ on the rest, every
    thread of each. Afterwards each thread is put back as it was, and one
    started meanwhile (a new PostgreSQL backend inherits the postmaster's
    CPU) as its process, or its postmaster, was; a SIGTERM meanwhile ends the
    run through this. What cannot be put back is printed with the command that
    does it. (Called in the running event loop's task.)"""
    cpus = sorted(os.sched_getaffinity(0))
    oms_cpu, rest = {cpus[0]}, set(cpus[1:])
    placed = [(os.getpid(), oms_cpu), *((pid, rest) for pid in shipcast_side),
              *((pid, oms_cpu if name == "postgres" else rest) for pid, name in servers())]
    before: dict[int, set[int]] = {}  # by thread id, a process's main thread's being the pid
    # A SIGTERM ends the run through the finally below: it cancels the task in this layout.
    loop, task, terminated = asyncio.get_running_loop(), asyncio.current_task(), signal.getsignal(signal.SIGTERM)
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        for pid, where in placed:
            for thread in _threads(pid):
                with contextlib.suppress(ProcessLookupError):
                    before[thread] = os.sched_getaffinity(thread)
                    os.sched_setaffinity(thread, where)
        yield
    finally:
        for pid in {pid for pid, _ in placed} | {pid for pid, _ in servers()}:
            # A thread as it was; one started meanwhile as its process's first thread was, or a new
            # PostgreSQL backend as its postmaster was; a process never reached is left as it is.
            process = before.get(pid) or before.get(_parent(pid))
            for thread in _threads(pid):
                saved = before.get(thread, process)
                try:
                    if saved is not None:
                        os.sched_setaffinity(thread, saved)
                except ProcessLookupError:  # ended meanwhile
                    pass
                except OSError as exc:
                    print(f"cannot put thread {thread} of process {pid} back on its CPUs ({exc}): "
                          f"taskset -p -c {','.join(map(str, sorted(saved or ())))} {thread}", flush=True)
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, terminated if terminated is not None else signal.SIG_DFL)


def _parent(pid: int) -> int:
    try:
        return int(psutil.Process(pid).ppid())
    except psutil.Error:
        return 0


def _threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (none once it ended)."""
    try:
        return [thread.id for thread in psutil.Process(pid).threads()]
    except psutil.Error:  # ended, or not ours to look at
        return []


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
